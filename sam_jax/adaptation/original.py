"""The original paper code's model defects, reproduced on request (docs/reference.md §4), each off by default.

They produced the published numbers, so reproducing those numbers needs them; our defaults are SAM as published.
- `zero_rel_pos`: the encoder's relative-position tables were renamed and never loaded from SAM: zero.
- `random_decoder_mlps`: the two-way transformer's MLPs were renamed and never loaded: PyTorch's default init.
- `decoder_first_residual`: the decoder's first token self-attention kept a residual SAM's does not have.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from sam_jax.adaptation.init import kaiming_uniform_sqrt5


def reproduce_defects(
    model, *, zero_rel_pos: bool, random_decoder_mlps: bool, decoder_first_residual: bool, rngs: nnx.Rngs
) -> None:
    """Apply the chosen defects to a SAM whose weights are loaded, in place."""
    if zero_rel_pos:
        for block in model.image_encoder.blocks:
            block.attn.rel_pos_h[...] = jnp.zeros_like(block.attn.rel_pos_h[...])
            block.attn.rel_pos_w[...] = jnp.zeros_like(block.attn.rel_pos_w[...])
    if random_decoder_mlps:
        for layer in model.mask_decoder.transformer.layers:
            for linear in (layer.mlp.lin1, layer.mlp.lin2):
                fan_in = linear.kernel.shape[0]  # PyTorch's nn.Linear default: weight and bias U(±1/√fan_in)
                linear.kernel[...] = kaiming_uniform_sqrt5(rngs.params(), linear.kernel.shape, fan_in)
                linear.bias[...] = kaiming_uniform_sqrt5(rngs.params(), linear.bias.shape, fan_in)
    if decoder_first_residual:
        model.mask_decoder.transformer.layers[0].first_layer_residual = True
