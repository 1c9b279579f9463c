"""The preprocessing cache: each case normalised once, optionally cropped to its brain box, and stored as axial slices
in memory-mappable .npy files, so training reads a slice for the cost of a page copy.

Layout of a cache (one folder per preprocessing under the cache root, `sam_jax.data.cache_layout`):
`cases/<case id>/image.npy` (Z, H, W, 4) in MODALITIES order, int16 holding
intensity / `intensity_scale` (z-scores at a 2^-10 step; raw intensities at step 1 when they are int16-representable
integers, else float32 with scale 1), because int16 converts to float32 ~20x faster than float16 on the host;
`labels.npy` (Z, H, W) uint8 BraTS labels (0 where a case has no segmentation); `brain.npy` (Z, H, ceil(W / 8))
the brain mask packed along rows (np.packbits), for negative clicks; `meta.json` (source fingerprint, settings,
geometry, scale, per-slice tumour and brain areas); `manifest.json` indexes the cases; the root's `split.json` holds
the split.
Slices are prepared by `sam_jax.data.preprocess.volume_slices` (evaluation's preparation too): stored slice k' is
volume slice `first_slice + k'` over the crop box, rows along voxel Y, so a click (x, y) is voxel (x0 + x, y0 + y).
A case directory only appears complete (written under `tmp/`, then renamed), so an interrupted build never leaves a
case that later reads as valid; a rebuild redoes only cases whose source files (size, mtime) or settings changed.
Cases are built in parallel worker processes (from a fork server, not forked from the caller, which may run JAX's
threads); a worker writes a case exactly as a serial build does. A full disk stops the build with a `CacheError`
naming the cache and the bytes needed; the half-written case is removed, cases already built are kept."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import types
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import nibabel as nib
import numpy as np

from sam_jax.data import split as split_lib
from sam_jax.data.brats import CaseFiles, find_cases, load_case
from sam_jax.data.cache_layout import MANIFEST, adopt_old_layout, build_lock, preprocessing_name
from sam_jax.data.domains import MODALITIES, files_like, whole_tumour
from sam_jax.data.errors import BadCaseError, CacheError, CaseFault
from sam_jax.data.preprocess import TRAINING_NORMALISATIONS, volume_slices
from sam_jax.processes import end_with
from sam_jax.progress import progress_bar

FORMAT_VERSION = 2
DEFAULT_NAME = ".sam_jax_cache"
log = logging.getLogger(__name__)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NPY_HEADER_BYTES = 128


def _fingerprint(case_files: CaseFiles) -> list:
    paths = list(case_files.images.values()) + ([case_files.seg] if case_files.seg else [])
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)]


def _write_json(path: Path, payload) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        temporary.write_text(json.dumps(payload, indent=1))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # e.g. a full disk: leave no half-written file behind
        raise


def _disk_full_error(cache_dir: Path, what: str, needed: int) -> CacheError:
    free = shutil.disk_usage(cache_dir).free
    return CacheError(
        f"{cache_dir}: the disk is full: {what} needs {needed:,} bytes and {free:,} bytes are free there. Free some "
        "space (or choose another cache directory) and rerun: cases already built are kept and the build resumes."
    )


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save's format in C order, written by `file.write`: numpy's own writer reports a short write (a full disk)
    as an OSError without errno, which would hide the cause."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, np.lib.format.header_data_from_array_1_0(array))
        file.write(array.data)


def _quantise(image: np.ndarray, normalisation: str) -> tuple[np.ndarray, float]:
    """(stored array, scale) with image ~= stored * scale; exact for raw integer intensities."""
    if normalisation == "zscore":
        scale = 2.0**-10
        stored = np.divide(image, scale)  # one temporary, rounded and clipped in place: a case is ~150 MB of float32
        np.rint(stored, out=stored)
        np.clip(stored, -32768, 32767, out=stored)
        return stored.astype(np.int16), scale
    if np.array_equal(image, np.rint(image)) and image.min() >= -32768 and image.max() <= 32767:
        return image.astype(np.int16), 1.0
    return image.astype(np.float32), 1.0


def _build_case(case_files: CaseFiles, target: Path, settings: dict, fingerprint: list) -> dict:
    start = time.perf_counter()
    case = load_case(case_files)
    prepared = volume_slices(case.images, case.seg, MODALITIES, settings["normalisation"], settings["crop_to_brain"])
    image, scale = _quantise(prepared.images, settings["normalisation"])
    brain_slices, box = prepared.brain, prepared.box
    labels = prepared.labels if prepared.labels is not None else np.zeros(brain_slices.shape, np.uint8)
    arrays = {"image.npy": image, "labels.npy": labels, "brain.npy": np.packbits(brain_slices, axis=-1)}
    meta = dict(
        case_id=case_files.case_id,
        domain=case_files.domain,
        patient_id=case_files.patient_id,
        fingerprint=fingerprint,
        settings=settings,
        volume_shape=list(case.images[MODALITIES[0]].shape),
        box=[list(b) for b in box],
        has_seg=case.seg is not None,
        tumour_area=whole_tumour(labels).sum(axis=(1, 2)).tolist(),
        brain_area=brain_slices.sum(axis=(1, 2)).tolist(),
        intensity_scale=scale,
    )
    temporary = target.parent.parent / "tmp" / f"{case_files.case_id}.{uuid.uuid4().hex}"
    try:
        temporary.mkdir(parents=True)
        for name, array in arrays.items():
            _save_npy(temporary / name, array)
        meta["build_seconds"] = round(time.perf_counter() - start, 3)
        _write_json(temporary / "meta.json", meta)
        _install(temporary, target)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)  # nothing half-written stays behind
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            needed = sum(a.nbytes + _NPY_HEADER_BYTES for a in arrays.values()) + len(json.dumps(meta, indent=1))
            raise _disk_full_error(target.parent.parent, f"case {case_files.case_id}", needed) from error
        raise
    return meta


def _install(temporary: Path, target: Path) -> None:
    """Move a finished case into place; an older version of it disappears only once the new one is there."""
    if target.exists():
        stale = temporary.with_name(temporary.name + ".stale")
        os.replace(target, stale)
        os.replace(temporary, target)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, target)


@dataclasses.dataclass(frozen=True)
class _BadCase:
    """A BadCaseError as plain data: its constructor's arguments do not survive pickling out of a worker."""

    case_id: str
    faults: list[tuple[str, str]]

    def error(self) -> BadCaseError:
        return BadCaseError(self.case_id, [CaseFault(path, fault) for path, fault in self.faults])


