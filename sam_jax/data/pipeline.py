"""The grain input pipeline over a preprocessing cache: an index of (case, slice) pairs chosen by the slice policy,
seeded shuffle (reshuffled each epoch), batching of indices, then one seeded random map that reads a whole batch from
the memory-mapped cache into preallocated arrays and draws the clicks. Elements are dicts of NumPy arrays:
`image` float32 (B, Z, S, S, C), `mask` uint8 (B, Z, S, S) whole tumour, `valid_hw` int32 (B, 2), `point_coords`
float32 (B, Z, 1, 2) in SAM's (x, y) = (column, row) pixel order, `point_labels` int32 (B, Z, 1) (1 positive,
0 negative, -1 no click), `case_index` int32 (B,) into `cache.case_ids`, `slice_index` int32 (B,) the volume's axial
index of the stack's centre slice (position Z // 2); with box prompts also `boxes` float32 (B, Z, 4), each slice's
tumour box (x0, y0, x1, y1) in the same pixels (`sam_jax.data.boxes`), and `has_box` bool (B, Z), False on a slice
without tumour. A slice's row is voxel axis Y and its column voxel axis X (see
`sam_jax.data.cache`); a cropped slice sits top-left in the S x S canvas, `valid_hw` giving its extent; stack slices
beyond the volume are zero with no click. The host ships these small native-size slices: resizing to the model's
input size (1024 in the paper) happens on the accelerator inside the jitted step, which keeps host work and
host-to-device traffic ~18x smaller than shipping 1024^2 images.

In a run of several processes (`shard`, e.g. `grain.sharding.ShardByJaxProcess()`), every process walks the same
index stream, batched at the global batch size, and loads only its contiguous block of each batch's rows (process p
of n: rows [p·B/n, (p+1)·B/n)), the rows its devices hold. Clicks and boxes are still drawn for every row of the
batch, in order, from the masks (cheap beside the images): a sample's prompt, like its place in the batch, does not
depend on how many processes share the batch, so n processes train exactly what one process over the same devices
does."""

from __future__ import annotations

import functools
import os

import grain
import numpy as np
from absl import flags

from sam_jax.data.boxes import BOX_SHIFT, PROMPTS, slice_box
from sam_jax.data.cache import Cache
from sam_jax.data.clicks import CLICK_POLICIES, NO_CLICK, slice_click
from sam_jax.data.domains import MODALITIES, whole_tumour
from sam_jax.processes import end_with

SLICE_POLICIES = ("all", "tumour", "tumour_plus")


def slice_table(
    cache: Cache, case_ids, slice_policy: str = "all", empty_fraction: float = 0.1, seed: int = 0
) -> np.ndarray:
    """(N, 2) int32 rows (index into cache.case_ids, stored slice) chosen by the policy: every slice, slices with
    tumour, or slices with tumour plus `empty_fraction` of the tumour-free slices that show brain (a fixed seeded draw
    per case)."""
    if slice_policy not in SLICE_POLICIES:
        raise ValueError(f"unknown slice policy {slice_policy!r}; expected one of {SLICE_POLICIES}")
    position = {c: i for i, c in enumerate(cache.case_ids)}
    if unknown := [c for c in case_ids if c not in position]:
        raise KeyError(f"cases not in the cache {cache.cache_dir}: {unknown[:5]}")
    rng = np.random.default_rng(seed)
    rows = []
    for case_id in case_ids:
        tumour = cache.tumour_area(case_id) > 0
        if slice_policy == "all":
            keep = np.ones_like(tumour)
        else:
            keep = tumour.copy()
            if slice_policy == "tumour_plus":
                empty = np.flatnonzero(~tumour & (cache.brain_area(case_id) > 0))
                keep[rng.choice(empty, size=int(round(empty_fraction * empty.size)), replace=False)] = True
        slices = np.flatnonzero(keep)
        rows.append(np.stack([np.full_like(slices, position[case_id]), slices], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 2), np.int32)


