"""The preprocessing cache: each case normalised once, optionally cropped to its brain box, and stored as axial slices
in memory-mappable .npy files, so training reads a slice for the cost of a page copy.

Layout of `cache_dir`: `cases/<case id>/image.npy` (Z, H, W, 4) in MODALITIES order, int16 holding
intensity / `intensity_scale` (z-scores at a 2^-10 step; raw intensities at step 1 when they are int16-representable
integers, else float32 with scale 1), because int16 converts to float32 ~20x faster than float16 on the host;
`labels.npy` (Z, H, W) uint8 BraTS labels (0 where a case has no segmentation); `brain.npy` (Z, H, ceil(W / 8))
the brain mask packed along rows (np.packbits), for negative clicks; `meta.json` (source fingerprint, settings,
geometry, scale, per-slice tumour and brain areas); `manifest.json` indexes the cases; `split.json` holds the split.
Slices are prepared by `sam_jax.data.preprocess.volume_slices` (evaluation's preparation too): stored slice k' is
volume slice `first_slice + k'` over the crop box, rows along voxel Y, so a click (x, y) is voxel (x0 + x, y0 + y).
A case directory only appears complete (written under `tmp/`, then renamed), so an interrupted build never leaves a
case that later reads as valid; a rebuild redoes only cases whose source files (size, mtime) or settings changed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from sam_jax.data import split as split_lib
from sam_jax.data.brats import MODALITIES, CaseFiles, find_cases, load_case
from sam_jax.data.errors import BadCaseError, CacheError
from sam_jax.data.preprocess import volume_slices

FORMAT_VERSION = 2
log = logging.getLogger(__name__)


def _fingerprint(case_files: CaseFiles) -> list:
    paths = list(case_files.images.values()) + ([case_files.seg] if case_files.seg else [])
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)]


def _write_json(path: Path, payload) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _quantise(image: np.ndarray, normalisation: str) -> tuple[np.ndarray, float]:
    """(stored array, scale) with image ~= stored * scale; exact for raw integer intensities."""
    if normalisation == "zscore":
        scale = 2.0**-10
        return np.clip(np.rint(image / scale), -32768, 32767).astype(np.int16), scale
    if np.array_equal(image, np.rint(image)) and image.min() >= -32768 and image.max() <= 32767:
        return image.astype(np.int16), 1.0
    return image.astype(np.float32), 1.0


def _build_case(case_files: CaseFiles, target: Path, settings: dict, fingerprint: list) -> dict:
    case = load_case(case_files)
    prepared = volume_slices(case.images, case.seg, MODALITIES, settings["normalisation"], settings["crop_to_brain"])
    image, scale = _quantise(prepared.images, settings["normalisation"])
    brain_slices, box = prepared.brain, prepared.box
    labels = prepared.labels if prepared.labels is not None else np.zeros(brain_slices.shape, np.uint8)
    meta = dict(
        case_id=case_files.case_id,
        domain=case_files.domain,
        patient_id=case_files.patient_id,
        fingerprint=fingerprint,
        settings=settings,
        volume_shape=list(case.images[MODALITIES[0]].shape),
        box=[list(b) for b in box],
        has_seg=case.seg is not None,
        tumour_area=(labels > 0).sum(axis=(1, 2)).tolist(),
        brain_area=brain_slices.sum(axis=(1, 2)).tolist(),
        intensity_scale=scale,
    )
    temporary = target.parent.parent / "tmp" / f"{case_files.case_id}.{uuid.uuid4().hex}"
    temporary.mkdir(parents=True)
    np.save(temporary / "image.npy", image)
    np.save(temporary / "labels.npy", labels)
    np.save(temporary / "brain.npy", np.packbits(brain_slices, axis=-1))
    _write_json(temporary / "meta.json", meta)
    if target.exists():
        stale = temporary.with_name(temporary.name + ".stale")
        os.replace(target, stale)
        os.replace(temporary, target)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, target)
    return meta


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
        manifest = _read_json(cache_dir / "manifest.json")
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
        """GLI, MEN, PED or SSA."""
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
        return np.load(self.cache_dir / "cases" / case_id / "image.npy", mmap_mode="r")

    def intensity_scale(self, case_id: str) -> float:
        """Multiply stored image values by this to get intensities."""
        return self.entries[case_id]["intensity_scale"]

    def packed_brain(self, case_id: str) -> np.ndarray:
        """(Z, H, ceil(W / 8)) memory map of the brain mask; `np.unpackbits(m[k], axis=-1, count=W)` unpacks a slice."""
        return np.load(self.cache_dir / "cases" / case_id / "brain.npy", mmap_mode="r")

    def labels(self, case_id: str) -> np.ndarray:
        """(Z, H, W) uint8 memory map of BraTS labels."""
        return np.load(self.cache_dir / "cases" / case_id / "labels.npy", mmap_mode="r")

    def split(self) -> dict:
        """The saved split restricted to cached cases (skipped bad cases drop out)."""
        saved = split_lib.load_split(self.cache_dir)
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
) -> Cache:
    """Preprocess every case under `data_dir` into `cache_dir` (a no-op for cases already cached with the same
    sources and settings) and write the patient-level split on first use; returns the opened cache. A bad case raises
    `BadCaseError`, or is logged and left out with `skip_bad_cases`."""
    if normalisation not in ("zscore", "none"):
        raise ValueError(f"unknown normalisation {normalisation!r}; expected 'zscore' or 'none'")
    cache_dir = Path(cache_dir)
    found = find_cases(data_dir, domain)
    if not found:
        raise CacheError(f"{data_dir}: no BraTS cases found (expected files like BraTS-GLI-00000-000-t1n.nii.gz)")
    (cache_dir / "cases").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache_dir / "tmp", ignore_errors=True)  # leftovers of an interrupted build
    split_lib.ensure_split(cache_dir, {c.case_id: c.patient_id for c in found}, split_seed, val_fraction)
    settings = dict(normalisation=normalisation, crop_to_brain=bool(crop_to_brain), version=FORMAT_VERSION)
    wanted = {c.case_id for c in found}
    for stale in (cache_dir / "cases").iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale)
    cases, skipped, rebuilt = [], {}, 0
    for case_files in found:
        target = cache_dir / "cases" / case_files.case_id
        fingerprint = _fingerprint(case_files)
        meta = _read_json(target / "meta.json")
        if meta is None or meta["fingerprint"] != fingerprint or meta["settings"] != settings:
            try:
                _build_case(case_files, target, settings, fingerprint)
                rebuilt += 1
            except BadCaseError as error:
                if not skip_bad_cases:
                    raise
                log.warning("skipping %s", error)
                shutil.rmtree(target, ignore_errors=True)
                skipped[case_files.case_id] = [str(f) for f in error.faults]
                continue
        cases.append(case_files.case_id)
    log.info("cache %s: %d cases, %d (re)built, %d skipped", cache_dir, len(cases), rebuilt, len(skipped))
    _write_json(
        cache_dir / "manifest.json",
        dict(
            version=FORMAT_VERSION,
            data_dir=str(Path(data_dir).resolve()),
            domain=domain,
            settings=settings,
            cases=cases,
            skipped=skipped,
        ),
    )
    return Cache.open(cache_dir)


def default_cache_dir(data_dir) -> Path:
    """Where the cache goes without --cache_dir: `<data_dir>/.sam_jax_cache` when the data folder is writable, else
    (a read-only share, a mounted dataset) `$XDG_CACHE_HOME/sam_jax/<folder name>-<hash of its path>`, by default
    under ~/.cache; the same data folder always maps to the same place, so training and evaluation meet there."""
    data_dir = Path(data_dir).expanduser().absolute()
    beside = data_dir / ".sam_jax_cache"
    try:
        beside.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=beside):
            return beside
    except OSError:
        user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        fallback = user_cache / "sam_jax" / f"{data_dir.name}-{hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]}"
        log.warning("%s is not writable: the preprocessing cache goes to %s (--cache_dir to choose)", data_dir,
                    fallback)
        return fallback
