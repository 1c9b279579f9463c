"""Small layers shared by the encoder and decoder, named after SAM's submodules."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


class Buffer(nnx.Variable):
    """A constant loaded from the checkpoint but never trained (a registered buffer in PyTorch)."""


def gelu(x):
    # SAM uses nn.GELU(), the exact form x·Φ(x), which torch computes as 0.5·x·(1 + erf(x/√2)). jax.nn.gelu
    # (approximate=False) goes through erfc, which is about twice as slow on CPU and no closer to torch.
    return 0.5 * x * (1 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))


class Gelu(nnx.Module):
    """Parameter-free GELU, so that sequential lists keep SAM's indexes (`neck.3`, `output_upscaling.3`, …)."""

    def __call__(self, x):
        return gelu(x)


def layer_norm_2d(channels: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """SAM's LayerNorm2d normalises over channels with eps 1e-6; channels-last makes it a plain LayerNorm."""
    return nnx.LayerNorm(channels, epsilon=1e-6, rngs=rngs)


def sequential(*layers) -> nnx.List:
    """Layers to apply in order (`apply_sequential`), indexed so parameter paths read `neck.0.kernel` like SAM's."""
    return nnx.List(layers)


def apply_sequential(layers: nnx.List, x):
    for layer in layers:
        x = layer(x)
    return x


class MLPBlock(nnx.Module):
    """Two linear layers with an activation between (`lin1`, `lin2`)."""

    def __init__(self, dim: int, hidden: int, activation, *, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.lin2 = nnx.Linear(hidden, dim, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        return self.lin2(self.activation(self.lin1(x)))


class MLP(nnx.Module):
    """SAM's decoder MLP: `layers.0 … layers.{n-1}`, ReLU between, optional sigmoid on the output."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int, *, rngs: nnx.Rngs):
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x
