"""The preprocessing cache: orientation, normalisation, crop, incremental and interrupted builds, bad cases, split,
parallel builds, a full disk."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apps import run_app

from sam_jax.data import cache as cache_module
from sam_jax.data import cache_layout, caches
from sam_jax.data.brats import find_cases, load_case
from sam_jax.data.cache import Cache, build_cache, preprocessing_dir
from sam_jax.data.domains import MODALITIES
from sam_jax.data.errors import BadCaseError, CacheError, SplitMismatchError
from sam_jax.data.preprocess import volume_slices
from sam_jax.data.split import ensure_split, load_split, make_split
from sam_jax.errors import SamJaxError
from sam_jax.training.config import TrainConfig

SHAPE = (12, 10, 6)


def _asymmetric_case(tmp_path, write_tiny_case, case_id="BraTS-GLI-00001-000"):
    """Brain = voxels x 3..8, y 1..8, z 1..4; a label-3 marker at voxel (4, 3, 2)."""
    rng = np.random.default_rng(3)
    brain = np.zeros(SHAPE, bool)
    brain[3:9, 1:9, 1:5] = True
    images = {m: np.where(brain, rng.integers(50, 500, SHAPE), 0).astype(np.float32) for m in MODALITIES}
    seg = np.zeros(SHAPE, np.uint8)
    seg[4, 3, 2] = 3
    seg[5, 3, 2] = 2
    return write_tiny_case(tmp_path, case_id, images=images, seg=seg)


def test_slices_have_rows_along_y_and_columns_along_x(tmp_path, write_tiny_case):
    _asymmetric_case(tmp_path / "data", write_tiny_case)
    cache = build_cache(tmp_path / "data", tmp_path / "cache", normalisation="none")
    (case_id,) = cache.case_ids
    labels = cache.labels(case_id)
    assert labels.shape == (6, 10, 12)  # (Z, Y, X)
    assert labels[2, 3, 4] == 3 and labels[2, 3, 5] == 2  # voxel (x, y, z) -> stored [z][y, x]
    raw = load_case(find_cases(tmp_path / "data")[0]).images
    stored = cache.image(case_id) * cache.intensity_scale(case_id)
    for c, m in enumerate(MODALITIES):  # 'none' reproduces the raw intensities exactly
        np.testing.assert_array_equal(stored[..., c], raw[m].transpose(2, 1, 0))
    np.testing.assert_array_equal(cache.tumour_area(case_id), [0, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(cache.brain_area(case_id), [0, 48, 48, 48, 48, 0])
    assert cache.canvas_size == 12


def test_crop_to_brain_box(tmp_path, write_tiny_case):
    _asymmetric_case(tmp_path / "data", write_tiny_case)
    cache = build_cache(tmp_path / "data", tmp_path / "cache", crop_to_brain=True)
    (case_id,) = cache.case_ids
    assert cache.slice_hw(case_id) == (8, 6)  # Y extent 1..8, X extent 3..8
    assert cache.first_slice(case_id) == 1 and cache.num_slices(case_id) == 4
    assert cache.labels(case_id)[2 - 1, 3 - 1, 4 - 3] == 3
    assert cache.canvas_size == 12  # the native in-plane size, so every cache of BraTS shares S = 240


def test_zscore_over_brain_voxels(tmp_path, write_tiny_case):
    _asymmetric_case(tmp_path / "data", write_tiny_case)
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    (case_id,) = cache.case_ids
    raw = load_case(find_cases(tmp_path / "data")[0]).images["t2w"].transpose(2, 1, 0)
    brain = raw > 0
    clipped = np.clip(raw[brain], *np.percentile(raw[brain], [0.5, 99.5]))
    expected = (clipped - clipped.mean()) / clipped.std()
    stored = cache.image(case_id)[..., MODALITIES.index("t2w")] * cache.intensity_scale(case_id)
    np.testing.assert_allclose(stored[brain], expected, atol=2.0**-10)
    assert np.all(stored[~brain] == 0)


def test_sam_rgb_stretches_to_255_then_applies_sams_pixel_statistics():
    """Zero-shot SAM's input: the brain percentiles stretched to 0–255, then segment_anything's ImageNet mean and
    std (its `Sam.pixel_mean` / `pixel_std`, written out here from SAM's source)."""
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, bool)
    brain[3:9, 1:9, 1:5] = True
    modalities = ("t1n", "t2w", "t2f")
    images = {m: np.where(brain, rng.uniform(10, 900, SHAPE), 0).astype(np.float32) for m in modalities}
    slices = volume_slices(images, None, modalities, "sam_rgb", crop_to_brain=False).images
    for c, (m, mean, std) in enumerate(zip(modalities, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))):
        low, high = np.percentile(images[m][brain], [0.5, 99.5])
        rgb = np.clip((images[m] - low) / (high - low), 0, 1) * 255
        np.testing.assert_allclose(slices[..., c], ((rgb - mean) / std).transpose(2, 1, 0), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="sam_rgb needs 3 modalities"):
        volume_slices({**images, "t1c": images["t1n"]}, None, (*modalities, "t1c"), "sam_rgb", crop_to_brain=False)


