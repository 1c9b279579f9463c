"""Random values for the leaves a model starts with at zero (LoRA's B, the cross-slice gates), so that tests of
those paths cannot pass by the zeros alone."""

import jax
from flax import nnx

ALL_TARGETS = ("q", "k", "v", "proj", "lin1", "lin2")  # every LoRA target


def randomise(model, variable_type, seed, scale=0.1):
    """Random values for every `variable_type` leaf (LoRA's zero B or the cross-slice gates would hide bugs)."""
    state = nnx.state(model, variable_type)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(
        model, jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    )
