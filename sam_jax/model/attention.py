"""Scaled dot-product attention: the one place every attention of the model goes through.

Layout is head-major, (batch, heads, tokens, head_dim): on CPU XLA runs these batched matmuls about twice as fast
as the (batch, tokens, heads, head_dim) einsum form (../shared/reference.md §1), and GPU kernels want it too.
Performance work swaps the kernel here without touching the blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(q, k, v, rel_h=None, rel_w=None):
    """softmax(q·kᵀ/√d + bias)·v for q (B, H, Nq, D), k and v (B, H, Nk, D).

    `rel_h` (B, H, Nq, kh) and `rel_w` (B, H, Nq, kw) are SAM's decomposed relative-position terms
    (`decomposed_rel_pos`) for keys laid out on a kh×kw grid; the bias they stand for is
    rel_h[..., i, None] + rel_w[..., None, j] at key (i, j).
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
    if rel_h is not None:
        b, h, nq, kh = rel_h.shape
        kw = rel_w.shape[-1]
        logits = logits.reshape(b, h, nq, kh, kw) + rel_h[..., :, None] + rel_w[..., None, :]
        logits = logits.reshape(b, h, nq, kh * kw)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def relative_position_index(q_size: int, k_size: int):
    """Index into a table of 2·max(q, k)−1 relative offsets, as SAM builds it (scaled when q and k differ)."""
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = jnp.arange(q_size)[:, None] * q_scale
    k_coords = jnp.arange(k_size)[None, :] * k_scale
    return ((q_coords - k_coords) + (k_size - 1) * k_scale).astype(jnp.int32)


def decomposed_rel_pos(q, rel_pos_h, rel_pos_w, grid):
    """SAM's decomposed relative-position terms for queries q (B, H, N, D) on a square-or-not `grid` (h, w).

    Uses the un-scaled q, as SAM does. The tables must already have 2·size−1 rows (resizing happens when weights are
    loaded, not here).
    """
    gh, gw = grid
    b, heads, n, d = q.shape
    table_h = rel_pos_h[relative_position_index(gh, gh)]  # (gh, gh, D)
    table_w = rel_pos_w[relative_position_index(gw, gw)]  # (gw, gw, D)
    q_grid = q.reshape(b, heads, gh, gw, d)
    rel_h = jnp.einsum("bnhwd,hkd->bnhwk", q_grid, table_h).reshape(b, heads, n, gh)
    rel_w = jnp.einsum("bnhwd,wkd->bnhwk", q_grid, table_w).reshape(b, heads, n, gw)
    return rel_h, rel_w


def split_heads(x, num_heads: int):
    """(B, N, H·D) → (B, H, N, D)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, N, D) → (B, N, H·D)."""
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)
