"""Segment Anything in Flax NNX: image encoder, prompt encoder, mask decoder."""

from sam_jax.model.sam import Sam

__all__ = ["Sam"]
