"""Whole-volume ("legacy" BraTS) metrics: 3D Dice and the symmetric 95th-percentile Hausdorff distance in mm.

HD95 is the BraTS 2023 evaluator's, computed by the same library (DeepMind's `surface-distance`): surface elements
sit on the voxel-corner grid wherever a 2×2×2 neighbourhood is mixed (outside the array counts as background), each
weighted by its area in mm² at the given spacing; per direction the distance is the smallest one whose cumulative
area reaches 95 %, and HD95 is the larger of the two directions. Area weighting matters: a small lesion has more
surface per voxel than a large one, so it can stay in the 95th percentile where counting surface voxels drops it.
"""

import warnings

import numpy as np
import surface_distance

from sam_jax.metrics.errors import MetricInputError
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


def hd95(pred, gt, spacing=(1.0, 1.0, 1.0), one_empty: float = BRATS_MAX_HD95) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two 2-D or 3-D masks.

    spacing: mm per array axis, in the arrays' axis order. Both masks empty → 0.0; exactly one empty →
    `one_empty` (374, the BraTS 2023 value, by default; pass `float("nan")` to leave such cases out of means).
    """
    pred = as_mask(pred, "pred")
    gt = as_mask(gt, "gt")
    check_same_shape(pred, gt)
    if pred.ndim not in (2, 3):
        raise MetricInputError(f"pred, gt: HD95 needs 2-D or 3-D masks, got shape {pred.shape}")
    spacing = as_spacing(spacing, pred.ndim)
    pred_empty, gt_empty = not pred.any(), not gt.any()
    # Settled here, not by the library: its empty-mask branch uses np.Inf, which NumPy 2 removed (surface-distance
    # 0.1); the BraTS evaluator turns that infinity into 374 and scores two empty masks 0.
    if pred_empty and gt_empty:
        return 0.0
    if pred_empty or gt_empty:
        return float(one_empty)
    with warnings.catch_warnings():
        # surface-distance 0.1 reaches scipy.ndimage functions through namespaces SciPy deprecates; the warning
        # is about the library, not something the caller can act on.
        warnings.filterwarnings(
            "ignore", message=r".*the `scipy\.ndimage\.\w+` namespace is deprecated", category=DeprecationWarning
        )
        distances = surface_distance.compute_surface_distances(gt, pred, spacing)
    return float(surface_distance.compute_robust_hausdorff(distances, 95))
