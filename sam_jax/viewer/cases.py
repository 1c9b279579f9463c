"""The cases the viewer serves: those found under its data directory, by id only (a request names a case id from
that list, never a path, so nothing outside the directory can be reached). An opened case is read, prepared as the
model takes it, and its slice embeddings are computed in a background thread. The store alone holds opened cases:
the last `keep` used, shared by every tab on them; a tab borrows its case for each request, and one whose case was
dropped meanwhile reads it again, so memory holds `keep` cases however many tabs are open."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np

from sam_jax.data import find_cases, load_case
from sam_jax.data.brats import Case, CaseFiles
from sam_jax.data.clicks import POSITIVE
from sam_jax.data.domains import MODALITIES
from sam_jax.evaluation.propagation import segment_slice
from sam_jax.evaluation.slice_embeddings import SliceEmbeddings
from sam_jax.evaluation.volume import CaseVolume, prepare_volume
from sam_jax.viewer.errors import NotFound
from sam_jax.viewer.planes import default_window, value_range


class OpenCase:
    """A case in memory: its images, the model's volume, the embeddings filling in the background."""

    def __init__(self, case: Case, volume: CaseVolume, embeddings: SliceEmbeddings, warm_clicks: int = 0):
        self.case, self.volume, self.embeddings, self.warm_clicks = case, volume, embeddings, warm_clicks
        self.warmed = warm_clicks == 0
        self.tumour = case.whole_tumour if case.seg is not None else None
        self.ranges = {m: value_range(case.images[m]) for m in MODALITIES}
        self.stop = threading.Event()
        self.background_error: str | None = None
        self._thread = threading.Thread(target=self._precompute, name=f"embed-{case.case_id}", daemon=True)
        self._thread.start()

    def _precompute(self):
        try:
            middle = len(self.embeddings) // 2
            self.embeddings.precompute(first=middle, stop=self.stop, batches=1)
            self._warm_decoder(middle)
            self.embeddings.precompute(first=middle, stop=self.stop)
        except Exception as e:  # shown in the page; clicks still compute their slice on demand
            self.background_error = f"{type(e).__name__}: {e}"

    def _warm_decoder(self, k: int):
        """Decode prompts of 1…warm_clicks clicks once, and one of a box (a drag; propagation by boxes): each prompt
        shape compiles the decoder anew (a jitted shape), which would otherwise delay the click or box that first
        reaches it by seconds."""
        hw = self.volume.slices.shape[1:3]
        centre = np.array([[hw[1] / 2, hw[0] / 2]], np.float32)
        prompts = [(np.tile(centre, (n, 1)), [POSITIVE] * n, None) for n in range(1, self.warm_clicks + 1)]
        if prompts:
            prompts.append((None, None, np.array([0, 0, hw[1] - 1, hw[0] - 1], np.float32)))
        for points, labels, box in prompts:
            if self.stop.is_set():
                return
            segment_slice(self.embeddings.segmenter, self.embeddings, k, points, labels, hw, box)
        self.warmed = True

    def info(self) -> dict:
        (x0, x1), (y0, y1), (z0, z1) = self.volume.box
        return dict(
            case=self.case.case_id,
            domain=self.case.files.domain,
            shape=list(self.volume.shape),
            has_seg=self.tumour is not None,
            modalities=list(MODALITIES),
            ranges={m: list(r) for m, r in self.ranges.items()},
            windows={m: list(default_window(self.case.images[m])) for m in MODALITIES},
            slices=[z0, z1],
            box=[[x0, x1], [y0, y1], [z0, z1]],
            spacing=list(self.case.spacing),
        )

    def progress(self) -> dict:
        embedded, error = self.embeddings.computed, self.background_error
        if error is None and self.stop.is_set() and not (embedded == len(self.embeddings) and self.warmed):
            error = "stopped: other cases opened since took its place in memory (clicks still work, slower)"
        return dict(embedded=embedded, slices=len(self.embeddings), warmed=self.warmed, error=error)


class CaseStore:
    def __init__(self, data_dir: str | Path, segmenter, spec, keep: int = 2, warm_clicks: int = 4):
        self.data_dir = Path(data_dir)
        self.segmenter, self.spec, self.keep, self.warm_clicks = segmenter, spec, keep, warm_clicks
        self.files: dict[str, CaseFiles] = {f.case_id: f for f in find_cases(self.data_dir)}
        self._open: collections.OrderedDict[str, OpenCase] = collections.OrderedDict()
        self._lock = threading.Lock()

    def listing(self) -> list[dict]:
        return [dict(case=f.case_id, domain=f.domain, has_seg=f.seg is not None) for f in self.files.values()]

    def open(self, case_id: str) -> OpenCase:
        """The case, read and prepared unless in memory; `BadCaseError`/`CaseError` for a case that cannot be. The
        caller holds it for one request only: the store decides how long it stays."""
        if case_id not in self.files:
            raise NotFound(f"no case {case_id!r} in the viewer's data directory")
        with self._lock:  # one read at a time: two tabs opening the same case share it
            if case_id in self._open:
                self._open.move_to_end(case_id)
                return self._open[case_id]
            while len(self._open) >= self.keep:  # room first: never `keep` + 1 cases at once
                _, evicted = self._open.popitem(last=False)
                evicted.stop.set()  # its background work stops between batches; then nothing holds it
            case = load_case(self.files[case_id], require_seg=False)  # clicks need none; Dice only with one
            volume = prepare_volume(case, self.spec)
            opened = OpenCase(case, volume, SliceEmbeddings(self.segmenter, volume.slices), self.warm_clicks)
            self._open[case_id] = opened
            return opened

    def in_memory(self, case_id: str) -> OpenCase | None:
        """The case if in memory, without reading it."""
        with self._lock:
            return self._open.get(case_id)

    def close(self):
        with self._lock:
            for opened in self._open.values():
                opened.stop.set()


def case_folder(case: Case) -> Path:
    return next(iter(case.files.images.values())).parent


def mask_name(case: Case) -> str:
    """The saved mask's file name: not a BraTS modality name, so `find_cases` never takes it for one."""
    return f"{case.case_id}-viewer_mask.nii.gz"
