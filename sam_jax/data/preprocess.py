"""A case as the model sees it, for the training cache and for evaluation alike: a brain mask (any modality
non-zero, the volumes being skull-stripped), per-modality normalisation over brain voxels ('zscore': clip to the
0.5/99.5 brain percentiles, then zero mean and unit variance, background kept at 0; 'none': the raw intensities the
paper fed to SAM; 'sam_rgb': the percentiles stretched to 0–255 and SAM's RGB statistics applied, zero-shot SAM's
input; 'lite_medsam': LiteMedSAM's, the CVPR 2024 challenge's MR rule (MedSAM's `pre_CT_MR.py`), the 0.5/99.5
percentiles of the modality's own positive voxels stretched to 0–255 and truncated to integers as its uint8 files
hold them), the brain's bounding box for the optional crop, and the axial slices.

LiteMedSAM's per-slice step (three equal channels for one modality, longest side to 256, min–max to [0, 1], zero
padding bottom/right) is the model frame's (`sam_jax.model.frame`), chosen by the model: a slice is only min–max
scaled once it is resized, as the challenge's inference does.

Slices are (Z', H, W, C) with rows along voxel Y and columns along voxel X: slice k' is
`vol[x0:x1, y0:y1, z0 + k'].T` over the crop box, so a slice mask goes back as `vol[x0:x1, y0:y1, z0 + k'] = mask.T`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.config import PIXEL_MEAN, PIXEL_STD

NORMALISATIONS = ("zscore", "none", "sam_rgb", "lite_medsam")
TRAINING_NORMALISATIONS = ("zscore", "none", "lite_medsam")  # sam_rgb is zero-shot SAM's alone
CLIP_PERCENTILES = (0.5, 99.5)


def brain_mask(images: dict[str, np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce([v != 0 for v in images.values()])


def normalise(volume: np.ndarray, brain: np.ndarray, method: str) -> np.ndarray:
    """A float32 copy of `volume` normalised over the `brain` voxels."""
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALISATIONS}")
    out = volume.astype(np.float32, copy=True)
    if method == "lite_medsam":
        brain = brain & (out > 0)
    if method == "none" or not brain.any():
        return out
    values = out[brain]
    low, high = np.percentile(values, CLIP_PERCENTILES)
    if method == "lite_medsam":  # the challenge's arithmetic, so that its truncation falls on the same voxels
        return np.floor((np.clip(out, low, high) - low) / max(high - low, 1e-6) * 255)
    if method == "sam_rgb":
        return np.clip((out - low) / max(high - low, 1e-6), 0, 1) * 255
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


@dataclasses.dataclass
class VolumeSlices:
    images: np.ndarray  # (Z', H, W, C) float32, one channel per modality asked for
    brain: np.ndarray  # (Z', H, W) bool
    labels: np.ndarray | None  # (Z', H, W) uint8 BraTS labels; None without a segmentation
    box: tuple[tuple[int, int], ...]  # (x, y, z) half-open ranges of the crop in the native volume


def volume_slices(
    images: dict[str, np.ndarray], seg: np.ndarray | None, modalities, normalisation: str, crop_to_brain: bool
) -> VolumeSlices:
    """A case's volumes (X, Y, Z) → its axial slices, normalised and cropped as the run spec says."""
    brain = brain_mask(images)
    box = brain_box(brain) if crop_to_brain else tuple((0, n) for n in brain.shape)
    crop = tuple(slice(*b) for b in box)
    if normalisation == "sam_rgb" and len(modalities) != len(PIXEL_MEAN):
        raise ValueError(f"normalisation sam_rgb needs {len(PIXEL_MEAN)} modalities, not {len(modalities)}")
    # (X, Y, Z) -> (Z, Y, X): slices first, image rows along voxel Y, columns along voxel X. Filled in C order (as
    # the cache stores it) one modality at a time: stacking the transposed volumes kept their layout, and every step
    # after it, the cache's write included, paid for a strided copy.
    brain_slices = brain[crop].transpose(2, 1, 0)
    slices = np.empty((*brain_slices.shape, len(modalities)), np.float32)
    for channel, modality in enumerate(modalities):
        channel_slices = normalise(images[modality], brain, normalisation)[crop].transpose(2, 1, 0)
        if normalisation == "sam_rgb":  # in the precision the stretch came in (float64)
            channel_slices = (channel_slices - np.float32(PIXEL_MEAN[channel])) / np.float32(PIXEL_STD[channel])
        slices[..., channel] = channel_slices
    labels = None if seg is None else np.ascontiguousarray(seg[crop].transpose(2, 1, 0), dtype=np.uint8)
    return VolumeSlices(slices, brain_slices, labels, box)