def test_rebuild_is_incremental(tmp_path, write_tiny_case):
    for i in (1, 2):
        write_tiny_case(tmp_path / "data", f"BraTS-MEN-0000{i}-000")
    build_cache(tmp_path / "data", tmp_path / "cache")
    cases = preprocessing_dir(tmp_path / "cache") / "cases"
    image_file = {i: cases / f"BraTS-MEN-0000{i}-000" / "image.npy" for i in (1, 2)}
    before = {i: f.stat().st_mtime_ns for i, f in image_file.items()}
    build_cache(tmp_path / "data", tmp_path / "cache")
    assert {i: f.stat().st_mtime_ns for i, f in image_file.items()} == before
    write_tiny_case(tmp_path / "data", "BraTS-MEN-00002-000", shape=(12, 10, 7))  # changed source
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    assert image_file[1].stat().st_mtime_ns == before[1] and cache.num_slices("BraTS-MEN-00002-000") == 7
    cache = build_cache(tmp_path / "data", tmp_path / "cache", normalisation="none")  # changed settings: their own
    assert cache.cache_dir == tmp_path / "cache" / "none-whole-v2" and cache.settings["normalisation"] == "none"
    assert (cache.cache_dir / "cases" / "BraTS-MEN-00001-000" / "image.npy").is_file()
    assert image_file[1].stat().st_mtime_ns == before[1]  # the z-scored cache untouched
    assert build_cache(tmp_path / "data", tmp_path / "cache").cache_dir == cases.parent
    assert image_file[1].stat().st_mtime_ns == before[1]  # and reused as it was


def test_case_arrays_open_one_thread_at_a_time(tmp_path, write_tiny_case, monkeypatch):
    """np.load's header parse is not thread-safe on CPython 3.11 (cache._memory_map says why): the pipeline's threads
    open a case's arrays only while holding the cache's lock, and get memory maps of the stored arrays."""
    write_tiny_case(tmp_path / "data", "BraTS-MEN-00001-000")
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    load, held = np.load, []
    monkeypatch.setattr(
        np, "load", lambda *args, **kwargs: held.append(cache_module._OPENING.locked()) or load(*args, **kwargs)
    )
    arrays = [
        cache.image("BraTS-MEN-00001-000"),
        cache.labels("BraTS-MEN-00001-000"),
        cache.packed_brain("BraTS-MEN-00001-000"),
    ]
    assert held == [True, True, True] and all(isinstance(a, np.memmap) for a in arrays)
    assert not cache_module._OPENING.locked()


