"""Cross-slice (depth) attention in the image encoder's attention blocks (SAM's ViT, TinyViT's stages 1–3): the
paper's Eq. 1–2, done right.

A sample is Z contiguous slices, so the encoder sees (B·Z, h, w, C). Beside each block's spatial attention a depth
branch attends across the Z slices at every token position and is added through a per-channel gate g:
x ← x + Attn_spatial(LN₁(x)) + g ⊙ Attn_depth(LN₁(x)). The branch reuses the block's own qkv output and proj (LoRA
included, so LoRA adapts both) with no relative positions (nor TinyViT's offset biases), and runs on the full token
grid before any window partition: in windowed blocks it attends across slices at one position, never across the
windows of one slice (the bug of the adapter code the paper builds on). Any Z works. g starts at zero, so the adapted
model equals the base model until g moves. With Z = 1 each position attends to itself alone, so the branch adds
g ⊙ proj(v) (not zero once g ≠ 0): train and infer with the same Z.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.sites import attention_blocks, qkv_groups, split_qkv, width
from sam_jax.model.attention import attend, merge_heads, split_heads


def depth_attention(attn, qkv, slices: int):
    """Attention across slices at each position, from the block's projected tokens qkv (B·Z, h, w, 3C) through
    `attn.proj` → (B·Z, h, w, C)."""
    n, h, w, c3 = qkv.shape
    if slices < 1 or n % slices:
        raise AdaptationError(f"a batch of {n} slices does not split into samples of {slices} slices")
    b = n // slices
    tokens = qkv.reshape(b, slices, h, w, c3).transpose(0, 2, 3, 1, 4).reshape(b * h * w, slices, c3)
    q, k, v = (split_heads(t, attn.num_heads) for t in split_qkv(tokens, qkv_groups(attn)))
    # TinyViT's attention has no kernel choice (its offset biases are its own); across a few slices plain serves.
    kernel, remat = getattr(attn, "attention_kernel", "plain"), getattr(attn, "remat_attention", False)
    out = attn.proj(merge_heads(attend(q, k, v, kernel=kernel, remat=remat)))
    return out.reshape(b, h, w, slices, c3 // 3).transpose(0, 3, 1, 2, 4).reshape(n, h, w, c3 // 3)


class CrossSlice(nnx.Module):
    """The gated depth branch of one encoder block; holds only the gate."""

    def __init__(self, dim: int):
        self.gate = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, attn, qkv, slices: int):
        return self.gate[...] * depth_attention(attn, qkv, slices)


def add_cross_slice(model) -> None:
    """Give every attention block of `model`'s encoder a zero-gated depth branch, in place."""
    for block in attention_blocks(model):
        if block.cross_slice is not None:
            raise AdaptationError("the model's encoder blocks already have a cross-slice branch")
        block.cross_slice = CrossSlice(width(block))
