"""The model's input frame: slices in, SAM's square input out, and its logits back to the slice. One module for
training, evaluation and the predictor, so what the model sees is the same everywhere.

A slice of H×W pixels sits top-left in an S×S canvas (S ≥ max(H, W); the cache's 240 for BraTS) with its valid
(H, W) beside it. `longest_side` (SAM's rule): the valid part is scaled by size / max(H, W), aspect kept, with
antialiased bilinear interpolation, and the rest of the input stays zero (bottom/right padding); clicks scale by the
same factor. Targets go to the decoder's low-resolution grid (size / 4) by the same resize, so they are soft at edges,
as the paper's bilinear-resized masks are. Logits come back by SAM's postprocess: upsample to the input frame, crop
the valid part (its size rounded half up, as SAM's `ResizeLongestSide`), resize to (H, W).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RESIZE_RULES = ("longest_side",)


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
    """(x, y) canvas pixels (B, N, 2) → model-frame pixels."""
    return coords * scale[:, None, None]


def resized_shape(height: int, width: int, longest: int):
    """The valid part of the input frame, rounded half up as SAM's `ResizeLongestSide.get_preprocess_shape`."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def postprocess_masks(low_res_logits, input_hw, original_hw, size: int):
    """(..., M, 4g, 4g) logits → (..., M, H, W) logits at the original size (bilinear, as SAM)."""
    lead = low_res_logits.shape[:-2]
    x = jax.image.resize(low_res_logits, lead + (size, size), "bilinear")
    x = x[..., :input_hw[0], :input_hw[1]]
    return jax.image.resize(x, lead + tuple(original_hw), "bilinear")
