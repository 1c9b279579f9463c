"""Per-case preprocessing before caching: a brain mask (any modality non-zero, the volumes being skull-stripped),
per-modality normalisation over brain voxels ('zscore': clip to the 0.5/99.5 brain percentiles, then zero mean and
unit variance, background kept at 0; 'none': the raw intensities the paper fed to SAM), and the brain's bounding box
for the optional crop."""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("zscore", "none")
CLIP_PERCENTILES = (0.5, 99.5)


def brain_mask(images: dict[str, np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce([v != 0 for v in images.values()])


def normalise(volume: np.ndarray, brain: np.ndarray, method: str) -> np.ndarray:
    """A float32 copy of `volume` normalised over the `brain` voxels."""
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALISATIONS}")
    out = volume.astype(np.float32, copy=True)
    if method == "none" or not brain.any():
        return out
    values = out[brain]
    low, high = np.percentile(values, CLIP_PERCENTILES)
    values = np.clip(values, low, high)
    std = values.std()
    out[:] = 0
    out[brain] = (values - values.mean()) / (std if std > 0 else 1)
    return out


def brain_box(brain: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open (start, stop) per axis of the brain's bounding box; the whole volume when there is no brain."""
    if not brain.any():
        return tuple((0, n) for n in brain.shape)
    box = []
    for axis in range(brain.ndim):
        present = np.flatnonzero(brain.any(axis=tuple(a for a in range(brain.ndim) if a != axis)))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)
