"""A case as the model sees it: its axial slices normalised and cropped as in training, and the way back to the
native grid. Slices are (Z', H, W, C) with rows along voxel Y and columns along voxel X (the cache's convention,
`sam_jax.data.cache`), so a slice mask goes back as `vol[x0:x1, y0:y1, z0 + k] = mask.T`."""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.data.brats import MODALITIES, Case
from sam_jax.data.preprocess import brain_box, brain_mask, normalise
from sam_jax.evaluation.errors import CaseError
from sam_jax.model.sam import normalize_rgb


@dataclasses.dataclass
class CaseVolume:
    case: Case
    slices: np.ndarray  # (Z', H, W, C) float32, model channels
    tumour: np.ndarray | None  # (Z', H, W) bool whole tumour, None without a segmentation
    box: tuple[tuple[int, int], ...]  # (x, y, z) half-open ranges of the crop in the native volume

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.case.images[MODALITIES[0]].shape

    @property
    def first_slice(self) -> int:
        return self.box[2][0]

    def to_native(self, slice_values: np.ndarray, fill=0) -> np.ndarray:
        """(Z', H, W) per-slice values → an (X, Y, Z) volume on the native grid, `fill` outside the crop."""
        out = np.full(self.shape, fill, slice_values.dtype)
        (x0, x1), (y0, y1), (z0, z1) = self.box
        out[x0:x1, y0:y1, z0:z1] = slice_values.transpose(2, 1, 0)
        return out

    def native_tumour(self) -> np.ndarray:
        if self.case.seg is None:
            raise CaseError(f"case {self.case.case_id} has no segmentation to score against")
        return self.case.seg > 0


def _sam_rgb(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    # Zero-shot SAM expects 0–255 RGB: the brain's 0.5–99.5 percentiles are stretched to that range.
    if not brain.any():
        return volume
    low, high = np.percentile(volume[brain], (0.5, 99.5))
    return np.clip((volume - low) / max(high - low, 1e-6), 0, 1) * 255


def prepare_volume(case: Case, modalities, normalisation: str, crop_to_brain: bool,
                   sam_rgb: bool = False) -> CaseVolume:
    """Normalise and crop as training did (`sam_jax.data.cache`); `sam_rgb` maps to SAM's RGB input instead."""
    brain = brain_mask(case.images)
    if not brain.any():
        raise CaseError(f"case {case.case_id}: every modality is zero (no brain to segment)")
    box = brain_box(brain) if crop_to_brain else tuple((0, n) for n in brain.shape)
    crop = tuple(slice(*b) for b in box)
    channels = []
    for m in modalities:
        volume = _sam_rgb(case.images[m], brain) if sam_rgb else normalise(case.images[m], brain, normalisation)
        channels.append(volume[crop].transpose(2, 1, 0))
    slices = np.stack(channels, axis=-1).astype(np.float32)
    if sam_rgb:
        slices = np.asarray(normalize_rgb(slices), np.float32)
    tumour = None if case.seg is None else (case.seg[crop] > 0).transpose(2, 1, 0)
    return CaseVolume(case, slices, tumour, box)
