"""Scaled dot-product attention: the one place every attention of the model goes through.

Layout is head-major, (batch, heads, tokens, head_dim): on CPU XLA runs these batched matmuls about twice as fast
as the (batch, tokens, heads, head_dim) einsum form (docs/reference.md §3), and GPU kernels want it too.
The kernel is a performance lever the model's config chooses (`SamConfig.attention`), held by every module that
attends as a static attribute, so the blocks never change and jit keys on it: `plain` adds SAM's decomposed
relative-position bias to the logits; `folded` puts that bias into longer query and key vectors instead,
q' = [q/√d, rel_h, rel_w] and k' = [k, onehot(row), onehot(col)], so that q'·k' is exactly the biased logit and no
N×N bias exists; `cudnn` runs the folded vectors through cuDNN's flash attention (GPU, bf16/fp16, even sequence
lengths; anything else takes the folded path). `remat` recomputes the attention core in the backward pass instead of
keeping its N×N probabilities. The XLA paths share `softmax_times_v`, whose backward uses flash attention's row-sum
identity, and on CPU they take long attentions a cache-sized block of queries at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sam_jax.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS  # noqa: F401  (the names live in the config)


def attend(q, k, v, rel_h=None, rel_w=None, *, kernel: str = "plain", remat: bool = False):
    """softmax(q·kᵀ/√d + bias)·v for q (B, H, Nq, D), k and v (B, H, Nk, D).

    `rel_h` (B, H, Nq, kh) and `rel_w` (B, H, Nq, kw) are SAM's decomposed relative-position terms
    (`decomposed_rel_pos`) for keys laid out on a kh×kw grid; the bias they stand for is
    rel_h[..., i, None] + rel_w[..., None, j] at key (i, j). `kernel` is one of `IMPLEMENTATIONS` and `remat`
    recomputes the attention in the backward pass (see the module's docstring).
    """
    core = {"plain": _plain, "folded": _folded, "cudnn": _cudnn}[kernel]
    if remat:
        core = jax.checkpoint(core)
    return core(q, k, v, rel_h, rel_w)


# On CPU the N×N logits of a long attention are made a block of queries at a time, each block small enough to stay
# in cache through the softmax and its backward: at 512² input a global block's fwd+bwd went from 146 to 110 ms.
# Accelerators take the whole attention at once (cuDNN, or XLA's fusions with far more memory bandwidth).
CPU_LOGITS_BLOCK_BYTES = 16 << 20


def _query_blocks(q, k) -> int:
    """How many equal blocks of queries to attend with (1 = all at once)."""
    if jax.default_backend() != "cpu":
        return 1
    b, h, nq, _ = q.shape
    logits_bytes = b * h * nq * k.shape[2] * q.dtype.itemsize
    return next(n for n in range(1, nq + 1) if nq % n == 0 and logits_bytes <= n * CPU_LOGITS_BLOCK_BYTES)


def _softmax_attention(q, k, v, scale, rel=()):
    """softmax(q·kᵀ·scale + bias)·v, the bias given by per-query `rel` = (rel_h, rel_w) or none."""

    def attend_block(q, *rel):
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
        if rel:
            logits = add_rel_pos(logits, *rel)
        return softmax_times_v(logits, v)

    blocks = _query_blocks(q, k)
    if blocks == 1:
        return attend_block(q, *rel)
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[:2] + (blocks, -1) + x.shape[3:]), 2, 0)  # noqa: E731
    out = jax.lax.map(lambda args: attend_block(*args), tuple(split(x) for x in (q, *rel)))
    return jnp.moveaxis(out, 0, 2).reshape(q.shape[:3] + v.shape[-1:])


@jax.custom_vjp
def softmax_times_v(logits, v):
    """softmax(logits)·v over the last axis of logits (B, H, Nq, Nk), v (B, H, Nk, D)."""
    return _softmax_times_v_fwd(logits, v)[0]


def _softmax_times_v_fwd(logits, v):
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return out, (weights, v, out)


def _softmax_times_v_bwd(residuals, d_out):
    # The softmax's backward P ⊙ (dP − rowsum(P ⊙ dP)) with the row sums taken as rowsum(dO ⊙ O), from (Nq, D)
    # arrays: one pass fewer over the N×N probabilities than autodiff makes (as flash attention's backward does).
    weights, v, out = residuals
    d_weights = jnp.einsum("bhqd,bhkd->bhqk", d_out, v)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = weights * (d_weights - row.astype(d_weights.dtype))
    return d_logits, jnp.einsum("bhqk,bhqd->bhkd", weights, d_out)


softmax_times_v.defvjp(_softmax_times_v_fwd, _softmax_times_v_bwd)


def add_rel_pos(logits, rel_h, rel_w):
    """logits (B, H, Nq, kh·kw) + rel_h[..., row(key)] + rel_w[..., col(key)]."""
    b, h, nq, kh = rel_h.shape
    kw = rel_w.shape[-1]
    logits = logits.reshape(b, h, nq, kh, kw) + rel_h[..., :, None] + rel_w[..., None, :]
    return logits.reshape(b, h, nq, kh * kw)


def _plain(q, k, v, rel_h, rel_w):
    return _softmax_attention(q, k, v, q.shape[-1] ** -0.5, () if rel_h is None else (rel_h, rel_w))


def fold_rel_pos(q, k, rel_h, rel_w):
    """(q', k') with q'·k' = q·k/√d + rel_h[row(key)] + rel_w[col(key)]; keys are row-major on the kh×kw grid."""
    scaled = q * q.shape[-1] ** -0.5
    if rel_h is None:
        return scaled, k
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    keys = jnp.arange(kh * kw)
    rows = jax.nn.one_hot(keys // kw, kh, dtype=k.dtype)
    cols = jax.nn.one_hot(keys % kw, kw, dtype=k.dtype)
    position = jnp.broadcast_to(jnp.concatenate([rows, cols], -1), k.shape[:2] + (kh * kw, kh + kw))
    return (
        jnp.concatenate([scaled, rel_h.astype(q.dtype), rel_w.astype(q.dtype)], -1),
        jnp.concatenate([k, position], -1),
    )


def _folded(q, k, v, rel_h, rel_w):
    q, k = fold_rel_pos(q, k, rel_h, rel_w)
    return _softmax_attention(q, k, v, 1.0)


def _cudnn(q, k, v, rel_h, rel_w):
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        # cuDNN's flash kernel takes 16-bit inputs only. The decoder stays in fp32 under bf16 training (its prompt
        # tokens carry fp32 Fourier features of pixel coordinates), and it is small: XLA runs it.
        return _folded(q, k, v, rel_h, rel_w)
    if q.shape[2] % 2 or k.shape[2] % 2:
        # JAX's cuDNN path refuses odd sequence lengths under autodiff (jax 0.10-0.11 count its placeholder bias as a
        # bias: "Unsupported sequence length Q 9, KV 9", seen on an H200): a small window (3x3) or an odd number of
        # slices in the depth branch goes to XLA. ViT-B's 14x14 windows and 64x64 grid are even.
        return _folded(q, k, v, rel_h, rel_w)
    q, k = fold_rel_pos(q, k, rel_h, rel_w)
    d, width = v.shape[-1], q.shape[-1]
    width += -width % 8  # cuDNN wants head dims in multiples of 8, and v as wide as q and k
    pad = lambda x: jnp.pad(x, ((0, 0),) * 3 + ((0, width - x.shape[-1]),))  # noqa: E731
    to_bthd = lambda x: pad(x).transpose(0, 2, 1, 3)  # noqa: E731
    out = jax.nn.dot_product_attention(to_bthd(q), to_bthd(k), to_bthd(v), scale=1.0, implementation="cudnn")
    return out[..., :d].transpose(0, 2, 1, 3)


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
