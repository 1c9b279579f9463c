"""Clicks: (x, y) order, policies on empty slices, the RITM next-click rule, per-component volume clicks."""

import numpy as np
import pytest

from sam_jax.data.clicks import NEGATIVE, NO_CLICK, POSITIVE, next_click, slice_click, uniform_point, volume_clicks


def test_click_is_column_then_row_on_an_asymmetric_mask():
    mask = np.zeros((5, 9), bool)
    mask[2, 7] = True  # row 2, column 7
    point, label = slice_click(mask, np.random.default_rng(0))
    assert point.tolist() == [7.0, 2.0] and label == POSITIVE


def test_positive_clicks_are_uniform_over_the_tumour():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[4, 5] = True
    rng = np.random.default_rng(0)
    hits = [tuple(uniform_point(mask, rng)) for _ in range(2000)]
    assert set(hits) == {(1.0, 1.0), (5.0, 4.0)}
    assert 900 < hits.count((1.0, 1.0)) < 1100  # binomial(2000, 0.5): 4.5 sigma either side


def test_empty_slice_policies():
    empty = np.zeros((8, 8), bool)
    brain = np.zeros((8, 8), bool)
    brain[5:7, 2:4] = True
    rng = np.random.default_rng(1)
    _, paper_label = slice_click(empty, rng, "paper")
    assert paper_label == POSITIVE  # the original's random "positive" click
    for _ in range(20):
        (x, y), label = slice_click(empty, rng, "negative_on_empty", brain)
        assert label == NEGATIVE and brain[int(y), int(x)]
    assert slice_click(empty, rng, "skip_empty")[1] == NO_CLICK
    with pytest.raises(ValueError, match="click policy"):
        slice_click(empty, rng, "bogus")


def _square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_first_ritm_click_is_the_centre_of_the_missed_tumour():
    target = _square((16, 40), top=3, left=20, size=9)  # centre row 7, column 24
    point, label = next_click(target, np.zeros_like(target))
    assert point.tolist() == [24.0, 7.0] and label == POSITIVE


def test_ritm_picks_the_deeper_error_region_and_labels_it():
    target = _square((30, 30), 2, 2, 3)  # a 3x3 false negative, centre (3, 3)
    prediction = _square((30, 30), 15, 10, 7)  # a 7x7 false positive, centre row 18, column 13
    point, label = next_click(target, prediction)
    assert point.tolist() == [13.0, 18.0] and label == NEGATIVE


def test_ritm_skips_clicked_pixels_and_stops_when_perfect():
    target = _square((16, 16), 4, 4, 5)  # centre (6, 6) has depth 3, its 8 neighbours depth 2
    clicked = np.zeros_like(target)
    clicked[6, 6] = True
    point, label = next_click(target, np.zeros_like(target), clicked)
    assert label == POSITIVE and point.tolist() == [5.0, 5.0]  # the first depth-2 pixel in row-major order
    assert next_click(target, target) is None


def test_border_counts_as_region_edge():
    target = np.zeros((10, 10), bool)
    target[:, :3] = True  # a strip along the left border: interior-most column is 1, not 0
    point, _ = next_click(target, np.zeros_like(target))
    assert point[0] == 1.0


def test_volume_clicks_one_per_component_in_voxel_order():
    volume = np.zeros((20, 16, 12), bool)
    volume[2:5, 3:6, 4:7] = True  # 27 voxels, centre (3, 4, 5)
    volume[10:15, 8:13, 2:7] = True  # 125 voxels, centre (12, 10, 4)
    volume[16, 14, 9] = volume[17, 15, 10] = True  # diagonal neighbours: one 26-connected component
    clicks = volume_clicks(volume)
    assert len(clicks) == 3
    assert clicks[0].tolist() == [12, 10, 4] and clicks[1].tolist() == [3, 4, 5]
    assert volume[tuple(clicks[2])]
    assert volume_clicks(np.zeros((3, 3, 3), bool)).shape == (0, 3)
