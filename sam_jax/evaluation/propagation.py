"""3-D segmentation from one click or one box per tumour: segment the prompted slice, then walk up and down the
volume, each slice prompted from the previous slice's mask until the mask vanishes. A click's walk clicks
positively at the interior-most point of that mask; a box's walk, as LiteMedSAM's challenge inference, gives the
mask's bounding box widened by `PROPAGATION_MARGIN` pixels (`sam_jax.data.boxes`; the challenge also stops at its
3-D box's ends and reuses the first box after an empty mask: a user's 2-D box has no such ends, so the walk stops
where the mask vanishes, as a click's does). Several tumours: their logits are combined by maximum. Slices never
reached get `UNREACHED` logits.

`embeddings` is anything that slices like an array along its first axis and has a length: the encoder's output for
all slices (evaluation, whose protocols need them all), or `SliceEmbeddings`, which computes each slice's on first
use (the viewer, `eval.predict`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sam_jax.data.boxes import PROPAGATION_MARGIN, tight_box, widen
from sam_jax.data.clicks import POSITIVE

UNREACHED = -1e4


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel deepest inside a non-empty (H, W) mask."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(depth), mask.shape)
    return np.array([col, row], np.float32)


def segment_slice(segmenter, embeddings, k: int, points, labels, hw, box=None) -> np.ndarray:
    """Slice k's (H, W) logits from clicks `points` (K, 2) in slice (x, y) pixels with `labels` (K,), a `box`
    (x0, y0, x1, y1) in slice pixels, or both (points and labels None: the box alone)."""
    coords = None if points is None else np.asarray(points, np.float32).reshape(1, -1, 2)
    labels = None if points is None else np.asarray(labels, np.int32).reshape(1, -1)
    boxes = {} if box is None else dict(boxes=np.asarray(box, np.float32).reshape(1, 4))
    low = segmenter.decode(embeddings[k : k + 1], coords, labels, hw, **boxes)
    return segmenter.to_slice_grid(low, hw)[0]


def follow_box(mask: np.ndarray) -> np.ndarray:
    """The next slice's box from a non-empty (H, W) mask: its bounding box widened by `PROPAGATION_MARGIN`."""
    return widen(tight_box(mask), mask.shape, PROPAGATION_MARGIN)


def walk(segmenter, embeddings, hw, k: int, mask: np.ndarray, step: int, fixed=None, by_box: bool = False):
    """From slice k's mask, the slices k + step, k + 2 step, … each prompted by a positive click at the interior-most
    point of the previous slice's mask (`by_box`: by `follow_box` of it), until a mask is empty or the volume ends:
    yields (slice, click (x, y) or box (x0, y0, x1, y1), logits). `fixed`: slice → mask to keep instead of
    segmenting (a viewer user's own edit); the walk goes on from it and yields (slice, None, None)."""
    fixed = fixed or {}
    previous, j = mask, k + step
    while previous.any() and 0 <= j < len(embeddings):
        if j in fixed:
            previous = fixed[j]
            yield j, None, None
        elif by_box:
            box = follow_box(previous)
            current = segment_slice(segmenter, embeddings, j, None, None, hw, box)
            previous = current > 0
            yield j, box, current
        else:
            point = interior_point(previous)
            current = segment_slice(segmenter, embeddings, j, point[None], [POSITIVE], hw)
            previous = current > 0
            yield j, point, current
        j += step


def propagate(segmenter, embeddings, hw, clicks, boxes=()) -> np.ndarray:
    """`clicks`: (x, y, k) in slice pixels and slice index; `boxes`: (x0, y0, x1, y1, k) likewise, each walked by
    boxes → (Z', H, W) logits."""
    logits = np.full((len(embeddings),) + tuple(hw), UNREACHED, np.float32)
    starts = [(int(k), [(x, y)], None) for x, y, k in clicks] + [(int(b[4]), None, b[:4]) for b in boxes]
    for k, point, box in starts:
        labels = None if point is None else [POSITIVE]
        start = segment_slice(segmenter, embeddings, k, point, labels, hw, box)
        logits[k] = np.maximum(logits[k], start)
        for step in (1, -1):
            for j, _, current in walk(segmenter, embeddings, hw, k, start > 0, step, by_box=box is not None):
                logits[j] = np.maximum(logits[j], current)
    return logits
