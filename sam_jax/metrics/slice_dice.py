"""The paper's evaluation protocol: 2D Dice per axial slice (empty/empty = 1), averaged over the slices of a volume
and over a set of thresholds applied to the raw logits, as vpulab/med-sam-brain's `eval_seg` does; the mean over
volumes is left to the caller (`np.mean` of the per-volume scores)."""

import numpy as np

from sam_jax.metrics.errors import MetricInputError
from sam_jax.metrics.inputs import as_mask, check_same_shape

# The paper's code compares these numbers with the decoder's logits, not with sigmoid probabilities, so a pixel
# with logit 0.2 (probability 0.55) counts as foreground only at the lowest threshold.
PAPER_LOGIT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def dice_per_slice(pred, gt) -> np.ndarray:
    """Dice of each slice along axis 0 of two (Z, ...) masks: shape (Z,), 1.0 where both slices are empty.

    The paper's code adds 1e-4 to numerator and denominator instead; that gives the same 1.0 on empty/empty slices
    and differs by < 1e-4 / (|pred| + |gt|) elsewhere, so the exact form is used here.
    """
    pred = as_mask(pred, "pred")
    gt = as_mask(gt, "gt")
    check_same_shape(pred, gt)
    if pred.ndim < 2:
        raise MetricInputError(f"pred: expected (Z, ...) slices, got shape {pred.shape}")
    axes = tuple(range(1, pred.ndim))
    overlap = np.logical_and(pred, gt).sum(axis=axes, dtype=np.int64)
    total = pred.sum(axis=axes, dtype=np.int64) + gt.sum(axis=axes, dtype=np.int64)
    return np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1))


def paper_slice_dice(logits, gt, thresholds=PAPER_LOGIT_THRESHOLDS) -> float:
    """The paper's score of one volume: mean over `thresholds` (compared with `logits`, strictly greater) of the
    mean over slices of `dice_per_slice`.

    logits: (Z, H, W) float. gt: (Z, H, W) bool, or float in [0, 1] for soft (resized) masks, which are binarised
    at each threshold too, as the paper's code does with its bilinearly resized targets.
    """
    logits = np.asarray(logits)
    gt = np.asarray(gt)
    if logits.ndim != 3 or not np.issubdtype(logits.dtype, np.floating):
        raise MetricInputError(f"logits: expected a (Z, H, W) float array, got {logits.dtype} {logits.shape}")
    check_same_shape(logits, gt, "logits", "gt")
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
        raise MetricInputError(f"thresholds: expected finite numbers, got {thresholds.tolist()}")
    soft_gt = np.issubdtype(gt.dtype, np.floating)
    if not soft_gt:
        gt = as_mask(gt, "gt")
    per_threshold = [dice_per_slice(logits > t, gt > t if soft_gt else gt).mean() for t in thresholds]
    return float(np.mean(per_threshold))


def paper_scores(logits, tumour) -> dict:
    """One volume's paper score (`paper_slice_dice`) and, since empty slices (Dice 1 when nothing is predicted)
    dominate it, the mean Dice at logit 0 over the slices that hold tumour (NaN when none does)."""
    tumour = as_mask(tumour, "tumour")
    has_tumour = tumour.any(axis=tuple(range(1, tumour.ndim)))
    logits = np.asarray(logits)
    tumour_dice = dice_per_slice(logits[has_tumour] > 0, tumour[has_tumour]) if has_tumour.any() else []
    return {
        "paper_dice": paper_slice_dice(logits, tumour),
        "tumour_slice_dice": float(np.mean(tumour_dice)) if len(tumour_dice) else float("nan"),
    }
