"""The grain pipeline: element layout, channel choice, stacks, slice and click policies, box prompts, determinism,
exact resume."""

import numpy as np
import pytest

from sam_jax.data.cache import build_cache
from sam_jax.data.domains import MODALITIES
from sam_jax.data.pipeline import make_dataset, make_iterator, slice_table, spaced_slices

CASES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")


@pytest.fixture
def tiny_cache(tmp_path, write_tiny_case):
    """Two 12x10x6 cases: brain slices z 1..4, tumour (a 2x2x2 block) on z 2..3."""
    for case_id in CASES:
        write_tiny_case(tmp_path / "data", case_id)
    return build_cache(tmp_path / "data", tmp_path / "cache")


def _all_elements(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_elements_match_the_cache(tiny_cache):
    dataset = make_dataset(
        tiny_cache, list(CASES), batch_size=4, shuffle=False, num_epochs=1, modalities=("t2f", "t2f", "t1n")
    )
    batches = _all_elements(dataset)
    assert len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (4, 1, 12, 12, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (4, 1, 12, 12) and b["mask"].dtype == np.uint8
    assert b["point_coords"].shape == (4, 1, 1, 2) and b["point_labels"].shape == (4, 1, 1)
    assert b["valid_hw"].tolist() == [[10, 12]] * 4
    seen = set()
    for b in batches:
        for i, (c, k) in enumerate(zip(b["case_index"], b["slice_index"])):
            seen.add((int(c), int(k)))
            case_id = tiny_cache.case_ids[c]
            stored = tiny_cache.image(case_id)[k] * tiny_cache.intensity_scale(case_id)
            t2f, t1n = MODALITIES.index("t2f"), MODALITIES.index("t1n")
            np.testing.assert_array_equal(b["image"][i, 0, :10, :12], stored[..., [t2f, t2f, t1n]])
            assert not b["image"][i, 0, 10:].any()  # canvas padding below the 10 rows
            tumour = tiny_cache.labels(case_id)[k] > 0
            np.testing.assert_array_equal(b["mask"][i, 0, :10, :12], tumour)
            x, y = b["point_coords"][i, 0, 0].astype(int)
            if tumour.any():
                assert b["point_labels"][i, 0, 0] == 1 and tumour[y, x]
            else:
                assert b["point_labels"][i, 0, 0] == 0 and not tumour[y, x]
                if tiny_cache.brain_area(case_id)[k]:
                    assert stored[y, x].any()  # negative clicks land in the brain
    assert seen == {(c, k) for c in range(2) for k in range(6)}


def test_stacks_are_padded_at_the_volume_edge(tiny_cache):
    dataset = make_dataset(tiny_cache, [CASES[0]], z=3, batch_size=6, shuffle=False, num_epochs=1)
    (b,) = _all_elements(dataset)
    assert b["image"].shape == (6, 3, 12, 12, 4) and b["slice_index"].tolist() == list(range(6))
    image = tiny_cache.image(CASES[0]) * tiny_cache.intensity_scale(CASES[0])
    assert not b["image"][0, 0].any() and b["point_labels"][0, 0, 0] == -1  # slice -1 does not exist
    np.testing.assert_array_equal(b["image"][0, 2, :10, :12], image[1])
    np.testing.assert_array_equal(b["image"][3, 0, :10, :12], image[2])
    assert b["point_labels"][5, 2, 0] == -1


def test_slice_policies(tiny_cache):
    ids = list(CASES)
    assert len(slice_table(tiny_cache, ids, "all")) == 12
    assert slice_table(tiny_cache, ids, "tumour")[:, 1].tolist() == [2, 3, 2, 3]
    plus = slice_table(tiny_cache, ids, "tumour_plus", empty_fraction=0.5)
    assert len(plus) == 6  # per case 2 tumour slices + half of the 2 empty brain slices (z 1, 4)
    assert set(plus[:, 1].tolist()) <= {1, 2, 3, 4}
    with pytest.raises(KeyError, match="not in the cache"):
        slice_table(tiny_cache, ["BraTS-GLI-09999-000"])


def test_click_policies_on_empty_slices(tiny_cache):
    skip = _all_elements(
        make_dataset(tiny_cache, list(CASES), batch_size=2, click_policy="skip_empty", shuffle=False, num_epochs=1)
    )
    assert len(skip) == 2 and all(b["mask"][:, 0].any(axis=(1, 2)).all() for b in skip)
    paper = _all_elements(
        make_dataset(tiny_cache, list(CASES), batch_size=12, click_policy="paper", shuffle=False, num_epochs=1)
    )
    assert (paper[0]["point_labels"] == 1).all()


def test_crop_canvas(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path / "data")
    cache = build_cache(tmp_path / "data", tmp_path / "cache", crop_to_brain=True)
    (b,) = _all_elements(make_dataset(cache, cache.case_ids, batch_size=4, shuffle=False, num_epochs=1))
    assert b["image"].shape[2:4] == (12, 12) and b["valid_hw"].tolist() == [[8, 8]] * 4
    assert not b["image"][:, :, 8:].any() and not b["image"][:, :, :, 8:].any()
    assert b["slice_index"].tolist() == [1, 2, 3, 4]  # volume indices, not cropped ones


def test_one_epoch_visits_every_slice_once(tiny_cache):
    dataset = make_dataset(tiny_cache, list(CASES), batch_size=5, seed=3, num_epochs=1)
    pairs = [(int(c), int(k)) for b in _all_elements(dataset) for c, k in zip(b["case_index"], b["slice_index"])]
    assert sorted(pairs) == [(c, k) for c in range(2) for k in range(6)]
    assert pairs != sorted(pairs)  # shuffled


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(batches_a, batches_b):
    return all(np.array_equal(a[k], b[k]) for a, b in zip(batches_a, batches_b) for k in a)


def test_seeded_and_resumable(tiny_cache):
    dataset = make_dataset(tiny_cache, list(CASES), batch_size=3, seed=5)
    iterator = make_iterator(dataset)
    _take(iterator, 5)  # crosses an epoch boundary (12 slices = 4 batches)
    state = iterator.get_state()
    after = _take(iterator, 6)
    resumed = make_iterator(dataset)
    resumed.set_state(state)
    assert _same(_take(resumed, 6), after)
    assert _same(_take(make_iterator(dataset), 4), _take(make_iterator(dataset), 4))
    other = make_dataset(tiny_cache, list(CASES), batch_size=3, seed=6)
    assert not _same(_take(make_iterator(other), 4), _take(make_iterator(dataset), 4))


@pytest.mark.slow
def test_resume_with_worker_processes(tiny_cache):
    dataset = make_dataset(tiny_cache, list(CASES), batch_size=3, seed=5)
    iterator = make_iterator(dataset, num_workers=2)
    _take(iterator, 3)
    state = iterator.get_state()
    after = _take(iterator, 4)
    resumed = make_iterator(dataset, num_workers=2)
    resumed.set_state(state)
    assert _same(_take(resumed, 4), after)
    assert _same(_take(make_iterator(dataset), 7)[3:], after)  # same elements as without workers


def test_phantom_through_the_pipeline(phantom_dir, tmp_path):
    cache = build_cache(phantom_dir, tmp_path / "cache", domain="PED", crop_to_brain=True)
    dataset = make_dataset(cache, cache.case_ids, slice_policy="tumour", batch_size=8, seed=0, z=1)
    b = dataset[0]
    assert b["image"].shape == (8, 1, 240, 240, 4)
    for i in range(8):
        x, y = b["point_coords"][i, 0, 0].astype(int)
        assert b["point_labels"][i, 0, 0] == 1 and b["mask"][i, 0, y, x] == 1


class _Drawn:
    """A generator stand-in whose random slice is chosen by the test."""

    def __init__(self, i):
        self.i = i

    def integers(self, n):
        assert 0 <= self.i < n
        return self.i


def _select_equi_slices(index, depth):
    """vpulab/med-sam-brain utils.py `SelectEquiSlices(4, masks)`, transcribed: `index` is its
    `random.randint(0, masks.shape[-1] - 1)`, `depth` its `masks.shape[-1]`."""
    i_slices = [index]
    if index - 20 <= 0:
        if index - 10 <= 0:
            i_slices += [index + 10, index + 20, index + 30]
        else:
            i_slices += [index - 10, index + 10, index + 20]
    else:
        if index + 20 >= depth - 1:
            if index + 10 >= depth - 1:
                i_slices += [index - 10, index - 20, index - 30]
            else:
                i_slices += [index + 10, index - 10, index - 20]
        else:
            i_slices += [index - 10, index + 10, index + 20]
    return i_slices


@pytest.mark.parametrize("n", [41, 100, 144, 155])  # 41: the shortest volume the original keeps inside
def test_spaced_slices_are_the_original_select_equi_slices(n):
    for i in range(n):
        original = _select_equi_slices(i, n)
        assert all(0 <= s < n for s in original)
        assert spaced_slices(n, _Drawn(i), 4).tolist() == sorted(original), i
    # Near the ends, e.g. the last slice draws the three below it; a draw 20 in keeps i − 10.
    assert spaced_slices(155, _Drawn(154), 4).tolist() == [124, 134, 144, 154]
    assert spaced_slices(155, _Drawn(20), 4).tolist() == [10, 20, 30, 40]


def test_spaced_slices_clamp_a_volume_shorter_than_the_set():
    assert spaced_slices(25, _Drawn(12), 4).tolist() == [2, 12, 22, 24]  # the original: index 32 out of range
    assert spaced_slices(25, _Drawn(3), 1).tolist() == [3] and spaced_slices(155, _Drawn(154), 2).tolist() == [144, 154]


def test_a_volume_batch_is_one_case_per_step(tiny_cache):
    dataset = make_dataset(tiny_cache, list(CASES), batch_size=1, volume_batch=4, seed=1, num_epochs=1)
    assert len(dataset) == len(CASES)
    elements = _all_elements(dataset)
    assert sorted(int(e["case_index"][0]) for e in elements) == [0, 1]
    for e in elements:
        assert e["image"].shape[:2] == (4, 1) and len(set(e["case_index"].tolist())) == 1
        # 6-slice volumes: the drawn slice, and its companions above it clamped at the last slice.
        drawn, *companions = e["slice_index"].tolist()
        assert 0 <= drawn <= 5 and companions == [5, 5, 5]
    with pytest.raises(ValueError, match="batch_size must be 1"):
        make_dataset(tiny_cache, list(CASES), batch_size=2, volume_batch=4)
    # Repeated forever, as training streams it.
    streamed = make_iterator(make_dataset(tiny_cache, list(CASES), batch_size=1, volume_batch=4, seed=1))
    assert [next(streamed)["image"].shape[0] for _ in range(3)] == [4, 4, 4]


def test_batches_carry_each_slices_box(tiny_cache):
    common = dict(batch_size=6, shuffle=False, num_epochs=1, seed=1)
    clicks_only = make_dataset(tiny_cache, list(CASES), **common)
    assert "boxes" not in clicks_only[0] and "has_box" not in clicks_only[0]
    tight = make_dataset(tiny_cache, list(CASES), prompt="box", box_shift=0, **common)
    jittered = make_dataset(tiny_cache, list(CASES), prompt="both", **common)
    for i in range(len(tight)):
        b, j = tight[i], jittered[i]
        assert b["boxes"].shape == (6, 1, 4) and b["boxes"].dtype == np.float32 and b["has_box"].dtype == bool
        has_tumour = b["mask"][:, 0].any(axis=(1, 2))
        np.testing.assert_array_equal(b["has_box"][:, 0], has_tumour)
        np.testing.assert_array_equal(j["has_box"], b["has_box"])
        # the fixture's tumour: columns (x) 4..5, rows (y) 3..4 of the canvas
        assert b["boxes"][has_tumour, 0].tolist() == [[4, 3, 5, 4]] * int(has_tumour.sum())
        assert not b["boxes"][~has_tumour].any()
        outward = (j["boxes"][has_tumour, 0] - b["boxes"][has_tumour, 0]) * [-1, -1, 1, 1]
        assert outward.min() >= 0 and outward.max() <= 5
        upper = np.array([12 - 1, 10 - 1] * 2)  # the 10 x 12 slice (rows x columns)
        assert (j["boxes"][has_tumour, 0] <= upper).all()
    assert sum(int(tight[i]["has_box"].sum()) for i in range(len(tight))) == 4  # z 2..3 of two cases


def test_unknown_prompt_is_refused(tiny_cache):
    with pytest.raises(ValueError, match="unknown prompt 'boxes'"):
        make_dataset(tiny_cache, list(CASES), prompt="boxes")
