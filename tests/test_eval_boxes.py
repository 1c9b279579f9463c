"""Box prompts in evaluation, against stand-in models whose answers are known: LiteMedSAM's 3-D propagation from one
box, the box protocol's scores, and the parsing and placing of `eval.predict --boxes`."""

from types import SimpleNamespace

import numpy as np
import pytest
from stand_in_segmenters import BoxSegmenter

from sam_jax.evaluation.box_protocol import box_scores
from sam_jax.evaluation.errors import ClickError
from sam_jax.evaluation.prediction import parse_boxes, slice_boxes, sorted_box
from sam_jax.evaluation.propagation import UNREACHED, propagate


def _moving_square():
    """A 3×3 square (rows 4..6) moving right 2 columns a slice on slices 2..4, then 4 columns to slice 5 (columns
    9..11); slice 6 empty; slice 7 a blob of its own."""
    truth = np.zeros((8, 12, 12), bool)
    for k, col in ((2, 1), (3, 3), (4, 5), (5, 9)):
        truth[k, 4:7, col : col + 3] = True
    truth[7, 0:2, 0:2] = True
    return truth


def test_box_propagation_follows_the_previous_masks_box_widened_by_3():
    truth = _moving_square()
    logits = propagate(BoxSegmenter(truth), np.arange(8), (12, 12), [], [(3, 4, 5, 6, 3)])
    expected = np.zeros_like(truth)
    expected[2, 4:7, 1:4] = True  # slice 3's box (columns 3..5) widened by 3 covers columns 0..8
    expected[3, 4:7, 3:6] = True  # the given box
    expected[4, 4:7, 5:8] = True
    expected[5, 4:7, 9:11] = True  # slice 4's box (columns 5..7) widened by 3 ends at column 10: column 11 is cut
    np.testing.assert_array_equal(logits > 0, expected)
    # slices 1 and 6 are prompted and come back empty, where the walks stop: 0 and 7 are never reached
    assert (logits[[1, 6]] == -5).all() and (logits[[0, 7]] == UNREACHED).all()


def test_box_protocol_scores_tight_and_jittered_boxes_on_tumour_slices():
    tumour = np.zeros((3, 20, 20), bool)
    tumour[0, 5:9, 6:10] = True  # a 4×4 square: its box is exact
    tumour[2, 10:13, 10:13] = True  # an L: 5 pixels of its 3×3 box
    tumour[2, 10:12, 11:13] = False
    seed = 4
    scores = box_scores(BoxSegmenter(), np.arange(3), tumour, np.random.default_rng(seed))
    assert scores["box_dice"] == pytest.approx((1 + 2 * 5 / (5 + 9)) / 2)  # slice 1 (empty) is not scored
    # jitter: each side of each tumour slice's box widened by 0..5, four integers a slice in (left, top, right,
    # bottom) order; the whole box is predicted, so Dice = 2 |T| / (|T| + box area)
    draws = np.random.default_rng(seed).integers(0, 6, (2, 4))
    areas = [(side + d[0] + d[2]) * (side + d[1] + d[3]) for side, d in zip((4, 3), draws)]
    expected = (2 * 16 / (16 + areas[0]) + 2 * 5 / (5 + areas[1])) / 2
    assert scores["box_jitter_dice"] == pytest.approx(expected)
    assert box_scores(BoxSegmenter(), np.arange(2), np.zeros((2, 5, 5), bool), np.random.default_rng(0)) == {}


def test_boxes_are_parsed_sorted_and_placed_in_the_crop():
    assert parse_boxes("1,2,3,4,5; 6,7,8,9,10;").tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    for text, message in (
        ("1,2,3,4", "expected five integers x0,y0,x1,y1,z, got 4"),
        ("a,2,3,4,5", "five integers"),
        (";", "no boxes"),
    ):
        with pytest.raises(ClickError, match=message):
            parse_boxes(text)
    assert sorted_box((9, 2, 5), (3, 7, 5)) == [3, 2, 9, 7, 5]  # a flipped axis swaps the corners back
    with pytest.raises(ClickError, match="different axial slices"):
        sorted_box((1, 2, 3), (4, 5, 6))
    volume = SimpleNamespace(
        shape=(20, 16, 10), box=((2, 18), (3, 13), (1, 9)), case=SimpleNamespace(case_id="BraTS-GLI-00001-000")
    )
    # corners in the volume, clipped to the brain crop, shifted to the crop's origin
    assert slice_boxes(volume, np.array([[0, 5, 10, 15, 4]])) == [(0, 2, 8, 9, 3)]
    with pytest.raises(ClickError, match="outside case BraTS-GLI-00001-000's volume"):
        slice_boxes(volume, np.array([[0, 5, 20, 15, 4]]))
    with pytest.raises(ClickError, match="outside the brain"):
        slice_boxes(volume, np.array([[0, 5, 10, 15, 9]]))  # slice 9 beyond the crop's z 1..8
    with pytest.raises(ClickError, match="outside the brain"):
        slice_boxes(volume, np.array([[0, 0, 1, 2, 4]]))  # wholly left of and above the crop
