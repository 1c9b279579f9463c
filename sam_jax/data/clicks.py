"""Click prompts in pure NumPy. 2-D masks are (rows, cols) = (H, W) arrays and clicks come in SAM's (x, y) order =
(column, row) (the paper's code passed (row, column)). Volumes are nibabel (X, Y, Z) arrays, and because a cached
axial slice has voxel axis X as its column and Y as its row, a volume click (x, y, z) is simply the voxel index
(i, j, k). Policies for one slice: a positive click uniform inside the tumour; on an empty slice either the paper's
random point labelled positive ('paper'), a negative click inside the brain ('negative_on_empty', the default), or no
click (label -1, 'skip_empty'). Iterative clicks follow RITM: the next click is the interior-most point (argmax of the
Euclidean distance transform, already clicked pixels excluded) of the error region (false negatives or false
positives) whose interior lies deeper; positive on a false negative, negative on a false positive."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLICK_POLICIES = ("paper", "negative_on_empty", "skip_empty")
POSITIVE, NEGATIVE, NO_CLICK = 1, 0, -1


def uniform_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A pixel of `region` (H, W) drawn uniformly, as float (x, y); None when the region is empty."""
    flat = np.flatnonzero(region)
    if flat.size == 0:
        return None
    row, col = divmod(int(flat[rng.integers(flat.size)]), region.shape[1])
    return np.array([col, row], np.float32)


def slice_click(
    tumour: np.ndarray, rng: np.random.Generator, policy: str = "negative_on_empty", brain: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """One click for a slice: ((x, y) float32, label). `tumour` and `brain` are (H, W) masks of the valid slice area;
    the brain (default: the whole slice) is where a negative click on an empty slice may land."""
    if policy not in CLICK_POLICIES:
        raise ValueError(f"unknown click policy {policy!r}; expected one of {CLICK_POLICIES}")
    point = uniform_point(tumour, rng)
    if point is not None:
        return point, POSITIVE
    if policy == "skip_empty":
        return np.zeros(2, np.float32), NO_CLICK
    anywhere = np.ones(tumour.shape, bool)
    if policy == "paper":  # the original labels a random point of an empty slice as tumour
        return uniform_point(anywhere, rng), POSITIVE
    point = uniform_point(brain, rng) if brain is not None else None
    return (point if point is not None else uniform_point(anywhere, rng)), NEGATIVE


def _interior_depth(region: np.ndarray, clicked: np.ndarray | None) -> np.ndarray:
    # Padding makes the image border count as region boundary, as RITM does.
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if clicked is not None:
        depth[clicked] = 0
    return depth


def next_click(
    target: np.ndarray, prediction: np.ndarray, clicked: np.ndarray | None = None
) -> tuple[np.ndarray, int] | None:
    """RITM's next click for (H, W) boolean `target` and `prediction`: ((x, y), 1) inside the false negatives or
    ((x, y), 0) inside the false positives, whichever has the deeper interior; None when nothing is left to correct.
    `clicked` (H, W) marks pixels already clicked, which are never chosen again."""
    target, prediction = np.asarray(target, bool), np.asarray(prediction, bool)
    fn_depth = _interior_depth(target & ~prediction, clicked)
    fp_depth = _interior_depth(prediction & ~target, clicked)
    fn_max, fp_max = fn_depth.max(), fp_depth.max()
    if max(fn_max, fp_max) == 0:
        return None
    positive = fn_max > fp_max
    row, col = np.unravel_index(np.argmax(fn_depth if positive else fp_depth), target.shape)
    return np.array([col, row], np.float32), POSITIVE if positive else NEGATIVE


def volume_clicks(tumour: np.ndarray) -> np.ndarray:
    """One positive click per 26-connected tumour component of an (X, Y, Z) volume, at the component's interior-most
    voxel; returns an (N, 3) int array of (x, y, z) = voxel (i, j, k), largest component first."""
    components, count = ndimage.label(np.asarray(tumour, bool), structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return np.zeros((0, 3), np.int64)
    sizes = np.bincount(components.ravel())[1:]
    boxes = ndimage.find_objects(components)
    clicks = []
    for index in np.argsort(-sizes, kind="stable"):
        box = boxes[index]
        component = components[box] == index + 1
        depth = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1, 1:-1]
        local = np.unravel_index(np.argmax(depth), component.shape)
        clicks.append([s.start + i for s, i in zip(box, local)])
    return np.asarray(clicks, np.int64)
