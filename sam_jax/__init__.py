"""sam-jax: Segment Anything in JAX/Flax NNX, adapted to multi-parametric brain MRI."""

from sam_jax.config import SamConfig, sam_config

__all__ = ["SamConfig", "sam_config"]
