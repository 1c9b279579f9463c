"""The preprocessing cache: orientation, normalisation, crop, incremental and interrupted builds, bad cases, split."""

import numpy as np
import pytest

from sam_jax.data import cache as cache_module
from sam_jax.data.brats import MODALITIES, find_cases, load_case
from sam_jax.data.cache import Cache, build_cache
from sam_jax.data.errors import BadCaseError, CacheError, SplitMismatchError
from sam_jax.data.split import load_split, make_split

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


def test_rebuild_is_incremental(tmp_path, write_tiny_case):
    for i in (1, 2):
        write_tiny_case(tmp_path / "data", f"BraTS-MEN-0000{i}-000")
    build_cache(tmp_path / "data", tmp_path / "cache")
    image_file = {i: tmp_path / "cache" / "cases" / f"BraTS-MEN-0000{i}-000" / "image.npy" for i in (1, 2)}
    before = {i: f.stat().st_mtime_ns for i, f in image_file.items()}
    build_cache(tmp_path / "data", tmp_path / "cache")
    assert {i: f.stat().st_mtime_ns for i, f in image_file.items()} == before
    write_tiny_case(tmp_path / "data", "BraTS-MEN-00002-000", shape=(12, 10, 7))  # changed source
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    assert image_file[1].stat().st_mtime_ns == before[1] and cache.num_slices("BraTS-MEN-00002-000") == 7
    cache = build_cache(tmp_path / "data", tmp_path / "cache", normalisation="none")  # changed settings
    assert image_file[1].stat().st_mtime_ns != before[1] and cache.settings["normalisation"] == "none"


def test_interrupted_build_leaves_no_half_written_case(tmp_path, write_tiny_case, monkeypatch):
    for i in (1, 2):
        write_tiny_case(tmp_path / "data", f"BraTS-SSA-0000{i}-000")
    real_save = np.save

    def crash_on_second_case(path, array):
        if "BraTS-SSA-00002-000" in str(path) and str(path).endswith("labels.npy"):
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(cache_module.np, "save", crash_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "data", tmp_path / "cache")
    assert not (tmp_path / "cache" / "cases" / "BraTS-SSA-00002-000").exists()
    with pytest.raises(CacheError):
        Cache.open(tmp_path / "cache")
    first = (tmp_path / "cache" / "cases" / "BraTS-SSA-00001-000" / "image.npy").stat().st_mtime_ns
    monkeypatch.undo()
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    assert cache.case_ids == ["BraTS-SSA-00001-000", "BraTS-SSA-00002-000"]
    assert (tmp_path / "cache" / "cases" / "BraTS-SSA-00001-000" / "image.npy").stat().st_mtime_ns == first
    assert not (tmp_path / "cache" / "tmp").exists() or not any((tmp_path / "cache" / "tmp").iterdir())

    monkeypatch.setattr(cache_module.np, "save", crash_on_second_case)
    with pytest.raises(KeyboardInterrupt):  # a rebuild with new settings, interrupted half way
        build_cache(tmp_path / "data", tmp_path / "cache", normalisation="none")
    with pytest.raises(CacheError, match="other settings"):
        Cache.open(tmp_path / "cache")


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
    split = make_split(patient_of, seed=7)
    assert split == make_split(patient_of, seed=7)
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
