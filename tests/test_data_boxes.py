"""Box prompts: tight boxes of hand-drawn masks, MedSAM's training jitter, the corner scaling against the click
scaling and one box per tumour component (the pipeline's boxes: tests/test_data_pipeline.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.data.boxes import (
    boxes_per_slice,
    boxes_to_model_frame,
    jittered_box,
    slice_box,
    tight_box,
    volume_boxes,
    widen,
)
from sam_jax.model.frame import click_scale, clicks_to_model_frame, to_model_frame


def test_tight_box_is_the_inclusive_extent():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:8] = True  # rows 2..4, columns 3..7
    mask[6, 4] = True  # row 6 widens the box downward only
    assert tight_box(mask).tolist() == [3, 2, 7, 6]
    one = np.zeros((8, 10), bool)
    one[0, 9] = True
    assert tight_box(one).tolist() == [9, 0, 9, 0]
    assert tight_box(np.zeros((8, 10), bool)) is None


def test_widen_moves_each_side_outward_and_stops_at_the_slice():
    assert widen([3, 2, 7, 6], (8, 10), 1).tolist() == [2, 1, 8, 7]
    assert widen([3, 2, 7, 6], (8, 10), [0, 5, 1, 9]).tolist() == [3, 0, 8, 7]  # top and bottom clipped to 0 and 7


def test_training_jitter_widens_each_side_by_0_to_5_pixels():
    rng = np.random.default_rng(0)
    tight = np.array([20, 30, 40, 50], np.float32)
    drawn = np.stack([jittered_box(tight, (100, 100), rng) for _ in range(2000)])
    outward = (drawn - tight) * [-1, -1, 1, 1]
    for side in range(4):  # every widening 0..5 occurs on every side, nothing else
        assert sorted(set(outward[:, side].tolist())) == [0, 1, 2, 3, 4, 5]
    assert len({tuple(b) for b in drawn}) > 1000  # the sides move independently (6**4 = 1296 combinations)
    at_edge = np.stack([jittered_box(np.array([0, 1, 99, 98], np.float32), (100, 100), rng) for _ in range(200)])
    assert at_edge.min(axis=0)[:2].tolist() == [0, 0] and at_edge.max(axis=0)[2:].tolist() == [99, 99]


def test_a_slice_without_tumour_has_no_box_and_draws_nothing():
    rng, untouched = np.random.default_rng(3), np.random.default_rng(3)
    box, has_box = slice_box(np.zeros((6, 6), bool), rng)
    assert not has_box and box.tolist() == [0, 0, 0, 0]
    assert rng.integers(1 << 30) == untouched.integers(1 << 30)
    tumour = np.zeros((3, 6, 6), bool)
    tumour[0, 1:3, 2:5] = True
    tumour[2, 4, 0] = True
    boxes, has = boxes_per_slice(tumour)
    assert has.tolist() == [True, False, True]
    assert boxes.tolist() == [[2, 1, 4, 2], [0, 0, 0, 0], [0, 4, 0, 4]]


@pytest.mark.parametrize("hw, rule", [((240, 200), "longest_side"), ((180, 240), "stretch")])
def test_box_corners_scale_as_clicks(hw, rule):
    size = 64
    boxes = np.array([[10, 20, 150, 170], [0, 0, 199, 179]], np.float32)
    _, scale = to_model_frame(jnp.zeros((2, 240, 240, 1)), jnp.array([hw, hw], jnp.int32), size, rule)
    corners_as_clicks = clicks_to_model_frame(jnp.asarray(boxes.reshape(2, 2, 2)), scale).reshape(2, 4)
    np.testing.assert_array_equal(boxes_to_model_frame(jnp.asarray(boxes), scale), corners_as_clicks)
    host = boxes_to_model_frame(boxes, np.asarray(click_scale(hw, size, rule), np.float32))
    np.testing.assert_allclose(host, corners_as_clicks, rtol=1e-6)
    sx, sy = size / hw[1], size / hw[0]
    if rule == "longest_side":
        sx = sy = size / max(hw)
    np.testing.assert_allclose(host[0], [10 * sx, 20 * sy, 150 * sx, 170 * sy], rtol=1e-6)  # by hand


def test_volume_boxes_one_per_component_on_its_middle_slice():
    tumour = np.zeros((20, 20, 10), bool)
    tumour[2:6, 3:5, 1:6] = True  # 40 voxels, slices 1..5: middle 3
    tumour[4, 7, 3] = True  # a voxel of its own: rows 5..6 between them are empty
    tumour[10:12, 10:15, 7:9] = True  # 20 voxels, slices 7..8: middle 7
    tumour[11, 16, 7] = True  # a voxel of its own, row 15 empty; ties keep the labelling's (raster) order
    boxes = volume_boxes(tumour)
    assert boxes.tolist() == [[2, 3, 5, 4, 3], [10, 10, 11, 14, 7], [4, 7, 4, 7, 3], [11, 16, 11, 16, 7]]
    assert volume_boxes(np.zeros((4, 4, 4), bool)).shape == (0, 5)
