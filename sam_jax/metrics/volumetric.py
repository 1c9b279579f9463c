"""Whole-volume ("legacy" BraTS) metrics: 3D Dice and the symmetric 95th-percentile Hausdorff distance in mm.

HD95 is measured between surface voxels (a mask minus its 6-connected erosion, the array border counting as
outside) with Euclidean distance transforms in physical units. For each direction (pred → gt, gt → pred) the 95th
percentile of the distances from one surface to the other is taken, and HD95 is the larger of the two; the
percentile is the smallest distance reaching 95 % of the surface ("inverted CDF"), which is the rule of the
surface-distance package BraTS uses, with every surface voxel weighing the same instead of by surfel area.
"""

import numpy as np
from scipy import ndimage

from sam_jax.metrics.inputs import as_mask, as_spacing, check_same_shape

# BraTS 2023 scores an HD95 that cannot be measured (one mask empty) as 374 mm, about the diagonal of the
# 240 × 240 × 155 mm volume.
BRATS_MAX_HD95 = 374.0


def dice_3d(pred, gt) -> float:
    """Volumetric Dice; 1.0 if both masks are empty, 0.0 if exactly one is."""
    pred = as_mask(pred, "pred")
    gt = as_mask(gt, "gt")
    check_same_shape(pred, gt)
    total = int(pred.sum(dtype=np.int64)) + int(gt.sum(dtype=np.int64))
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum(dtype=np.int64)) / total


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of a bool mask with at least one face neighbour outside it (or outside the array)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each surface voxel of `from_mask` to the nearest surface voxel of `to_mask`."""
    to_surface = surface_voxels(to_mask)
    return ndimage.distance_transform_edt(~to_surface, sampling=spacing)[surface_voxels(from_mask)]


def _union_bounding_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """The box around both masks plus one voxel (clipped to the array), which holds every surface voxel and
    every nearest-surface path's end, so distances computed inside it are exact and much cheaper."""
    coords = np.argwhere(a | b)
    low = np.maximum(coords.min(axis=0) - 1, 0)
    high = np.minimum(coords.max(axis=0) + 2, a.shape)
    return tuple(slice(lo, hi) for lo, hi in zip(low, high))


def hd95(pred, gt, spacing=(1.0, 1.0, 1.0), one_empty: float = BRATS_MAX_HD95) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two masks.

    spacing: mm per array axis, in the arrays' axis order. Both masks empty → 0.0; exactly one empty →
    `one_empty` (374, the BraTS 2023 value, by default; pass `float("nan")` to leave such cases out of means).
    """
    pred = as_mask(pred, "pred")
    gt = as_mask(gt, "gt")
    check_same_shape(pred, gt)
    spacing = as_spacing(spacing, pred.ndim)
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return 0.0
    if pred_empty or gt_empty:
        return float(one_empty)
    box = _union_bounding_box(pred, gt)
    pred, gt = pred[box], gt[box]
    return float(max(np.percentile(_directed_distances(pred, gt, spacing), 95, method="inverted_cdf"),
                     np.percentile(_directed_distances(gt, pred, spacing), 95, method="inverted_cdf")))