class LoadBatch(grain.transforms.RandomMap):
    """Reads a batch of (case index, slice) rows from the cache and draws one click per slice, and with `prompt`
    box or both one box per slice after it (each side widened by a random 0…`box_shift` pixels; 0: the tight box).
    Memory maps open lazily per process, so the transform pickles cheaply into grain's worker processes."""

    def __init__(
        self,
        cache: Cache,
        z: int,
        modalities,
        click_policy: str,
        shard: grain.sharding.ShardOptions = grain.sharding.NoSharding(),
        prompt: str = "click",
        box_shift: int = BOX_SHIFT,
    ):
        if prompt not in PROMPTS:
            raise ValueError(f"unknown prompt {prompt!r}; expected one of {PROMPTS}")
        if click_policy not in CLICK_POLICIES:
            raise ValueError(f"unknown click policy {click_policy!r}; expected one of {CLICK_POLICIES}")
        if unknown := [m for m in modalities if m not in MODALITIES]:
            raise ValueError(f"unknown modalities {unknown}; expected names from {MODALITIES}")
        if z < 1:
            raise ValueError(f"z must be >= 1, got {z}")
        self.cache = cache
        self.z = z
        self.channels = [MODALITIES.index(m) for m in modalities]
        self.all_channels = self.channels == list(range(len(MODALITIES)))
        self.click_policy = click_policy
        self.boxes, self.box_shift = prompt != "click", box_shift
        self.canvas = cache.canvas_size
        self.shard = (shard.shard_index, shard.shard_count)
        self._arrays = {}

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}

    def _case(self, case_index: int):
        if case_index not in self._arrays:
            case_id = self.cache.case_ids[case_index]
            self._arrays[case_index] = (
                self.cache.image(case_id),
                self.cache.labels(case_id),
                self.cache.packed_brain(case_id),
                self.cache.slice_hw(case_id),
                self.cache.first_slice(case_id),
                np.float32(self.cache.intensity_scale(case_id)),
            )
        return self._arrays[case_index]

    def block(self, rows: int) -> tuple[int, int]:
        """[start, stop) of a batch of `rows` rows this shard loads."""
        index, count = self.shard
        if rows % count:
            raise ValueError(f"a batch of {rows} rows does not split over {count} shards")
        return index * rows // count, (index + 1) * rows // count

    def random_map(self, rows: np.ndarray, rng: np.random.Generator) -> dict:
        rows = np.asarray(rows).reshape(-1, 2)
        start, stop = self.block(len(rows))
        b, z, s, c = stop - start, self.z, self.canvas, len(self.channels)
        out = dict(
            image=np.zeros((b, z, s, s, c), np.float32),
            mask=np.zeros((b, z, s, s), np.uint8),
            valid_hw=np.zeros((b, 2), np.int32),
            point_coords=np.zeros((b, z, 1, 2), np.float32),
            point_labels=np.full((b, z, 1), NO_CLICK, np.int32),
            case_index=rows[start:stop, 0].astype(np.int32),
            slice_index=np.zeros(b, np.int32),
        )
        if self.boxes:
            out.update(boxes=np.zeros((b, z, 4), np.float32), has_box=np.zeros((b, z), bool))
        for row, (case_index, centre) in enumerate(rows):
            image, labels, packed_brain, (h, w), first, scale = self._case(int(case_index))
            loads = start <= row < stop  # other rows: their clicks only, which keeps the random stream in step
            i = row - start
            if loads:
                out["valid_hw"][i] = h, w
                out["slice_index"][i] = first + centre
            for t in range(z):
                k = centre - z // 2 + t
                if not 0 <= k < len(image):
                    continue
                tumour = whole_tumour(labels[k])
                if loads:
                    source = image[k] if self.all_channels else image[k][..., self.channels]
                    np.multiply(source, scale, out=out["image"][i, t, :h, :w])
                    out["mask"][i, t, :h, :w] = tumour
                brain = None
                if self.click_policy == "negative_on_empty" and not tumour.any():
                    brain = np.unpackbits(packed_brain[k], axis=-1, count=w).astype(bool)
                point, label = slice_click(tumour, rng, self.click_policy, brain)
                if loads:
                    out["point_coords"][i, t, 0] = point
                    out["point_labels"][i, t, 0] = label
                if self.boxes:
                    box, has_box = slice_box(tumour, rng, self.box_shift)
                    if loads:
                        out["boxes"][i, t], out["has_box"][i, t] = box, has_box
        return out


def spaced_slices(n: int, rng: np.random.Generator, k: int, spacing: int = 10) -> np.ndarray:
    """The original code's `SelectEquiSlices` (k = 4, s = 10), in ascending order: a random slice i, always in the
    set, with companions s apart: normally i − s, i + s, …, i + (k − 2)s. Near the first slice (i ≤ 2s) the set moves
    all above i when i − s ≤ 0; elsewhere, when its highest reaches the last slice (≥ n − 1), all but one below i, or
    all below when i + s ≥ n − 1 too. These are the original's tests, off by one (a companion on the first or last
    slice still moves the set); other k extend them. The original fails or wraps round when a volume is shorter than
    the set (n < 41 at k = 4); here the indices are clamped to the volume. Order does not matter: a step's loss is a
    mean over its slices, and SAM's prompt tokens carry no order."""
    i = int(rng.integers(n))
    if i - 2 * spacing <= 0:
        below = 0 if i - spacing <= 0 else 1
    elif i + spacing * (k - 2) >= n - 1:
        below = k - 1 if i + spacing >= n - 1 else k - 2
    else:
        below = 1
    below = max(0, min(below, k - 1))
    return np.clip(i + spacing * (np.arange(k) - below), 0, n - 1)


