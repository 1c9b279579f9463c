"""A whole-tumour mask built by hand, click by click or box by box, with the segmenter and propagation of
`eval.predict`.

Each axial slice of the model's volume has its own prompt: at most one box, then clicks (positive or negative). A
box starts its slice's prompt anew; the prompt propagation gave a slice it reached is a positive click, or a box
when the walk went by boxes. The slice's mask is the decoder's answer to its whole prompt, so more clicks edit it.
`propagate` walks up and down from a slice's mask as `propagation` does, by boxes when that slice's prompt has one
(`eval.predict --boxes`), by clicks otherwise; slices the user prompted keep their own mask and the walk goes on from
it. The last `UNDO_STEPS` changes can be undone: each kept state holds the masks its change made, so the history
of a long session stays bounded (at most one propagation's masks per step).

The editor holds its edits only: it asks `load` for the case's volume and embeddings at each change, so the caller
may drop them between changes (the viewer keeps a few cases in memory for any number of tabs). Clicks and boxes are
volume voxels as `eval.predict --clicks/--boxes` take them; masks leave on the case's native grid."""

from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

from sam_jax.data.clicks import NEGATIVE, POSITIVE
from sam_jax.evaluation.errors import ClickError
from sam_jax.evaluation.prediction import slice_boxes, slice_clicks, sorted_box
from sam_jax.evaluation.propagation import segment_slice, walk
from sam_jax.evaluation.volume import CaseVolume

UNDO_STEPS = 50  # states kept for undo per editor (3D Slicer keeps a count of steps too)


@dataclasses.dataclass(frozen=True)
class Click:
    x: float  # slice pixels (column, row) of the model's cropped slice
    y: float
    label: int
    by_user: bool = True  # False: propagation's click at the interior-most point of the previous slice's mask


@dataclasses.dataclass(frozen=True)
class Box:
    corners: tuple  # (x0, y0, x1, y1) slice pixels of the model's cropped slice, inclusive
    by_user: bool = True  # False: propagation's box around the previous slice's mask


@dataclasses.dataclass(frozen=True)
class _State:
    prompts: dict  # slice → tuple: a Box or none, then Clicks
    masks: dict  # slice → (H, W) bool; slices without an entry are empty
    counts: dict  # slice → (mask voxels, voxels also in the ground truth): the Dice without a pass over the volume


