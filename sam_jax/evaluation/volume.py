"""A case as the model sees it: its axial slices prepared as in training (`sam_jax.data.preprocess`), and the way
back to the native grid."""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.data.brats import Case
from sam_jax.data.domains import MODALITIES, whole_tumour
from sam_jax.data.preprocess import volume_slices
from sam_jax.evaluation.errors import CaseError


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
        return self.case.whole_tumour


def prepare_volume(case: Case, spec) -> CaseVolume:
    """The case's slices as the run spec says the model takes them (`sam_jax.data.preprocess.volume_slices`, the
    training cache's own preparation)."""
    prepared = volume_slices(case.images, case.seg, spec.modalities, spec.normalisation, spec.crop_to_brain)
    tumour = None if prepared.labels is None else whole_tumour(prepared.labels)
    return CaseVolume(case, prepared.images, tumour, prepared.box)
