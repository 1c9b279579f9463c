"""3-D segmentation from one click per tumour: segment the clicked slice, then walk up and down the volume, each
slice prompted by a positive click at the interior-most point of the previous slice's mask, until the mask
vanishes. Several tumours: their logits are combined by maximum. Slices never reached get `UNREACHED` logits.

`embeddings` is anything that slices like an array along its first axis and has a length: the encoder's output for
all slices, or `SliceEmbeddings`, which computes each slice's on first use (the viewer)."""

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


def segment_slice(segmenter, embeddings, k: int, points, labels, hw) -> np.ndarray:
    """Slice k's (H, W) logits from clicks `points` (K, 2) in slice (x, y) pixels with `labels` (K,)."""
    low = segmenter.decode(
        embeddings[k : k + 1],
        np.asarray(points, np.float32).reshape(1, -1, 2),
        np.asarray(labels, np.int32).reshape(1, -1),
        hw,
    )
    return segmenter.to_slice_grid(low, hw)[0]


def walk(segmenter, embeddings, hw, k: int, mask: np.ndarray, step: int, fixed=None):
    """From slice k's mask, the slices k + step, k + 2 step, … each prompted by a positive click at the interior-most
    point of the previous slice's mask, until a mask is empty or the volume ends: yields (slice, click (x, y),
    logits). `fixed`: slice → mask to keep instead of segmenting (a viewer user's own edit); the walk goes on from
    it and yields (slice, None, None)."""
    fixed = fixed or {}
    previous, j = mask, k + step
    while previous.any() and 0 <= j < len(embeddings):
        if j in fixed:
            previous = fixed[j]
            yield j, None, None
        else:
            point = interior_point(previous)
            current = segment_slice(segmenter, embeddings, j, point[None], [POSITIVE], hw)
            previous = current > 0
            yield j, point, current
        j += step


def propagate(segmenter, embeddings, hw, clicks) -> np.ndarray:
    """`clicks`: (x, y, k) in slice pixels and slice index → (Z', H, W) logits."""
    logits = np.full((len(embeddings),) + tuple(hw), UNREACHED, np.float32)
    for x, y, k in clicks:
        start = segment_slice(segmenter, embeddings, int(k), [(x, y)], [POSITIVE], hw)
        logits[int(k)] = np.maximum(logits[int(k)], start)
        for step in (1, -1):
            for j, _, current in walk(segmenter, embeddings, hw, int(k), start > 0, step):
                logits[j] = np.maximum(logits[j], current)
    return logits