class MaskEditor:
    def __init__(self, segmenter, load):
        """`load()`: the case, anything with `.volume` (a `CaseVolume`) and `.embeddings` of its slices; the same
        case each time, possibly read again."""
        self.segmenter, self._load = segmenter, load
        volume: CaseVolume = load().volume
        self.hw = volume.slices.shape[1:3]
        self.crop, self.shape, self.case_id = volume.box, volume.shape, volume.case.case_id
        self._state = _State({}, {}, {})
        # The ground truth's size on the whole native grid: the mask is empty outside the model's slices.
        self._tumour_voxels = None if volume.case.seg is None else int(np.count_nonzero(volume.case.seg))
        self._history: collections.deque[_State] = collections.deque(maxlen=UNDO_STEPS)  # the oldest drops out
        self._lock = threading.Lock()  # one change at a time, whatever the number of callers
        self._native = None  # (state, its native mask)

    def _slice_mask(self, embeddings, k: int, prompt) -> np.ndarray:
        clicks = [c for c in prompt if isinstance(c, Click)]
        box = next((b.corners for b in prompt if isinstance(b, Box)), None)
        points, labels = ([(c.x, c.y) for c in clicks], [c.label for c in clicks]) if clicks else (None, None)
        return segment_slice(self.segmenter, embeddings, k, points, labels, self.hw, box) > 0

    def _commit(self, prompts: dict, masks: dict, tumour=None) -> None:
        """The new state; `tumour` (Z', H, W) counts the masks that changed (None: the case has no ground truth, or
        no mask changed)."""
        old = self._state
        counts = {
            k: old.counts[k] if old.masks.get(k) is mask else _count(mask, None if tumour is None else tumour[k])
            for k, mask in masks.items()
        }
        self._history.append(old)
        self._state = _State(prompts, masks, counts)

    def to_slice(self, z: int) -> int:
        """Native axial index → slice of the model's volume."""
        (z0, z1) = self.crop[2]
        if not z0 <= z < z1:
            raise ClickError(f"slice {z} lies outside the model's slices {z0}–{z1 - 1} of case {self.case_id}")
        return z - z0

    def _prompt_slice(self, case, k: int, prompt) -> np.ndarray:
        """Slice k's prompt replaced by `prompt` → its new mask."""
        mask = self._slice_mask(case.embeddings, k, prompt)
        self._commit({**self._state.prompts, k: prompt}, {**self._state.masks, k: mask}, case.volume.tumour)
        return mask

    def click(self, x: int, y: int, z: int, positive: bool = True) -> np.ndarray:
        """Add a click at voxel (x, y, z) to its slice's prompt → the slice's new (H, W) mask."""
        case = self._load()
        ((cx, cy, k),) = slice_clicks(case.volume, np.array([[x, y, z]]))
        with self._lock:
            added = Click(float(cx), float(cy), POSITIVE if positive else NEGATIVE)
            return self._prompt_slice(case, int(k), self._state.prompts.get(int(k), ()) + (added,))

    def box(self, x0: int, y0: int, x1: int, y1: int, z: int) -> np.ndarray:
        """Prompt axial slice z anew with the box of opposite voxel corners (x0, y0) and (x1, y1), inclusive, clipped
        to the model's crop as `eval.predict --boxes` clips it → the slice's new (H, W) mask. Clicks added after it
        refine it."""
        case = self._load()
        ((*corners, k),) = slice_boxes(case.volume, np.array([sorted_box((x0, y0, z), (x1, y1, z))]))
        with self._lock:
            return self._prompt_slice(case, int(k), (Box(tuple(float(c) for c in corners)),))

    def propagate(self, z: int) -> list[int]:
        """Extend slice z's mask up and down the volume, by boxes when its prompt has one → the slices changed."""
        k = self.to_slice(z)
        case = self._load()
        with self._lock:
            start = self._state.masks.get(k)
            if start is None or not start.any():
                raise ClickError(
                    f"slice {z} has no mask to propagate: click the tumour first (or drag a box around it)"
                )
            prompts, masks = dict(self._state.prompts), dict(self._state.masks)
            by_box = any(isinstance(p, Box) for p in prompts[k])
            edited = {
                j: masks.get(j, np.zeros(self.hw, bool))
                for j, prompt in prompts.items()
                if j != k and any(c.by_user for c in prompt)
            }
            changed = []
            for step in (1, -1):
                walked = walk(self.segmenter, case.embeddings, self.hw, k, start, step, edited, by_box=by_box)
                for j, prompt, logits in walked:
                    if prompt is not None:
                        given = Box(tuple(float(c) for c in prompt), by_user=False) if by_box else None
                        prompts[j] = (given or Click(float(prompt[0]), float(prompt[1]), POSITIVE, by_user=False),)
                        masks[j] = logits > 0
                        changed.append(j)
            self._commit(prompts, masks, case.volume.tumour)
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
        (x0, _), (y0, _), (z0, _) = self.crop
        return [
            dict(
                x=int(round(c.x) + x0),
                y=int(round(c.y) + y0),
                z=int(k + z0),
                positive=c.label == POSITIVE,
                by_user=c.by_user,
            )
            for k, prompt in sorted(self._state.prompts.items())
            for c in prompt
            if isinstance(c, Click)
        ]

    def boxes(self) -> list[dict]:
        """Every box as native voxels: x0, y0, x1, y1 (inclusive), z, by_user."""
        (x0, _), (y0, _), (z0, _) = self.crop
        return [
            dict(
                zip(("x0", "y0", "x1", "y1"), (int(round(v) + o) for v, o in zip(b.corners, (x0, y0, x0, y0)))),
                z=int(k + z0),
                by_user=b.by_user,
            )
            for k, prompt in sorted(self._state.prompts.items())
            for b in prompt
            if isinstance(b, Box)
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
            out = np.zeros(self.shape, bool)
            (x0, x1), (y0, y1), (z0, _) = self.crop
            for k, mask in state.masks.items():
                out[x0:x1, y0:y1, z0 + k] = mask.T
            self._native = (state, out)
        return self._native[1]


def _count(mask: np.ndarray, tumour: np.ndarray | None) -> tuple[int, int]:
    """(mask voxels, those also in the slice's `tumour`)."""
    overlap = 0 if tumour is None else int(np.count_nonzero(mask & tumour))
    return int(np.count_nonzero(mask)), overlap
