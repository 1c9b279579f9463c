"""A first convolution for a channel count other than the pretrained three (e.g. four MRI modalities).

With three channels the encoder's own is kept as is. Otherwise its first convolution is replaced, keeping its bias
(SAM's ViT: the 16×16 patch embedding; TinyViT: the stem's first Conv-BN convolution, which has no bias, and keeps its
batch norm): `random` (the paper) draws a new kernel as PyTorch's Conv2d does; `rgb_mean` gives every channel the
mean of the three RGB filters × 3/C_in, so an input whose channels are all equal embeds exactly as the 3-channel
model embeds that image repeated ×3.
"""

from __future__ import annotations

from typing import Tuple

from flax import nnx

from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.init import kaiming_uniform_sqrt5


def _first_conv_site(model) -> Tuple[nnx.Module, str]:
    """(parent, attribute) of the image encoder's first convolution."""
    embed = model.image_encoder.patch_embed
    return (embed, "proj") if hasattr(embed, "proj") else (embed.seq[0], "c")


def first_conv(model) -> nnx.Conv:
    """The image encoder's first convolution: the ViT's patch embedding, or TinyViT's first stem Conv-BN."""
    parent, name = _first_conv_site(model)
    return getattr(parent, name)


def adapt_patch_embed(model, in_chans: int, init: str, *, rngs: nnx.Rngs) -> None:
    """Give `model` (a 3-channel Sam) an `in_chans`-channel first convolution, in place."""
    parent, name = _first_conv_site(model)
    old = getattr(parent, name)
    kh, kw, rgb, dim = old.kernel.shape
    if rgb != 3:
        raise AdaptationError(f"the model's patch embedding already takes {rgb} channels; adapt a 3-channel SAM")
    if in_chans == 3:
        return
    if init == "random":
        kernel_init = lambda key, shape, dtype: kaiming_uniform_sqrt5(key, shape, in_chans * kh * kw, dtype)  # noqa: E731
    elif init == "rgb_mean":
        mean = old.kernel[...].mean(axis=2, keepdims=True) * (3 / in_chans)
        kernel_init = lambda key, shape, dtype: mean.repeat(in_chans, axis=2).astype(dtype)  # noqa: E731
    else:
        raise AdaptationError(f"patch embedding init {init!r}: expected 'random' or 'rgb_mean'")
    bias = None if old.bias is None else old.bias[...]
    conv = nnx.Conv(
        in_chans,
        dim,
        (kh, kw),
        strides=old.strides,
        padding=old.padding,
        use_bias=bias is not None,
        kernel_init=kernel_init,
        bias_init=lambda key, shape, dtype: bias.astype(dtype),
        rngs=rngs,
    )
    setattr(parent, name, conv)
