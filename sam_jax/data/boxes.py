"""Box prompts in pure NumPy, in SAM's and MedSAM's convention: (x0, y0, x1, y1) = (first column, first row, last
column, last row) of a 2-D (H, W) mask, corners inclusive (MedSAM takes min/max of the mask's pixel indices; SAM's
prompt encoder then adds 0.5, the corner pixels' centres, as it does to clicks).

Training widens each side of the slice's tight tumour box outward by a random 0…`BOX_SHIFT` pixels, clipped to the
slice, as MedSAM's training does (`bbox_shift`: 20 pixels of 1024 in MedSAM, 5 of 256 in LiteMedSAM, both ≈ 2 % of
the side, i.e. 5 pixels of a 240-pixel BraTS slice). LiteMedSAM's 3-D inference prompts each next slice by the box
of the previous slice's mask widened by a fixed 3 pixels of 256 (`PROPAGATION_MARGIN`, 3 of 240 here)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PROMPTS = ("click", "box", "both")
BOX_SHIFT = 5
PROPAGATION_MARGIN = 3


def tight_box(mask: np.ndarray) -> np.ndarray | None:
    """The inclusive (x0, y0, x1, y1) float32 box of an (H, W) mask; None when it is empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], np.float32)


def widen(box: np.ndarray, hw, by) -> np.ndarray:
    """`box` with each side moved outward by `by` (one number or four: left, top, right, bottom), clipped to an
    (H, W) slice."""
    h, w = hw
    moved = np.asarray(box, np.float32) + np.array([-1, -1, 1, 1], np.float32) * np.asarray(by, np.float32)
    return np.clip(moved, 0, np.array([w - 1, h - 1, w - 1, h - 1], np.float32))


def jittered_box(box: np.ndarray, hw, rng: np.random.Generator, shift: int = BOX_SHIFT) -> np.ndarray:
    """MedSAM's training perturbation: each side widened by its own uniform integer 0…`shift`."""
    return widen(box, hw, rng.integers(0, shift + 1, 4))


def slice_box(tumour: np.ndarray, rng: np.random.Generator, shift: int = BOX_SHIFT) -> tuple[np.ndarray, bool]:
    """One training box for a slice: (box (4,) float32, has_box); a slice without tumour has none (zeros, False)
    and draws nothing from `rng`. `shift` 0: the tight box."""
    box = tight_box(tumour)
    if box is None:
        return np.zeros(4, np.float32), False
    return (jittered_box(box, tumour.shape, rng, shift) if shift else box), True


def boxes_per_slice(tumour: np.ndarray, rng: np.random.Generator | None = None, shift: int = BOX_SHIFT):
    """(Z, H, W) tumour → boxes (Z, 4) and has_box (Z,): tight boxes, or jittered ones when `rng` is given."""
    drawn = [slice_box(t, rng, shift if rng is not None else 0) for t in tumour]
    return np.stack([b for b, _ in drawn]).reshape(-1, 4), np.array([h for _, h in drawn], bool)


def volume_boxes(tumour: np.ndarray) -> np.ndarray:
    """One box per 26-connected tumour component of an (X, Y, Z) volume, on the component's middle axial slice
    (LiteMedSAM's z_mid = z_min + (z_max − z_min) // 2): (N, 5) int (x0, y0, x1, y1, z), the tight box of the
    component's voxels on that slice, largest component first."""
    components, count = ndimage.label(np.asarray(tumour, bool), structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return np.zeros((0, 5), np.int64)
    sizes = np.bincount(components.ravel())[1:]
    out = []
    for index in np.argsort(-sizes, kind="stable"):
        xs, ys, zs = np.nonzero(components == index + 1)
        z = int(zs.min() + (zs.max() - zs.min()) // 2)
        on_slice = zs == z  # a connected component occupies every slice between its ends
        out.append([xs[on_slice].min(), ys[on_slice].min(), xs[on_slice].max(), ys[on_slice].max(), z])
    return np.asarray(out, np.int64)


def boxes_to_model_frame(boxes, scale_xy):
    """(…, 4) boxes in slice pixels → model-frame pixels: each corner scaled as a click is
    (`sam_jax.model.frame.clicks_to_model_frame`) by the (…, 2) (x, y) factors of its slice. NumPy or JAX arrays."""
    shape = boxes.shape
    return (boxes.reshape(shape[:-1] + (2, 2)) * scale_xy[..., None, :]).reshape(shape)
