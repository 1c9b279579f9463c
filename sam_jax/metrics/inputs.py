"""Validation shared by the metrics: binary masks, matching shapes and voxel spacing, each failing with a message
that names the offending argument."""

import math

import numpy as np

from sam_jax.metrics.errors import MetricInputError


def as_mask(array, name: str, ndim: int | None = None) -> np.ndarray:
    """Returns `array` as a bool array; accepts bool, or integers holding only 0 and 1 (never floats, which are
    usually logits or probabilities passed by mistake)."""
    array = np.asarray(array)
    if ndim is not None and array.ndim != ndim:
        raise MetricInputError(f"{name}: expected a {ndim}-D mask, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 1):
            raise MetricInputError(
                f"{name}: integer mask must hold only 0 and 1, found values in [{array.min()}, {array.max()}]"
            )
        return array.astype(bool)
    raise MetricInputError(f"{name}: expected a bool or 0/1 integer mask, got dtype {array.dtype}")


def check_same_shape(pred: np.ndarray, gt: np.ndarray, pred_name: str = "pred", gt_name: str = "gt") -> None:
    if pred.shape != gt.shape:
        raise MetricInputError(f"{pred_name} has shape {pred.shape} but {gt_name} has shape {gt.shape}")


def as_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """Voxel spacing in mm, one positive finite value per array axis (in the arrays' axis order)."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise MetricInputError(f"spacing: expected {ndim} numbers, got {spacing!r}") from None
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise MetricInputError(f"spacing: expected {ndim} positive finite numbers (mm per axis), got {spacing!r}")
    return values
