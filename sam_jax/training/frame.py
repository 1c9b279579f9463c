"""Host slices → the model's input frame, on the accelerator.

The host ships small slices (the cache's S×S canvas, 240 for BraTS) with their unpadded height and width; here each
is resized so its longest side is the model's input size (SAM's rule, aspect kept), the rest stays zero-padded
bottom/right, and clicks are scaled by the same factor. Targets are resized to the decoder's low-resolution grid
(input size / 4) with antialiasing, so they are soft at edges, as the paper's bilinear-resized masks are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _scale(valid_hw, size: int):
    return size / jnp.max(valid_hw, axis=-1).astype(jnp.float32)  # (B,)


def _resize_one(image, scale, out_hw):
    return jax.image.scale_and_translate(image, out_hw + image.shape[2:], (0, 1), jnp.stack([scale, scale]),
                                         jnp.zeros(2), "linear", antialias=True)


def to_model_frame(images, valid_hw, size: int):
    """images (B, S, S, C), valid_hw (B, 2) → (B, size, size, C) and the per-sample scale (B,).

    Pixels beyond the valid region are cleared first, so padding never bleeds into the image by interpolation.
    """
    s = images.shape[1]
    rows = jnp.arange(s)[None, :, None] < valid_hw[:, 0, None, None]
    cols = jnp.arange(s)[None, None, :] < valid_hw[:, 1, None, None]
    images = jnp.where((rows & cols)[..., None], images, 0)
    scale = _scale(valid_hw, size)
    return jax.vmap(lambda im, sc: _resize_one(im, sc, (size, size)))(images, scale), scale


def target_to_low_res(masks, valid_hw, size: int):
    """masks (B, S, S) in {0, 1} → soft targets (B, size/4, size/4) aligned with the decoder's logits."""
    low = size // 4
    scale = _scale(valid_hw, size) / 4
    out = jax.vmap(lambda m, sc: _resize_one(m[..., None].astype(jnp.float32), sc, (low, low)))(masks, scale)
    return jnp.clip(out[..., 0], 0.0, 1.0)


def clicks_to_model_frame(coords, scale):
    """(x, y) canvas pixels (B, N, 2) → model-frame pixels, scaled as SAM's ResizeLongestSide scales them."""
    return coords * scale[:, None, None]
