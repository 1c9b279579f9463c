"""Model FLOPs of SAM's image encoder, counted layer by layer, for throughput and MFU figures.

A multiply-add counts as two FLOPs. Windowed blocks project their zero-padded windows (70² tokens for a 64² grid),
as SAM computes them. A LoRA training step with a frozen base costs about twice the forward pass: the backward pass
needs gradients with respect to activations (one forward's worth of matmuls) but weight gradients only for the small
trainable part. Recomputation (remat) is not model work and is not counted. The mask decoder (under 1% of the
encoder at 1024²) is left out.
"""

from __future__ import annotations

import math

from sam_jax.config import SamConfig


def encoder_forward_flops(config: SamConfig, *, cross_slice_z: int = 0) -> float:
    """FLOPs of one slice through the encoder (patch embedding, blocks, neck); with `cross_slice_z` ≥ 1 the depth
    branch of every block (its own qkv and proj pass over all tokens, attention over Z slices) is added."""
    g, c, p = config.grid_size, config.encoder_embed_dim, config.patch_size
    tokens = g * g
    hidden = int(c * config.mlp_ratio)
    macs = tokens * p * p * config.in_chans * c  # patch embedding
    for i in range(config.encoder_depth):
        if i in config.encoder_global_attn_indexes:
            attended, keys, side = tokens, tokens, g
        else:
            w = config.window_size
            attended, keys, side = math.ceil(g / w) ** 2 * w * w, w * w, w
        macs += attended * c * 4 * c  # qkv and proj
        macs += 2 * attended * keys * c  # q·kᵀ and weights·v over all heads
        macs += 2 * attended * side * c  # decomposed relative positions (rows and columns)
        macs += 2 * tokens * c * hidden  # MLP
        if cross_slice_z:
            macs += tokens * c * 4 * c + 2 * tokens * cross_slice_z * c
    out = config.prompt_embed_dim
    macs += tokens * c * out + tokens * out * out * 9  # neck: 1×1 then 3×3 convolution
    return 2.0 * macs


def train_step_flops(config: SamConfig, slices: int, *, cross_slice_z: int = 0) -> float:
    """Model FLOPs of one LoRA training step over `slices` slices: forward plus activation-gradient backward."""
    return 2.0 * slices * encoder_forward_flops(config, cross_slice_z=cross_slice_z)