def test_interrupted_build_leaves_no_half_written_case(tmp_path, write_tiny_case, monkeypatch):
    for i in (1, 2):
        write_tiny_case(tmp_path / "data", f"BraTS-SSA-0000{i}-000")
    real_save = cache_module._save_npy

    def crash_on_second_case(path, array):
        if "BraTS-SSA-00002-000" in str(path) and str(path).endswith("labels.npy"):
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(cache_module, "_save_npy", crash_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "data", tmp_path / "cache")
    folder = preprocessing_dir(tmp_path / "cache")
    assert not (folder / "cases" / "BraTS-SSA-00002-000").exists()
    with pytest.raises(CacheError):
        Cache.open(folder)
    first = (folder / "cases" / "BraTS-SSA-00001-000" / "image.npy").stat().st_mtime_ns
    monkeypatch.undo()
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    assert cache.case_ids == ["BraTS-SSA-00001-000", "BraTS-SSA-00002-000"]
    assert (folder / "cases" / "BraTS-SSA-00001-000" / "image.npy").stat().st_mtime_ns == first
    assert not (folder / "tmp").exists() or not any((folder / "tmp").iterdir())

    monkeypatch.setattr(cache_module, "_save_npy", crash_on_second_case)
    with pytest.raises(KeyboardInterrupt):  # a rebuild with new settings, interrupted half way
        build_cache(tmp_path / "data", tmp_path / "cache", normalisation="none")
    with pytest.raises(CacheError, match="no valid manifest"):
        Cache.open(preprocessing_dir(tmp_path / "cache", "none"))
    assert Cache.open(folder).case_ids == cache.case_ids  # the other preprocessing's cache is whole
    meta = json.loads((folder / "cases" / "BraTS-SSA-00001-000" / "meta.json").read_text())
    meta["settings"]["normalisation"] = "none"  # a case of other settings in the folder: refused
    (folder / "cases" / "BraTS-SSA-00001-000" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="other settings"):
        Cache.open(folder)


