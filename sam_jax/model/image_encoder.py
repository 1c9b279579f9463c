"""SAM's ViT image encoder: patch embedding, absolute positions, windowed and global blocks, neck.

Channels-last throughout: an image is (B, H, W, C) and the embedding (B, H/16, W/16, 256).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from sam_jax.config import SamConfig
from sam_jax.model.attention import attend, decomposed_rel_pos, merge_heads, split_heads
from sam_jax.model.layers import MLPBlock, apply_sequential, gelu, layer_norm_2d, sequential


class PatchEmbed(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        p = config.patch_size
        self.proj = nnx.Conv(
            config.in_chans, config.encoder_embed_dim, (p, p), strides=(p, p), padding="VALID", rngs=rngs
        )

    def __call__(self, x):
        return self.proj(x)


class Attention(nnx.Module):
    """Multi-head self-attention over a (B, h, w, C) grid with decomposed relative positions.

    The block calls its parts (`qkv`, `mix`, `proj`) itself: windows are cut between qkv and mix, and the depth
    branch shares the qkv output.
    """

    def __init__(self, config: SamConfig, grid: int, *, rngs: nnx.Rngs):
        dim, self.num_heads = config.encoder_embed_dim, config.encoder_num_heads
        head_dim = dim // self.num_heads
        # Static, so part of the graphdef: jit traces each kernel apart (the cross-slice branch uses them too).
        self.attention_kernel, self.remat_attention = config.attention, config.remat_attention
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.rel_pos_h = nnx.Param(jnp.zeros((2 * grid - 1, head_dim)))
        self.rel_pos_w = nnx.Param(jnp.zeros((2 * grid - 1, head_dim)))

    def mix(self, qkv):
        """Multi-head attention of projected tokens (B, h, w, 3C) → (B, h, w, C), before `proj`."""
        b, h, w, c3 = qkv.shape
        q, k, v = (split_heads(t, self.num_heads) for t in jnp.split(qkv.reshape(b, h * w, c3), 3, axis=-1))
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h[...], self.rel_pos_w[...], (h, w))
        out = attend(q, k, v, rel_h, rel_w, kernel=self.attention_kernel, remat=self.remat_attention)
        return merge_heads(out).reshape(b, h, w, c3 // 3)


def window_partition(x, window: int, fill=None):
    """(B, H, W, C) → (B·nH·nW, window, window, C), padding H and W up to multiples of `window` with zeros, or with
    the per-channel vector `fill` (C,)."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    if fill is not None and (ph or pw):
        real = (jnp.arange(h + ph) < h)[:, None] & (jnp.arange(w + pw) < w)[None, :]
        x = jnp.where(real[None, :, :, None], x, fill)
    nh, nw = (h + ph) // window, (w + pw) // window
    x = x.reshape(b, nh, window, nw, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, window, window, c)


def window_unpartition(windows, window: int, hw):
    """Inverse of `window_partition`, cropping the padding away."""
    h, w = hw
    nh, nw = -(-h // window), -(-w // window)
    c = windows.shape[-1]
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, nh * window, nw * window, c)[:, :h, :w]


class Block(nnx.Module):
    """Pre-norm transformer block; windowed attention when `window_size` > 0, global otherwise."""

    def __init__(self, config: SamConfig, window_size: int, *, rngs: nnx.Rngs):
        dim = config.encoder_embed_dim
        self.window_size = window_size
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attn = Attention(config, window_size or config.grid_size, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio), gelu, rngs=rngs)
        # Attention across the slices of a volume, attached by `sam_jax.adaptation.cross_slice`; None in SAM.
        self.cross_slice = nnx.data(None)

    def _spatial_mix(self, qkv):
        if not self.window_size:
            return self.attn.mix(qkv)
        # SAM zero-pads x before its per-token qkv, so a padded token's q, k, v are qkv(0). Cutting the windows from
        # qkv with that fill, and cropping before proj, gives the same numbers while projecting only the real
        # tokens: at 256² input the padding makes 784 tokens of 256.
        fill = self.attn.qkv(jnp.zeros((1, qkv.shape[-1] // 3), qkv.dtype))[0]
        windows = window_partition(qkv, self.window_size, fill)
        return window_unpartition(self.attn.mix(windows), self.window_size, qkv.shape[1:3])

    def __call__(self, x, slices: int = 1):
        """x: (B·slices, h, w, C), each sample's slices contiguous; `slices` matters only with `cross_slice`."""
        qkv = self.attn.qkv(self.norm1(x))  # one per-token projection serves the spatial and the depth branch
        update = self.attn.proj(self._spatial_mix(qkv))
        if self.cross_slice is not None:
            update = update + self.cross_slice(self.attn, qkv, slices)
        x = x + update
        return x + self.mlp(self.norm2(x))


def neck(dim: int, out: int, *, rngs: nnx.Rngs) -> nnx.List:
    """SAM's neck to the decoder's width: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d (convs without bias)."""
    return sequential(
        nnx.Conv(dim, out, (1, 1), use_bias=False, rngs=rngs),
        layer_norm_2d(out, rngs=rngs),
        nnx.Conv(out, out, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs),
        layer_norm_2d(out, rngs=rngs),
    )


class ImageEncoderViT(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim, g = config.encoder_embed_dim, config.grid_size
        self.patch_embed = PatchEmbed(config, rngs=rngs)
        self.pos_embed = nnx.Param(jnp.zeros((1, g, g, dim)))
        self.blocks = nnx.List(
            [
                Block(config, 0 if i in config.encoder_global_attn_indexes else config.window_size, rngs=rngs)
                for i in range(config.encoder_depth)
            ]
        )
        self.neck = neck(dim, config.prompt_embed_dim, rngs=rngs)

    def __call__(self, x, slices: int = 1):
        """x: normalised image (B, S, S, in_chans) → embedding (B, S/16, S/16, prompt_embed_dim).

        `slices` (static): the batch is B/slices samples of `slices` contiguous slices each, for blocks with a
        cross-slice branch; without one it changes nothing.
        """
        x = self.patch_embed(x) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x, slices)
        return apply_sequential(self.neck, x)
