"""What the page draws: 2-D planes of an (X, Y, Z) volume in display orientation, and images quantised for
transfer.

Display orientation (the page inverts it for clicks): axial rows run from high to low y, columns along x; coronal
and sagittal rows run from high to low z (superior up), columns along x and y respectively."""

from __future__ import annotations

import numpy as np

from sam_jax.viewer.errors import BadRequest

AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
LEVELS = 65535  # images travel as uint16 over their volume's [min, max]


def plane(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """(rows, cols) plane `index` across `axis` (axial, coronal, sagittal)."""
    if axis not in AXES:
        raise BadRequest(f"axis {axis!r}: expected one of {', '.join(AXES)}")
    n = volume.shape[AXES[axis]]
    if not 0 <= index < n:
        raise BadRequest(f"{axis} index {index} outside 0–{n - 1}")
    return np.take(volume, index, axis=AXES[axis]).T[::-1]


def value_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = float(image.min()), float(image.max())
    return lo, hi if hi > lo else lo + 1.0


def default_window(image: np.ndarray) -> tuple[float, float]:
    """(low, high) display window: the 0.5th–99.5th percentiles of the non-zero (brain) voxels."""
    brain = image[image != 0]
    if brain.size == 0:
        return value_range(image)
    lo, hi = np.percentile(brain, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def quantise(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    return np.round((values - lo) * (LEVELS / (hi - lo))).clip(0, LEVELS).astype("<u2")