def test_bad_cases_raise_or_are_skipped(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00001-000")
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00002-000", modalities=("t1n", "t2w", "t2f", "seg"))
    with pytest.raises(BadCaseError, match="missing modality t1c"):
        build_cache(tmp_path / "data", tmp_path / "cache")
    cache = build_cache(tmp_path / "data", tmp_path / "cache", skip_bad_cases=True)
    assert cache.case_ids == ["BraTS-GLI-00001-000"]
    assert "missing modality t1c" in cache.skipped["BraTS-GLI-00002-000"][0]


def test_split_is_by_patient_seeded_and_saved(tmp_path, write_tiny_case):
    patient_of = {f"BraTS-GLI-{p:05d}-00{t}": f"BraTS-GLI-{p:05d}" for p in range(10) for t in range(1 + (p < 3))}
    domain_of = dict.fromkeys(patient_of, "GLI")
    split = make_split(patient_of, domain_of, seed=7)
    assert split == make_split(patient_of, domain_of, seed=7) and split["drawn"] == "per_domain"
    assert set(split["train"]) | set(split["val"]) == set(patient_of) and not set(split["train"]) & set(split["val"])
    assert len({patient_of[c] for c in split["val"]}) == 2  # 20% of 10 patients
    for p in range(3):  # both time points of a patient on the same side
        assert (f"BraTS-GLI-{p:05d}-000" in split["val"]) == (f"BraTS-GLI-{p:05d}-001" in split["val"])

    for i in range(5):
        write_tiny_case(tmp_path / "data", f"BraTS-PED-0000{i}-000")
    cache = build_cache(tmp_path / "data", tmp_path / "cache", split_seed=3)
    saved = load_split(tmp_path / "cache")
    assert saved["seed"] == 3 and len(saved["val"]) == 1 and cache.split() == saved
    with pytest.raises(SplitMismatchError, match="seed"):
        build_cache(tmp_path / "data", tmp_path / "cache", split_seed=4)
    write_tiny_case(tmp_path / "data", "BraTS-PED-00009-000")
    with pytest.raises(SplitMismatchError, match="delete it"):
        build_cache(tmp_path / "data", tmp_path / "cache", split_seed=3)


def test_split_is_drawn_within_each_domain(tmp_path, caplog):
    """20% of each domain's patients, as the paper splits each dataset, whatever other domains are present: a pooled
    draw of 6 GLI and 4 MEN patients could hold out 2 of one and none of the other."""
    gli = {f"BraTS-GLI-{p:05d}-000": f"BraTS-GLI-{p:05d}" for p in range(6)}
    men = {f"BraTS-MEN-{p:05d}-000": f"BraTS-MEN-{p:05d}" for p in range(4)}
    domain_of = {**dict.fromkeys(gli, "GLI"), **dict.fromkeys(men, "MEN")}
    for seed in range(20):
        split = make_split({**gli, **men}, domain_of, seed=seed)
        assert (
            sum(c in split["val"] for c in gli) == 1 and sum(c in split["val"] for c in men) == 1
        )  # round(1.2), round(0.8)
        assert split["val"] == sorted(make_split(gli, domain_of, seed)["val"] + make_split(men, domain_of, seed)["val"])
    # A split saved before, drawn over the pooled patients, is kept (runs trained on it are scored on it), named.
    (tmp_path / "split.json").write_text(json.dumps({"seed": 0, "val_fraction": 0.2, "train": list(gli), "val": []}))
    assert ensure_split(tmp_path, gli, domain_of)["val"] == [] and "pooled" in caplog.text


def _cache_files(cache_dir):
    """{relative path: bytes} of a cache, meta.json without its build time (the one thing a rebuild changes)."""
    files = {}
    for path in sorted(Path(cache_dir).rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            if path.name == "meta.json":
                meta = json.loads(content)
                assert meta.pop("build_seconds") > 0
                content = json.dumps(meta).encode()
            files[str(path.relative_to(cache_dir))] = content
    return files


def test_parallel_build_equals_serial(tmp_path, write_tiny_case, caplog):
    for i, shape in enumerate([(12, 10, 6), (14, 10, 5), (12, 12, 7), (16, 10, 6)]):
        write_tiny_case(tmp_path / "data", f"BraTS-MEN-0000{i}-000", shape=shape)
    write_tiny_case(tmp_path / "data", "BraTS-MEN-00009-000", modalities=("t1n", "t2w", "t2f", "seg"))
    serial = build_cache(tmp_path / "data", tmp_path / "serial", skip_bad_cases=True, workers=1)
    with caplog.at_level(logging.INFO, logger=cache_module.__name__):
        parallel = build_cache(tmp_path / "data", tmp_path / "parallel", skip_bad_cases=True, workers=2)
    assert parallel.case_ids == serial.case_ids == [f"BraTS-MEN-0000{i}-000" for i in range(4)]
    assert parallel.skipped == serial.skipped and "missing modality t1c" in parallel.skipped["BraTS-MEN-00009-000"][0]
    assert _cache_files(tmp_path / "parallel") == _cache_files(tmp_path / "serial")
    assert "built 5 cases" not in caplog.text and "built 4 cases in" in caplog.text and "2 workers" in caplog.text

    shutil.rmtree(tmp_path / "parallel")
    with pytest.raises(BadCaseError, match="missing modality t1c"):  # from a worker, every fault named
        build_cache(tmp_path / "data", tmp_path / "parallel", workers=2)
    cases = preprocessing_dir(tmp_path / "parallel") / "cases"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in cases.glob("*/meta.json")}
    resumed = build_cache(tmp_path / "data", tmp_path / "parallel", skip_bad_cases=True)
    assert resumed.case_ids == serial.case_ids
    assert {c: (cases / c / "meta.json").stat().st_mtime_ns for c in finished} == finished


WORKERS_MAIN = """
import sys
from pathlib import Path
if __name__ == "__mp_main__":  # imported by a worker
    Path(sys.argv[3]).write_text("imported")
if __name__ == "__main__":
    from sam_jax.data.cache import build_cache
    main = sys.modules["__main__"]
    print(build_cache(sys.argv[1], sys.argv[2], workers=2).case_ids, sys.modules["__main__"] is main)
"""


def test_workers_do_not_import_the_callers_main(tmp_path, write_tiny_case):
    """An app's `__main__` (train.main: JAX, Flax and the rest, ~200 MB and seconds of CPU) is not imported again by
    each worker, as multiprocessing's forkserver and spawn workers otherwise do; the caller keeps its own."""
    for i in range(2):
        write_tiny_case(tmp_path / "data", f"BraTS-MEN-0000{i}-000")
    (tmp_path / "app.py").write_text(WORKERS_MAIN)
    marker = tmp_path / "imported"
    done = run_app(tmp_path / "app.py", tmp_path / "data", tmp_path / "cache", marker, fresh=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "['BraTS-MEN-00000-000', 'BraTS-MEN-00001-000'] True"
    assert not marker.exists()


def test_worker_count_is_checked(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path / "data", "BraTS-PED-00001-000")
    with pytest.raises(ValueError, match="workers -1"):
        build_cache(tmp_path / "data", tmp_path / "cache", workers=-1)
    assert cache_module._worker_count(0, 1000) == len(os.sched_getaffinity(0))
    assert cache_module._worker_count(8, 3) == 3 and cache_module._worker_count(0, 1) == 1
    with pytest.raises(SamJaxError, match="cache_workers -1"):
        TrainConfig(cache_workers=-1)


_FULL_DISK_SCRIPT = """
import json, os, subprocess, sys
from sam_jax.data.cache import build_cache, preprocessing_dir
from sam_jax.data.errors import CacheError

data, mount = sys.argv[1:]
root = os.path.join(mount, "cache")
cache = str(preprocessing_dir(root))
report = {}
try:
    build_cache(data, root)
except CacheError as error:
    report["error"] = str(error)
report["tmp"] = sorted(os.listdir(os.path.join(cache, "tmp"))) if os.path.isdir(os.path.join(cache, "tmp")) else []
report["complete"] = {c: os.stat(os.path.join(cache, "cases", c, "meta.json")).st_mtime_ns
                      for c in sorted(os.listdir(os.path.join(cache, "cases")))}
report["image_bytes"] = os.path.getsize(os.path.join(cache, "cases", min(report["complete"]), "image.npy"))
subprocess.run(["mount", "-o", "remount,size=16m", mount], check=True)  # space freed: the next run resumes
resumed = build_cache(data, root)
report["resumed"] = resumed.case_ids
report["after"] = {c: os.stat(os.path.join(cache, "cases", c, "meta.json")).st_mtime_ns for c in resumed.case_ids}
print(json.dumps(report))
"""


def test_full_disk_names_the_cache_and_the_bytes_and_resumes(tmp_path, write_tiny_case):
    """On a real 4 MB tmpfs (mounted in a private mount namespace): two ~1.5 MB cases fit, the third does not."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.fail(
            "this test needs `unshare -rm` (user and mount namespaces) to mount a small tmpfs; it is "
            "unavailable here, so the full-disk behaviour is untested"
        )
    case_ids = [f"BraTS-GLI-0000{i}-000" for i in range(3)]
    for case_id in case_ids:
        write_tiny_case(tmp_path / "data", case_id, shape=(64, 64, 40))
    mount = tmp_path / "small_disk"
    mount.mkdir()
    script = f'mount -t tmpfs -o size=4m tmpfs {mount} && exec {sys.executable} -c "$0" {tmp_path / "data"} {mount}'
    root = str(Path(__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, _FULL_DISK_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    error = report["error"]
    assert f"{mount}/cache/zscore-whole-v2: the disk is full: case {case_ids[2]} needs" in error
    needed, free = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes", error))
    assert report["image_bytes"] < needed < 2 * report["image_bytes"] and free < needed
    assert report["tmp"] == []  # the half-written case was removed
    assert list(report["complete"]) == case_ids[:2]
    assert report["resumed"] == case_ids
    assert {c: report["after"][c] for c in case_ids[:2]} == report["complete"]  # built once, kept


def test_a_build_the_disk_cannot_hold_is_announced(tmp_path, write_tiny_case, monkeypatch, caplog):
    write_tiny_case(tmp_path / "data", "BraTS-SSA-00001-000", shape=(12, 10, 6))
    assert cache_module._estimated_bytes(find_cases(tmp_path / "data")[0]) == 12 * 10 * 6 * 9 + 6 * 10 * 2
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        build_cache(tmp_path / "data", tmp_path / "cache")
    assert "the 1 cases to build need about" in caplog.text and "stop when the disk is full" in caplog.text


def test_a_second_builder_of_the_same_cache_waits_for_the_first_and_builds_nothing(tmp_path, write_tiny_case):
    """This process holds the build lock and builds; a builder started meanwhile (a second trainer) says whom it
    waits for, then finds every case built."""
    for i in (1, 2):
        write_tiny_case(tmp_path / "data", f"BraTS-GLI-0000{i}-000")
    folder = preprocessing_dir(tmp_path / "cache")
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from sam_jax.data.cache import build_cache;"
        f"print('cases', build_cache({str(tmp_path / 'data')!r}, {str(tmp_path / 'cache')!r}).case_ids, flush=True)"
    )
    root = str(Path(__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with cache_layout.build_lock(folder):
        second = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        waiting = second.stdout.readline()
        assert f"cache {folder} is being built by another process (pid {os.getpid()} on " in waiting, waiting
        found = find_cases(tmp_path / "data")
        settings = cache_module._settings("zscore", False)
        cache_module._build_locked(tmp_path / "data", folder, found, settings, None, False, 1)
        assert second.poll() is None  # still waiting
    rest = second.communicate(timeout=120)[0]
    assert second.returncode == 0
    assert "2 cases, 0 (re)built" in rest and "cases ['BraTS-GLI-00001-000', 'BraTS-GLI-00002-000']" in rest


def test_caches_of_each_preprocessing_are_listed_with_their_size(tmp_path, write_tiny_case, capsys):
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00001-000", shape=(40, 40, 20))
    default_root = tmp_path / "data" / ".sam_jax_cache"
    build_cache(tmp_path / "data", default_root)
    build_cache(tmp_path / "data", default_root, normalisation="none", crop_to_brain=True)
    assert caches.main([str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{default_root}:"
    image_bytes = (default_root / "zscore-whole-v2" / "cases" / "BraTS-GLI-00001-000" / "image.npy").stat().st_size
    assert image_bytes == 40 * 40 * 20 * 4 * 2 + 128
    zscore = next(line for line in out if "zscore-whole-v2" in line)
    number, unit = zscore.split()[1:3]
    assert float(number) * {"kB": 1e3, "MB": 1e6}[unit] >= image_bytes
    assert "1 cases, normalisation zscore, whole volumes" in zscore
    assert any("none-brain_crop-v2" in line and "cropped to the brain" in line for line in out)
    assert "rm -r" in out[-1]
    assert caches.main([str(default_root)]) == 0 and capsys.readouterr().out.splitlines()[:3] == out[:3]


def test_a_cache_of_the_older_layout_moves_into_its_folder_unbuilt(tmp_path, write_tiny_case, caplog):
    """Before per-preprocessing folders, cases/ and manifest.json sat at the root: a BraTS cache is hours of
    building, so one of this build's settings is moved into place, not rebuilt."""
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00001-000")
    built = build_cache(tmp_path / "data", tmp_path / "cache")
    for name in ("cases", "manifest.json"):
        os.replace(built.cache_dir / name, tmp_path / "cache" / name)
    first = (tmp_path / "cache" / "cases" / "BraTS-GLI-00001-000" / "image.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=cache_module.__name__):
        cache = build_cache(tmp_path / "data", tmp_path / "cache")
    assert "0 (re)built" in caplog.text and not (tmp_path / "cache" / "cases").exists()
    assert (cache.cache_dir / "cases" / "BraTS-GLI-00001-000" / "image.npy").stat().st_mtime_ns == first
