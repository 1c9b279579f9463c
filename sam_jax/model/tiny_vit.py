"""TinyViT, the image encoder that MobileSAM and LiteMedSAM distilled SAM's ViT into (Wu et al., ECCV 2022, as
MobileSAM adapted it to SAM), in Flax NNX under the PyTorch state-dict names.

Channels-last throughout: an image (B, S, S, C) becomes the embedding (B, S/p, S/p, 256) for the config's patch size
p. A stem of two Conv-BN layers; stage 0 of MBConv blocks (inverted residuals); stages 1-3 of blocks that attend
within local windows (with a learnt bias per head and relative offset), then mix neighbours by a depthwise Conv-BN,
then apply an MLP; patch merging between stages (stride 2, 2, then 1: the last stage keeps the resolution); SAM's
neck.

Batch norms keep PyTorch's parameters and running statistics. The statistics are buffers that nothing updates:
training uses them frozen, as inference does, so a Conv-BN is one affine map and runs as one convolution whose kernel
and bias are folded from its tensors at every call. Folding at call time rather than at conversion keeps every
checkpoint tensor in the file and the norm's scale and shift trainable as themselves; it costs one per-channel
multiply of each kernel, nothing beside the convolution.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from sam_jax.config import TINY_VIT_STAGES, SamConfig
from sam_jax.model.attention import merge_heads, softmax_times_v
from sam_jax.model.image_encoder import neck, window_partition, window_unpartition
from sam_jax.model.layers import Buffer, Gelu, apply_sequential, gelu, sequential

BATCH_NORM_EPS = 1e-5  # PyTorch's BatchNorm2d default
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which TinyViT's attention and MLP norms keep
MBCONV_EXPAND_RATIO = 4.0
LOCAL_CONV_SIZE = 3


class BatchNorm(nnx.Module):
    """PyTorch's BatchNorm2d at inference: `scale`, `bias` trained; running statistics frozen buffers."""

    def __init__(self, channels: int, scale_init: float = 1.0):
        self.scale = nnx.Param(jnp.full((channels,), scale_init, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.running_mean = Buffer(jnp.zeros((channels,)))
        self.running_var = Buffer(jnp.ones((channels,)))
        self.num_batches_tracked = Buffer(jnp.zeros((), jnp.int32))  # carried with the checkpoint; never read

    def affine(self):
        """(factor, shift) such that the norm of y is factor·y + shift, per channel."""
        factor = self.scale[...] * jax.lax.rsqrt(self.running_var[...] + BATCH_NORM_EPS)
        return factor, self.bias[...] - self.running_mean[...] * factor


class Conv2dBN(nnx.Module):
    """Convolution without bias (`c`, padding kernel // 2) then batch norm (`bn`), computed as one convolution."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_scale_init: float = 1.0,
        *,
        rngs: nnx.Rngs,
    ):
        pad = kernel // 2
        self.c = nnx.Conv(
            in_chans,
            out_chans,
            (kernel, kernel),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            feature_group_count=groups,
            use_bias=False,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_chans, bn_scale_init)

    def __call__(self, x):
        factor, shift = self.bn.affine()
        x, kernel, shift = promote_dtype((x, self.c.kernel[...] * factor, shift))  # kernel (kh, kw, in, out)
        stride, groups = self.c.strides, self.c.feature_group_count
        if kernel.shape[:2] == (1, 1) and stride == 1 and groups == 1:
            y = x @ kernel[0, 0]
        elif groups == x.shape[-1] == kernel.shape[-1]:
            y = depthwise_conv(x, kernel[:, :, 0], stride, self.c.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(stride,) * 2,
                padding=self.c.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups,
            )
        return y + shift


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, stride: int, padding):
    """Per-channel convolution of x (B, H, W, C) by kernel (kh, kw, C): the sum over taps of the strided, shifted view
    times that tap's weights. XLA's CPU convolution runs depthwise kernels far slower than this sum (1×256²×256
    channels, 3×3: 0.97 s against 0.06 s), and TinyViT's first stage is made of them at full input resolution. A 1×1
    convolution likewise runs as a matrix product (2× XLA's convolution there).

    The gradient is written out (below) rather than derived: derived, each view's transpose is a zero-padded copy of
    the whole tensor, and in an MBConv block at 4×256²×256 the backward pass took 9× the forward (6.3 s against 0.7
    s; 1.6 s written out)."""
    return sum(view * kernel[i, j] for i, j, view in _tap_views(x, kernel.shape[:2], stride, padding))


def _tap_views(x, taps, stride, padding):
    """(i, j, view): for each tap of a (kh, kw) kernel, the strided view of the padded x that it multiplies."""
    (kh, kw), x = taps, jnp.pad(x, ((0, 0), *padding, (0, 0)))
    rows, cols = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i : i + (rows - 1) * stride + 1 : stride, j : j + (cols - 1) * stride + 1 : stride]


def _depthwise_conv_fwd(x, kernel, stride, padding):
    return depthwise_conv(x, kernel, stride, padding), (x, kernel)


def _depthwise_conv_bwd(stride, padding, residuals, g):
    """x's gradient: g spread back to the input grid (zeros between strided rows and columns), padded so that a
    stride-1 correlation with the flipped kernel lands on x's cells. The kernel's: each tap's view times g, summed.
    (Unused gradients, the frozen kernel's in LoRA training, are dropped by XLA.)"""
    x, kernel = residuals
    (kh, kw), (rows, cols) = kernel.shape[:2], g.shape[1:3]
    spread = jax.lax.pad(
        g,
        jnp.zeros((), g.dtype),
        (
            (0, 0, 0),
            (kh - 1 - padding[0][0], x.shape[1] + padding[0][0] - (rows - 1) * stride - 1, stride - 1),
            (kw - 1 - padding[1][0], x.shape[2] + padding[1][0] - (cols - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        ),
    )
    dx = depthwise_conv(spread, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))
    dkernel = jnp.stack([(view * g).sum((0, 1, 2)) for _, _, view in _tap_views(x, (kh, kw), stride, padding)])
    return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_conv_fwd, _depthwise_conv_bwd)


class PatchEmbed(nnx.Module):
    """The stem: Conv-BN to half the first stage's width, GELU, Conv-BN to its width (`seq.0`, `seq.2`)."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        self.seq = sequential(
            Conv2dBN(in_chans, dim // 2, kernel, stride, rngs=rngs),
            Gelu(),
            Conv2dBN(dim // 2, dim, kernel, stride, rngs=rngs),
        )

    def __call__(self, x):
        return apply_sequential(self.seq, x)


class MBConv(nnx.Module):
    """Inverted residual: 1×1 expand, depthwise 3×3, 1×1 project, each Conv-BN; GELU after the residual sum."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        hidden = int(dim * MBCONV_EXPAND_RATIO)
        self.conv1 = Conv2dBN(dim, hidden, rngs=rngs)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden, rngs=rngs)
        self.conv3 = Conv2dBN(hidden, dim, bn_scale_init=0.0, rngs=rngs)  # TinyViT starts each block as identity

    def __call__(self, x):
        return gelu(x + self.conv3(gelu(self.conv2(gelu(self.conv1(x))))))


class PatchMerging(nnx.Module):
    """Into the next stage's width: 1×1 Conv-BN, GELU, depthwise 3×3 Conv-BN at `stride`, GELU, 1×1 Conv-BN."""

    def __init__(self, dim: int, out_dim: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv2dBN(dim, out_dim, rngs=rngs)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim, rngs=rngs)
        self.conv3 = Conv2dBN(out_dim, out_dim, rngs=rngs)

    def __call__(self, x):
        return self.conv3(gelu(self.conv2(gelu(self.conv1(x)))))


def offset_index(window: int) -> np.ndarray:
    """(w², w²) index of each query-key pair's offset (|Δrow|, |Δcol|) into the bias table, |Δrow|·w + |Δcol|: the
    order in which TinyViT numbers offsets as it first meets them (all of them from the window's first cell)."""
    cells = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"), -1).reshape(-1, 2)
    offsets = np.abs(cells[:, None] - cells[None])
    return offsets[..., 0] * window + offsets[..., 1]


class Attention(nnx.Module):
    """Pre-norm multi-head attention within one window, plus a learnt bias per head and relative offset.

    TinyViT's fused qkv gives each head its q, k and v side by side ((q, k, v) per head, not per projection). The
    block calls the parts (`norm`, `qkv`, `mix`, `proj`) itself: windows are cut between qkv and mix, and a
    cross-slice branch shares the qkv output.
    """

    def __init__(self, dim: int, num_heads: int, window: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm = nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.attention_biases = nnx.Param(jnp.zeros((num_heads, window * window)))

    def mix(self, qkv_windows):
        """Attention of projected tokens within each window (n, w, w, 3C) → (n, w, w, C), before `proj`."""
        n, w, _, c3 = qkv_windows.shape
        qkv = qkv_windows.reshape(n, w * w, self.num_heads, -1).transpose(0, 2, 1, 3)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # each (n, heads, w², head_dim)
        bias = self.attention_biases[...][:, offset_index(w)]
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * q.shape[-1] ** -0.5, k) + bias.astype(q.dtype)
        return merge_heads(softmax_times_v(logits, v)).reshape(n, w, w, c3 // 3)


class Mlp(nnx.Module):
    """Pre-norm MLP: `norm`, `fc1`, GELU, `fc2`."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.fc2(gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nnx.Module):
    """Window attention (residual), depthwise Conv-BN (no residual), MLP (residual)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, *, rngs: nnx.Rngs):
        self.window_size = window
        self.attn = Attention(dim, num_heads, window, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
        self.local_conv = Conv2dBN(dim, dim, LOCAL_CONV_SIZE, groups=dim, rngs=rngs)
        # Attention across the slices of a volume, attached by `sam_jax.adaptation.cross_slice`; None in TinyViT.
        self.cross_slice = nnx.data(None)

    def __call__(self, x, slices: int = 1):
        """x: (B·slices, h, w, C), each sample's slices contiguous; `slices` matters only with `cross_slice`."""
        qkv = self.attn.qkv(self.attn.norm(x))  # per token: one projection serves the spatial and the depth branch
        # TinyViT zero-pads x to whole windows before the norm, so a padded cell is a key with q, k, v = qkv(norm(0)).
        # Cutting the windows from qkv with that fill, and cropping before proj, gives the same numbers while
        # projecting only the real tokens.
        fill = self.attn.qkv(self.attn.norm(jnp.zeros((1, x.shape[-1]), x.dtype)))[0]
        windows = window_partition(qkv, self.window_size, fill)
        update = self.attn.proj(window_unpartition(self.attn.mix(windows), self.window_size, x.shape[1:3]))
        if self.cross_slice is not None:
            update = update + self.cross_slice(self.attn, qkv, slices)
        x = self.local_conv(x + update)
        return x + self.mlp(x)


class Stage(nnx.Module):
    """`blocks`, then `downsample` (patch merging into the next stage's width; None in the last stage)."""

    def __init__(self, blocks, downsample: PatchMerging | None):
        self.blocks = nnx.List(blocks)
        self.downsample = downsample

    def __call__(self, x, slices: int = 1):
        for block in self.blocks:
            x = block(x, slices) if isinstance(block, TinyViTBlock) else block(x)  # MBConv works slice by slice
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dims, depths = config.tiny_vit_embed_dims, config.tiny_vit_depths
        stride = config.tiny_vit_stem_stride
        self.patch_embed = PatchEmbed(config.in_chans, dims[0], 1 if stride == 1 else 3, stride, rngs=rngs)
        stages = []
        for i in range(TINY_VIT_STAGES):
            if i == 0:
                blocks = [MBConv(dims[0], rngs=rngs) for _ in range(depths[0])]
            else:
                heads, window = config.tiny_vit_num_heads[i], config.tiny_vit_window_sizes[i]
                blocks = [TinyViTBlock(dims[i], heads, window, config.mlp_ratio, rngs=rngs) for _ in range(depths[i])]
            downsample = None
            if i + 1 < TINY_VIT_STAGES:  # into the next stage; the last stage keeps its input's resolution
                merge_stride = 1 if i + 1 == TINY_VIT_STAGES - 1 else 2
                downsample = PatchMerging(dims[i], dims[i + 1], merge_stride, rngs=rngs)
            stages.append(Stage(blocks, downsample))
        self.layers = nnx.List(stages)
        self.neck = neck(dims[-1], config.prompt_embed_dim, rngs=rngs)

    def __call__(self, x, slices: int = 1):
        """x: input image (B, S, S, in_chans) → embedding (B, S/p, S/p, prompt_embed_dim).

        `slices` (static): the batch is B/slices samples of `slices` contiguous slices each, for attention blocks
        with a cross-slice branch; without one it changes nothing.
        """
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, slices)
        return apply_sequential(self.neck, x)
