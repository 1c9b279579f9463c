"""The model's input frame: slices in, SAM's square input out, and its logits back to the slice. One module for
training, evaluation and the predictor, so what the model sees is the same everywhere.

A slice of H×W pixels sits top-left in an S×S canvas (S ≥ max(H, W); the cache's 240 for BraTS) with its valid
(H, W) beside it. Two resize rules:
- `longest_side` (SAM's): the valid part is scaled by size / max(H, W), aspect kept, with antialiased bilinear
  interpolation, and the rest of the input stays zero (bottom/right padding).
- `stretch` (the original paper code's): rows scaled by size / H and columns by size / W to fill the square, bilinear
  with edges clamped, as `F.interpolate(..., mode="bilinear", align_corners=False)` does.
Clicks (x, y) scale by the same per-axis factors. Targets go to the decoder's low-resolution grid by the same
resize, so they are soft at edges, as the paper's bilinear-resized masks are. That grid is 4× the image embedding's
(`SamConfig.mask_input_size`): a quarter of the input for SAM (patch 16), the input itself for LiteMedSAM (patch 4,
256² logits at 256²). Logits come back by SAM's postprocess: upsample to the input frame, crop the valid part (its
size rounded half up, as SAM's `ResizeLongestSide`; the whole square when stretched), resize to (H, W).

A model whose weights expect LiteMedSAM's input (`SamConfig.frame_min_max`) gets each resized slice min–max scaled
to [0, 1] over its valid part (all channels together) with the padding left at 0, as LiteMedSAM's inference scales
the resized slice before padding it; the slice is resized with its edges clamped, as its inference resizes the slice
alone (SAM's frame clears beyond the slice first, so its last row and column blend with zeros). Being per slice, this
is the frame's, not the volume normalisation's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

RESIZE_RULES = ("longest_side", "stretch")


def _scale_yx(valid_hw, size: int, rule: str):
    """(B, 2) factors (rows, columns) from slice pixels to model-frame pixels."""
    hw = valid_hw.astype(jnp.float32)
    if rule == "stretch":
        return size / hw
    return jnp.repeat(size / jnp.max(hw, axis=-1, keepdims=True), 2, axis=-1)


def _prepare(image, hw, rule: str):
    """Pixels beyond the valid (h, w): cleared (`longest_side`: padding never bleeds in by interpolation) or the
    edge repeated (`stretch`: the resize then clamps at the edges, as PyTorch's does)."""
    s = image.shape[0]
    if rule == "stretch":
        rows, cols = jnp.minimum(jnp.arange(s), hw[0] - 1), jnp.minimum(jnp.arange(s), hw[1] - 1)
        return image[rows][:, cols]
    inside = (jnp.arange(s)[:, None] < hw[0]) & (jnp.arange(s)[None, :] < hw[1])
    return jnp.where(inside.reshape(inside.shape + (1,) * (image.ndim - 2)), image, 0)


def _resize(image, scale_yx, out_hw):
    return jax.image.scale_and_translate(
        image, out_hw + image.shape[2:], (0, 1), scale_yx, jnp.zeros(2), "linear", antialias=True
    )


def _min_max(frame, filled_hw):
    """`frame` (size, size, C) scaled to [0, 1] over its top-left `filled_hw` rows and columns; 0 beyond them."""
    s = frame.shape[0]
    inside = ((jnp.arange(s)[:, None] < filled_hw[0]) & (jnp.arange(s)[None, :] < filled_hw[1]))[..., None]
    low = jnp.min(jnp.where(inside, frame, jnp.inf))
    high = jnp.max(jnp.where(inside, frame, -jnp.inf))
    return jnp.where(inside, (frame - low) / jnp.maximum(high - low, 1e-8), 0)


def to_model_frame(images, valid_hw, size: int, rule: str = "longest_side", min_max: bool = False):
    """images (B, S, S, C), valid_hw (B, 2) → (B, size, size, C) and the per-sample (x, y) scale (B, 2).
    `min_max`: each frame min–max scaled over the part the slice fills (LiteMedSAM's input)."""
    scale = _scale_yx(valid_hw, size, rule)
    # LiteMedSAM resizes the slice alone (its edges clamped) and pads after: edges repeated, the padding set after.
    edges = "stretch" if min_max else rule
    frames = jax.vmap(lambda im, hw, sc: _resize(_prepare(im, hw, edges), sc, (size, size)))(images, valid_hw, scale)
    if min_max:  # the filled part rounded half up, as `resized_shape`
        filled = jnp.floor(valid_hw.astype(jnp.float32) * scale + 0.5)
        frames = jax.vmap(_min_max)(frames, filled)
    return frames, scale[:, ::-1]


def target_to_low_res(masks, valid_hw, size: int, rule: str = "longest_side", *, low_res: int):
    """masks (B, S, S) in {0, 1} → soft targets (B, low_res, low_res) aligned with the decoder's logits; `low_res`:
    the decoder's grid side (`SamConfig.mask_input_size`)."""
    scale = _scale_yx(valid_hw, size, rule) * (low_res / size)
    grid = (low_res, low_res)
    out = jax.vmap(lambda m, hw, sc: _resize(_prepare(m.astype(jnp.float32), hw, rule)[..., None], sc, grid))(
        masks, valid_hw, scale
    )
    return jnp.clip(out[..., 0], 0.0, 1.0)


def clicks_to_model_frame(coords, scale_xy):
    """(x, y) canvas pixels (B, N, 2) → model-frame pixels; `scale_xy` (B, 2) from `to_model_frame`."""
    return coords * scale_xy[:, None, :]


def original_code_prompts(coords, labels, *, click_order: str, broadcast: bool):
    """Clicks (N, K, 2) in model-frame (x, y) and labels (N, K) as the original paper code gave them to SAM:
    `row_col` swaps each click's coordinates (it passed (row, col) where SAM reads (x, y)); `broadcast` gives every
    slice the clicks of all N slices (one prompt for the whole batch). NumPy or JAX arrays."""
    if click_order == "row_col":
        coords = coords[..., ::-1]
    if broadcast:
        n = coords.shape[0]
        coords, labels = coords.reshape(1, -1, 2).repeat(n, axis=0), labels.reshape(1, -1).repeat(n, axis=0)
    return coords, labels


def input_grid_target(masks, valid_hw, size: int, rule: str = "longest_side"):
    """masks (B, S, S) → soft targets (B, size, size) at the input frame (the original code's loss grid)."""
    frames, _ = to_model_frame(masks[..., None].astype(jnp.float32), valid_hw, size, rule)
    return jnp.clip(frames[..., 0], 0.0, 1.0)


def click_scale(hw, size: int, rule: str = "longest_side"):
    """Host-side (x, y) factors for one slice size: what `to_model_frame` scales its clicks by."""
    h, w = hw
    return (size / w, size / h) if rule == "stretch" else (size / max(h, w),) * 2


def valid_shape(hw, size: int, rule: str = "longest_side"):
    """The part of the model frame the slice fills (SAM's crop before resizing logits back)."""
    return (size, size) if rule == "stretch" else resized_shape(*hw, size)


def resized_shape(height: int, width: int, longest: int):
    """The valid part of the input frame, rounded half up as SAM's `ResizeLongestSide.get_preprocess_shape`."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _bilinear(x, out_hw):
    """Resize the last two axes as `F.interpolate(..., mode="bilinear", align_corners=False)`: no antialiasing, which
    `jax.image.resize` adds when shrinking (from the model frame back to a smaller slice, mask edges then moved)."""
    h, w = x.shape[-2:]
    scale = jnp.array([out_hw[0] / h, out_hw[1] / w])
    return jax.image.scale_and_translate(
        x, x.shape[:-2] + tuple(out_hw), (x.ndim - 2, x.ndim - 1), scale, jnp.zeros(2), "linear", antialias=False
    )


def postprocess_masks(low_res_logits, input_hw, original_hw, size: int):
    """(..., M, 4g, 4g) logits → (..., M, H, W) logits at the original size (bilinear, as SAM). One compiled program
    per set of sizes (eagerly, its resize weights are dozens of small programs: seconds before a first mask)."""
    return _postprocess(low_res_logits, tuple(map(int, input_hw)), tuple(map(int, original_hw)), int(size))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _postprocess(low_res_logits, input_hw: tuple, original_hw: tuple, size: int):
    x = _bilinear(low_res_logits, (size, size))
    x = x[..., : input_hw[0], : input_hw[1]]
    return _bilinear(x, original_hw)