def _build_in_worker(job: tuple) -> dict | _BadCase:
    try:
        return _build_case(*job)
    except BadCaseError as error:
        return _BadCase(error.case_id, [(str(f.path), f.fault) for f in error.faults])


def _outcomes(jobs: list[tuple], workers: int):
    """Yield (case id, meta or BadCaseError) as builds finish: in this process for one worker, else in a pool that
    is cancelled (running cases finish and stay cached) when the caller stops early."""
    if workers == 1:
        for job in jobs:
            try:
                yield job[0].case_id, _build_case(*job)
            except BadCaseError as error:
                yield job[0].case_id, error
        return
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=end_with, initargs=(os.getpid(),))
    try:
        with _main_module_hidden():  # the pool starts its workers as jobs are submitted
            futures = {pool.submit(_build_in_worker, job): job[0].case_id for job in jobs}
        for future in as_completed(futures):
            outcome = future.result()
            yield futures[future], outcome.error() if isinstance(outcome, _BadCase) else outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _main_module_hidden():
    """Workers started meanwhile do not import the caller's `__main__`. A forkserver or spawned worker imports it
    first thing, for functions pickled from it; ours live in this module, and an app's main (train.main) would load
    JAX, Flax and the rest into every worker: seconds of CPU and hundreds of MB each, for nothing."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one: its server, a fresh process, imports this module once, then every worker of
    this build or a later one forks from it ready to run (spawned workers would each pay the imports, seconds);
    spawn elsewhere. Never fork: the parent may run JAX's threads, whose locks a fork would copy held."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _worker_count(workers: int, jobs: int) -> int:
    if workers < 0:
        raise ValueError(f"workers {workers}: expected 0 (one per available CPU) or a positive number")
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(workers, jobs))  # a pool for a single case would only add its start-up time


def _build_all(jobs: list[tuple], workers: int, skip_bad_cases: bool, cache_dir: Path) -> dict:
    """{case id: meta or BadCaseError} for every job; the first bad case raises unless `skip_bad_cases`."""
    workers = _worker_count(workers, len(jobs))
    results, start = {}, time.perf_counter()
    with (
        progress_bar(total=len(jobs), unit="case", desc=f"caching {cache_dir.name}", disable=not jobs) as bar,
        contextlib.closing(_outcomes(jobs, workers)) as outcomes,
    ):
        try:
            for case_id, outcome in outcomes:
                if isinstance(outcome, BadCaseError) and not skip_bad_cases:
                    raise outcome
                results[case_id] = outcome
                bar.update()
        except BrokenProcessPool as error:
            raise CacheError(
                f"{cache_dir}: a worker process building the cache died (killed for memory? each holds one whole "
                f"case); rerun with fewer workers ({workers} now): cases already built are kept"
            ) from error
    if jobs:
        elapsed = time.perf_counter() - start
        seconds = [meta["build_seconds"] for meta in results.values() if isinstance(meta, dict)]
        log.info(
            "cache %s: built %d cases in %.1f s with %d workers (%.2f cases/s; %.2f s per case on average)",
            cache_dir,
            len(seconds),
            elapsed,
            workers,
            len(seconds) / elapsed,
            sum(seconds) / max(len(seconds), 1),
        )
    return results


def _estimated_bytes(case_files: CaseFiles) -> int:
    """A case's size in the cache when stored uncropped as int16, from one image header (0 if unreadable: the
    build reports why)."""
    path = next(iter(case_files.images.values()), None)
    try:
        x, y, z = nib.load(path).shape[:3]
    except (OSError, ValueError, TypeError, nib.filebasedimages.ImageFileError):
        return 0
    return x * y * z * (len(MODALITIES) * 2 + 1) + z * y * -(-x // 8)


def _warn_if_short_of_space(cache_dir: Path, jobs: list[tuple]) -> None:
    """A BraTS-scale build takes hours and ~80 MB a case: say at the start when the disk will not hold it."""
    needed, free = sum(_estimated_bytes(job[0]) for job in jobs), shutil.disk_usage(cache_dir).free
    if needed > free:
        log.warning(
            "cache %s: the %d cases to build need about %.1f GB and %.1f GB are free there; the build will "
            "stop when the disk is full (cases built by then are kept)",
            cache_dir,
            len(jobs),
            needed / 1e9,
            free / 1e9,
        )


# np.load reads a .npy header with ast.literal_eval, and CPython 3.11's AST constructor keeps one recursion count for
# the whole interpreter: the data pipeline's threads opening two cases at once stopped a training run with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). Opening is a header read and an
# mmap: one thread at a time costs nothing.
_OPENING = threading.Lock()


def _memory_map(path: Path) -> np.ndarray:
    with _OPENING:
        return np.load(path, mmap_mode="r")


@dataclasses.dataclass
class Cache:
    """An opened cache. Slices of case i are `image(case_id)[k]`; `canvas_size` S is the square every slice is padded
    into (top-left) by the pipeline: the largest in-plane volume size, 240 for BraTS, cropped or not."""

    cache_dir: Path
    settings: dict
    entries: dict[str, dict]
    skipped: dict[str, list[str]]

    @classmethod
    def open(cls, cache_dir: str | Path) -> "Cache":
        cache_dir = Path(cache_dir)
        manifest = _read_json(cache_dir / MANIFEST)
        if manifest is None or manifest.get("version") != FORMAT_VERSION:
            raise CacheError(f"{cache_dir}: no valid manifest.json (build it with build_cache)")
        entries = {cid: _read_json(cache_dir / "cases" / cid / "meta.json") for cid in manifest["cases"]}
        if missing := [cid for cid, meta in entries.items() if meta is None]:
            raise CacheError(f"{cache_dir}: cases listed in the manifest are missing: {missing[:5]}; rerun build_cache")
        if mixed := [cid for cid, meta in entries.items() if meta["settings"] != manifest["settings"]]:
            raise CacheError(
                f"{cache_dir}: cases {mixed[:5]} were built with other settings than the manifest's "
                "(an interrupted rebuild); rerun build_cache"
            )
        return cls(cache_dir, manifest["settings"], entries, manifest.get("skipped", {}))

    @property
    def case_ids(self) -> list[str]:
        return list(self.entries)

    @property
    def canvas_size(self) -> int:
        return max(max(m["volume_shape"][:2]) for m in self.entries.values())

    def domain(self, case_id: str) -> str:
        """Its domain code (`sam_jax.data.domains.DOMAINS`)."""
        return self.entries[case_id]["domain"]

    def num_slices(self, case_id: str) -> int:
        return len(self.entries[case_id]["tumour_area"])

    def tumour_area(self, case_id: str) -> np.ndarray:
        """Whole-tumour pixels per stored slice."""
        return np.asarray(self.entries[case_id]["tumour_area"], np.int64)

    def brain_area(self, case_id: str) -> np.ndarray:
        """Brain pixels per stored slice."""
        return np.asarray(self.entries[case_id]["brain_area"], np.int64)

    def first_slice(self, case_id: str) -> int:
        """Volume index of stored slice 0 (non-zero after a brain crop)."""
        return self.entries[case_id]["box"][2][0]

    def slice_hw(self, case_id: str) -> tuple[int, int]:
        """(rows, columns) of a stored slice = (Y extent, X extent)."""
        box = self.entries[case_id]["box"]
        return box[1][1] - box[1][0], box[0][1] - box[0][0]

    def image(self, case_id: str) -> np.ndarray:
        """(Z, H, W, 4) memory map of stored values (see `intensity_scale`), channels in MODALITIES order."""
        return _memory_map(self.cache_dir / "cases" / case_id / "image.npy")

    def intensity_scale(self, case_id: str) -> float:
        """Multiply stored image values by this to get intensities."""
        return self.entries[case_id]["intensity_scale"]

    def packed_brain(self, case_id: str) -> np.ndarray:
        """(Z, H, ceil(W / 8)) memory map of the brain mask; `np.unpackbits(m[k], axis=-1, count=W)` unpacks a slice."""
        return _memory_map(self.cache_dir / "cases" / case_id / "brain.npy")

    def labels(self, case_id: str) -> np.ndarray:
        """(Z, H, W) uint8 memory map of BraTS labels."""
        return _memory_map(self.cache_dir / "cases" / case_id / "labels.npy")

    def split(self) -> dict:
        """The saved split (at the cache root, the folder above) restricted to cached cases (skipped bad cases drop
        out)."""
        saved = split_lib.load_split(self.cache_dir.parent)
        return {
            **saved,
            "train": [c for c in saved["train"] if c in self.entries],
            "val": [c for c in saved["val"] if c in self.entries],
        }


def build_cache(
    data_dir: str | Path,
    cache_dir: str | Path,
    *,
    normalisation: str = "zscore",
    crop_to_brain: bool = False,
    skip_bad_cases: bool = False,
    domain: str | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.2,
    workers: int = 1,
) -> Cache:
    """Preprocess every case under `data_dir` into its preprocessing's folder under the cache root `cache_dir`
    (`cache_layout`; a no-op for cases already cached with the same sources) and write the patient-level split at
    the root on first use; returns the opened cache. Cases are built by `workers` processes (0: one per available
    CPU; 1: in this process); a second builder of the same folder waits for the first. A bad case raises
    `BadCaseError` (cases already built stay cached), or is logged and left out with `skip_bad_cases`; a full disk
    raises `CacheError`."""
    if normalisation not in TRAINING_NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; expected one of {TRAINING_NORMALISATIONS}")
    root = Path(cache_dir)
    found = find_cases(data_dir, domain)
    if not found:
        raise CacheError(f"{data_dir}: no cases found ({files_like()})")
    settings = _settings(normalisation, crop_to_brain)
    cache_dir = preprocessing_dir(root, normalisation, crop_to_brain, domain)
    with build_lock(cache_dir):
        adopt_old_layout(root, cache_dir, settings, domain)
        split_lib.ensure_split(
            root,
            {c.case_id: c.patient_id for c in found},
            {c.case_id: c.domain for c in found},
            split_seed,
            val_fraction,
        )
        _build_locked(data_dir, cache_dir, found, settings, domain, skip_bad_cases, workers)
    return Cache.open(cache_dir)


def preprocessing_dir(
    cache_dir: str | Path, normalisation: str = "zscore", crop_to_brain: bool = False, domain: str | None = None
) -> Path:
    """The folder under the cache root `cache_dir` that holds the cases of this preprocessing."""
    return Path(cache_dir) / preprocessing_name(_settings(normalisation, crop_to_brain), domain)


def _settings(normalisation: str, crop_to_brain: bool) -> dict:
    return dict(normalisation=normalisation, crop_to_brain=bool(crop_to_brain), version=FORMAT_VERSION)


def _build_locked(
    data_dir, cache_dir: Path, found: list[CaseFiles], settings: dict, domain, skip_bad_cases: bool, workers: int
) -> None:
    (cache_dir / "cases").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache_dir / "tmp", ignore_errors=True)  # leftovers of an interrupted build (we hold the lock)
    wanted = {c.case_id for c in found}
    for stale in (cache_dir / "cases").iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale)
    jobs = []
    for case_files in found:
        fingerprint = _fingerprint(case_files)
        target = cache_dir / "cases" / case_files.case_id
        meta = _read_json(target / "meta.json")
        if meta is None or meta["fingerprint"] != fingerprint or meta["settings"] != settings:
            jobs.append((case_files, target, settings, fingerprint))
    _warn_if_short_of_space(cache_dir, jobs)
    built = _build_all(jobs, workers, skip_bad_cases, cache_dir)
    cases, skipped = [], {}
    for case_files in found:  # in sorted order whatever order the workers finished in
        outcome = built.get(case_files.case_id)
        if isinstance(outcome, BadCaseError):
            log.warning("skipping %s", outcome)
            shutil.rmtree(cache_dir / "cases" / case_files.case_id, ignore_errors=True)
            skipped[case_files.case_id] = [str(f) for f in outcome.faults]
        else:
            cases.append(case_files.case_id)
    log.info(
        "cache %s: %d cases, %d (re)built, %d skipped", cache_dir, len(cases), len(built) - len(skipped), len(skipped)
    )
    manifest = dict(
        version=FORMAT_VERSION,
        data_dir=str(Path(data_dir).resolve()),
        domain=domain,
        settings=settings,
        cases=cases,
        skipped=skipped,
    )
    try:
        _write_json(cache_dir / MANIFEST, manifest)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _disk_full_error(cache_dir, MANIFEST, len(json.dumps(manifest, indent=1))) from error
        raise


def default_cache_dir(data_dir) -> Path:
    """Where the cache root goes without --cache_dir: `<data_dir>/.sam_jax_cache` when the data folder is writable,
    else (a read-only share, a mounted dataset) `user_cache_dir(data_dir)`; the same data folder always maps to the
    same place, so training and evaluation meet there."""
    data_dir = Path(data_dir).expanduser().absolute()
    beside = data_dir / DEFAULT_NAME
    try:
        beside.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=beside):
            return beside
    except OSError:
        fallback = user_cache_dir(data_dir)
        log.warning(
            "%s is not writable: the preprocessing cache goes to %s (--cache_dir to choose)", data_dir, fallback
        )
        return fallback


def user_cache_dir(data_dir) -> Path:
    """`$XDG_CACHE_HOME/sam_jax/<folder name>-<hash of its path>`, by default under ~/.cache."""
    data_dir = Path(data_dir).expanduser().absolute()
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "sam_jax" / f"{data_dir.name}-{hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]}"
