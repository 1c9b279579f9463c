"""The encoder's embeddings of one volume's slices, each computed once and kept: on first use for the slice a click
needs, and ahead of time for the others by `precompute` (the viewer runs it in a background thread). The decoder
then reruns per prompt at a fraction of the encoder's cost.

Slices like an array along its first axis (`embeddings[k:k + 1]`), so `propagation` takes it in place of the
encoder's output for the whole volume. Thread-safe: a slice asked for while the background fills others is
computed at once; a slice computed twice by a race is stored once."""

from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np


class SliceEmbeddings:
    def __init__(self, segmenter, slices: np.ndarray):
        self.segmenter, self.slices = segmenter, slices
        self._done: dict[int, object] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def computed(self) -> int:
        return len(self._done)

    def _store(self, which, embeddings) -> None:
        with self._lock:
            for i, k in enumerate(which):
                self._done.setdefault(int(k), embeddings[i : i + 1])

    def slice_embedding(self, k: int):
        """(1, g, g, D) embedding of slice k, computed now if it is not yet."""
        if not 0 <= k < len(self):
            raise IndexError(f"slice {k} outside 0–{len(self) - 1}")
        if k not in self._done:
            self._store([k], self.segmenter.encode(self.slices, which=[k]))
        return self._done[k]

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("SliceEmbeddings takes slices: embeddings[k:k + 1]")
        return jnp.concatenate([self.slice_embedding(k) for k in range(*index.indices(len(self)))])

    def precompute(
        self, first: int | None = None, stop: threading.Event | None = None, batches: int | None = None
    ) -> None:
        """Compute every missing slice (or `batches` batches of them), nearest to slice `first` (default: the middle)
        first; `stop` ends it between batches. Batches are always full (a short last one is topped up with slices
        already done, then kept as they were), so the encoder compiles once for that size."""
        first = len(self) // 2 if first is None else first
        order = sorted(range(len(self)), key=lambda k: (abs(k - first), k))
        batch = min(self.segmenter.batch_size, len(self))
        done = 0
        while not (stop is not None and stop.is_set()) and (batches is None or done < batches):
            missing = [k for k in order if k not in self._done][:batch]
            if not missing:
                return
            which = missing + [k for k in order if k not in missing][: batch - len(missing)]
            embeddings = self.segmenter.encode(self.slices, which=which)
            embeddings.block_until_ready()
            self._store(which, embeddings)
            done += 1
