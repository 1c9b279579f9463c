"""A whole-tumour mask built by hand, click by click, with the segmenter and propagation of `eval.predict`.

Each axial slice of the model's volume has its own prompt: the user's clicks on it (positive or negative), after
the positive click that propagation gave it if it was reached by a walk. The slice's mask is the decoder's answer to
its whole prompt, so more clicks edit it. `propagate` walks up and down from a slice's mask as `propagation` does;
slices the user clicked keep their own mask and the walk goes on from it. Every change can be undone.

Clicks are volume voxels (x, y, z) as `eval.predict --clicks` takes them; masks leave on the case's native grid."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from sam_jax.data.clicks import NEGATIVE, POSITIVE
from sam_jax.evaluation.errors import ClickError
from sam_jax.evaluation.prediction import slice_clicks
from sam_jax.evaluation.propagation import segment_slice, walk
from sam_jax.evaluation.volume import CaseVolume


@dataclasses.dataclass(frozen=True)
class Click:
    x: float  # slice pixels (column, row) of the model's cropped slice
    y: float
    label: int
    by_user: bool = True  # False: propagation's click at the interior-most point of the previous slice's mask


@dataclasses.dataclass(frozen=True)
class _State:
    prompts: dict  # slice → tuple of Clicks
    masks: dict  # slice → (H, W) bool; slices without an entry are empty
    counts: dict  # slice → (mask voxels, voxels also in the ground truth): the Dice without a pass over the volume


class MaskEditor:
    def __init__(self, segmenter, volume: CaseVolume, embeddings):
        self.segmenter, self.volume, self.embeddings = segmenter, volume, embeddings
        self.hw = volume.slices.shape[1:3]
        self._state = _State({}, {}, {})
        # The ground truth's size on the whole native grid: the mask is empty outside the model's slices.
        self._tumour_voxels = None if volume.case.seg is None else int(np.count_nonzero(volume.case.seg))
        self._history: list[_State] = []
        self._lock = threading.Lock()  # one change at a time, whatever the number of callers
        self._native = None  # (state, its native mask)

    def _slice_mask(self, k: int, prompt) -> np.ndarray:
        points = [(c.x, c.y) for c in prompt]
        return segment_slice(self.segmenter, self.embeddings, k, points, [c.label for c in prompt], self.hw) > 0

    def _commit(self, prompts: dict, masks: dict) -> None:
        old = self._state
        counts = {k: old.counts[k] if old.masks.get(k) is mask else self._count(k, mask) for k, mask in masks.items()}
        self._history.append(old)
        self._state = _State(prompts, masks, counts)

    def _count(self, k: int, mask: np.ndarray) -> tuple[int, int]:
        tumour = self.volume.tumour
        overlap = 0 if tumour is None else int(np.count_nonzero(mask & tumour[k]))
        return int(np.count_nonzero(mask)), overlap

    def to_slice(self, z: int) -> int:
        """Native axial index → slice of the model's volume."""
        (z0, z1) = self.volume.box[2]
        if not z0 <= z < z1:
            raise ClickError(
                f"slice {z} lies outside the model's slices {z0}–{z1 - 1} of case {self.volume.case.case_id}"
            )
        return z - z0

    def click(self, x: int, y: int, z: int, positive: bool = True) -> np.ndarray:
        """Add a click at voxel (x, y, z) to its slice's prompt → the slice's new (H, W) mask."""
        ((cx, cy, k),) = slice_clicks(self.volume, np.array([[x, y, z]]))
        cx, cy, k = float(cx), float(cy), int(k)
        with self._lock:
            prompt = self._state.prompts.get(k, ()) + (Click(cx, cy, POSITIVE if positive else NEGATIVE),)
            mask = self._slice_mask(k, prompt)
            self._commit({**self._state.prompts, k: prompt}, {**self._state.masks, k: mask})
        return mask

    def propagate(self, z: int) -> list[int]:
        """Extend slice z's mask up and down the volume → the slices changed."""
        k = self.to_slice(z)
        with self._lock:
            start = self._state.masks.get(k)
            if start is None or not start.any():
                raise ClickError(f"slice {z} has no mask to propagate: click the tumour first")
            prompts, masks = dict(self._state.prompts), dict(self._state.masks)
            edited = {
                j: masks.get(j, np.zeros(self.hw, bool))
                for j, prompt in prompts.items()
                if j != k and any(c.by_user for c in prompt)
            }
            changed = []
            for step in (1, -1):
                for j, point, logits in walk(self.segmenter, self.embeddings, self.hw, k, start, step, edited):
                    if point is not None:
                        prompts[j] = (Click(float(point[0]), float(point[1]), POSITIVE, by_user=False),)
                        masks[j] = logits > 0
                        changed.append(j)
            self._commit(prompts, masks)
        return sorted(changed)

    def clear_slice(self, z: int) -> None:
        k = self.to_slice(z)
        with self._lock:
            prompts, masks = dict(self._state.prompts), dict(self._state.masks)
            prompts.pop(k, None), masks.pop(k, None)
            self._commit(prompts, masks)

    def clear(self) -> None:
        with self._lock:
            self._commit({}, {})

    def undo(self) -> bool:
        """Back to the state before the last change; False when there is nothing to undo."""
        with self._lock:
            if not self._history:
                return False
            self._state = self._history.pop()
            return True

    def clicks(self) -> list[dict]:
        """Every click as native voxels: x, y, z, positive, by_user."""
        (x0, _), (y0, _), (z0, _) = self.volume.box
        state = self._state
        return [
            dict(
                x=int(round(c.x) + x0),
                y=int(round(c.y) + y0),
                z=int(k + z0),
                positive=c.label == POSITIVE,
                by_user=c.by_user,
            )
            for k, prompt in sorted(state.prompts.items())
            for c in prompt
        ]

    def voxels(self) -> int:
        return sum(n for n, _ in self._state.counts.values())

    def dice(self) -> float | None:
        """Volumetric Dice against the case's whole tumour (`sam_jax.metrics.dice_3d`'s rule: 1 if both are empty);
        None without a segmentation."""
        if self._tumour_voxels is None:
            return None
        total = self.voxels() + self._tumour_voxels
        return 1.0 if total == 0 else 2.0 * sum(o for _, o in self._state.counts.values()) / total

    def native_mask(self) -> np.ndarray:
        """(X, Y, Z) bool on the case's native grid, as `CaseVolume.to_native` places slices (kept until the next
        change: every view asks for it)."""
        state = self._state
        if self._native is None or self._native[0] is not state:
            out = np.zeros(self.volume.shape, bool)
            (x0, x1), (y0, y1), (z0, _) = self.volume.box
            for k, mask in state.masks.items():
                out[x0:x1, y0:y1, z0 + k] = mask.T
            self._native = (state, out)
        return self._native[1]