class LoadVolume(grain.transforms.RandomMap):
    """One case per element (rows of the case table) → a batch of `k` of its slices chosen by `spaced_slices`, read
    by `LoadBatch`: the original code's volume batch, one optimiser step per volume."""

    def __init__(self, cache: Cache, k: int, load: LoadBatch):
        self.cache, self.k, self.load = cache, k, load

    def random_map(self, rows: np.ndarray, rng: np.random.Generator) -> dict:
        case_index = int(np.asarray(rows).reshape(-1, 2)[0, 0])
        n = len(self.cache.tumour_area(self.cache.case_ids[case_index]))
        slices = spaced_slices(n, rng, self.k)
        return self.load.random_map(np.stack([np.full(self.k, case_index), slices], axis=1), rng)


def select_slices(
    cache: Cache,
    case_ids,
    slice_policy: str = "all",
    empty_fraction: float = 0.1,
    click_policy: str = "negative_on_empty",
    seed: int = 0,
) -> np.ndarray:
    """The (case index, slice) rows one epoch visits once each: `slice_table`'s choice, less the tumour-free centre
    slices under 'skip_empty' (so every element has a clicked centre slice)."""
    table = slice_table(cache, case_ids, slice_policy, empty_fraction, seed)
    if click_policy == "skip_empty" and len(table):
        table = table[np.array([cache.tumour_area(cache.case_ids[c])[k] > 0 for c, k in table], bool)]
    if len(table) == 0:
        raise ValueError(f"no slices selected from {len(case_ids)} cases with slice_policy={slice_policy!r}")
    return table


def make_dataset(
    cache: Cache,
    case_ids,
    *,
    z: int = 1,
    slice_policy: str = "all",
    empty_fraction: float = 0.1,
    click_policy: str = "negative_on_empty",
    modalities=MODALITIES,
    batch_size: int = 8,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = False,
    volume_batch: int = 0,
    shard: grain.sharding.ShardOptions = grain.sharding.NoSharding(),
    pad_remainder: bool = False,
    prompt: str = "click",
    box_shift: int = BOX_SHIFT,
) -> grain.MapDataset:
    """A batched `grain.MapDataset` of slice stacks of `case_ids` (see the module docstring for the elements);
    `num_epochs=None` repeats forever (one epoch is `select_slices`' rows). Deterministic given `seed`; pass it to
    `make_iterator` to prefetch. `volume_batch` k > 0: each element is instead one case's k spaced slices
    (`spaced_slices`), one epoch every case once (`batch_size` must be 1). `shard`: this process's block of every
    batch (see the module docstring); `pad_remainder`: fill the last batch of an epoch with copies of the last row,
    so that it splits like the others (the caller drops them). `prompt`, `box_shift`: see `LoadBatch`."""
    load = LoadBatch(cache, z, tuple(modalities), click_policy, shard, prompt, box_shift)
    if volume_batch:
        if batch_size != 1:
            raise ValueError(f"a volume batch is one case per step: batch_size must be 1, not {batch_size}")
        position = {c: i for i, c in enumerate(cache.case_ids)}
        cases = np.array([[position[c], 0] for c in case_ids], np.int32).reshape(-1, 2)
        dataset = grain.MapDataset.source(cases)
        dataset = (dataset.shuffle(seed=seed) if shuffle else dataset).repeat(num_epochs).batch(1, drop_remainder=True)
        return dataset.random_map(LoadVolume(cache, volume_batch, load), seed=seed)
    table = select_slices(cache, case_ids, slice_policy, empty_fraction, click_policy, seed)
    if pad_remainder and len(table) % batch_size:
        table = np.concatenate([table, np.repeat(table[-1:], batch_size - len(table) % batch_size, axis=0)])
    dataset = grain.MapDataset.source(table)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.random_map(load, seed=seed)


def make_iterator(
    dataset: grain.MapDataset, *, num_workers: int = 0, num_threads: int = 2, prefetch: int = 4
) -> grain.DatasetIterator:
    """An iterator that prefetches batches (threads, plus `num_workers` processes when > 0); its
    `get_state()`/`set_state()` resume exactly."""
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags, which a non-absl program never parses
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=functools.partial(end_with, os.getpid()),
        )
    return iter(iter_dataset)
