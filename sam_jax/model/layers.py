"""Small layers shared by the encoder and decoder, named after SAM's submodules."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype


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


class TilingConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose whose kernel is its stride with no padding (SAM's output upscaling, 2×2 at stride 2): each
    input cell writes its own kernel-sized block of the output, so the layer is one matrix product and a reshape. XLA's
    CPU convolution of a dilated input is far slower (LiteMedSAM's train step of 4 slices spent 1.5 s of 16 s in
    these two layers and their gradients)."""

    def __init__(self, in_features: int, out_features: int, kernel: int, *, rngs: nnx.Rngs):
        size = (kernel, kernel)
        super().__init__(in_features, out_features, size, strides=size, padding="VALID", rngs=rngs)

    def __call__(self, x):
        x, kernel, bias = promote_dtype((x, self.kernel[...], self.bias[...]), dtype=self.dtype)
        kh, kw, cin, cout = kernel.shape
        b, h, w, _ = x.shape
        # Flax correlates the dilated input with the kernel: cell (a, b) of a block takes tap (kh-1-a, kw-1-b).
        taps = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
        blocks = (x @ taps).reshape(b, h, w, kh, kw, cout)
        return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * kh, w * kw, cout) + bias
