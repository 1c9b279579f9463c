"""`abstract` builds what `nnx.eval_shape` builds (its own reference here), without the quadratic trace."""

import jax
import pytest
from flax import nnx
from small_tiny_vit import TINY_VIT

from sam_jax.adaptation import AdaptationConfig, build_model
from sam_jax.config import sam_config
from sam_jax.model.abstract import abstract


def _structure(module):
    graphdef, state = nnx.split(module)
    leaves = [(path, type(v).__name__, v.shape, v.dtype) for path, v in nnx.to_flat_state(state)]
    return graphdef, leaves


@pytest.mark.parametrize("config", [sam_config("tiny"), TINY_VIT], ids=["vit", "tiny_vit"])
def test_abstract_is_eval_shape_of_the_adapted_model(config):
    adaptation = AdaptationConfig(cross_slice=True, zero_rel_pos=config.image_encoder == "vit")
    ours = abstract(lambda rngs: build_model(config, adaptation, rngs=rngs))
    reference = nnx.eval_shape(lambda: build_model(config, adaptation, rngs=nnx.Rngs(0)))
    assert _structure(ours) == _structure(reference)
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(nnx.state(ours)))
