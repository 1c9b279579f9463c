"""3-D segmentation from one click per tumour: segment the clicked slice, then walk up and down the volume, each
slice prompted by a positive click at the interior-most point of the previous slice's mask, until the mask
vanishes. Several tumours: their logits are combined by maximum. Slices never reached get `UNREACHED` logits."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sam_jax.data.clicks import POSITIVE

UNREACHED = -1e4


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel deepest inside a non-empty (H, W) mask."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(depth), mask.shape)
    return np.array([col, row], np.float32)


def _segment_slice(segmenter, embeddings, k: int, point, hw) -> np.ndarray:
    low = segmenter.decode(embeddings[k:k + 1], np.asarray(point, np.float32)[None, None],
                           np.array([[POSITIVE]], np.int32), hw)
    return segmenter.to_slice_grid(low, hw)[0]


def propagate(segmenter, embeddings, hw, clicks) -> np.ndarray:
    """`clicks`: (x, y, k) in slice pixels and slice index → (Z', H, W) logits."""
    depth = embeddings.shape[0]
    logits = np.full((depth,) + tuple(hw), UNREACHED, np.float32)
    for x, y, k in clicks:
        start = _segment_slice(segmenter, embeddings, int(k), (x, y), hw)
        logits[int(k)] = np.maximum(logits[int(k)], start)
        for step in (1, -1):
            previous, j = start > 0, int(k) + step
            while previous.any() and 0 <= j < depth:
                current = _segment_slice(segmenter, embeddings, j, interior_point(previous), hw)
                logits[j] = np.maximum(logits[j], current)
                previous, j = current > 0, j + step
    return logits
