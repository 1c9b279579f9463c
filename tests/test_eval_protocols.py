"""Evaluation protocols on hand-worked cases: paper per-slice Dice over thresholds, volumetric and lesion-wise scores
(empty truth, empty prediction, a missed lesion, a false-positive lesion), RITM clicks, 3-D propagation, tables."""

import numpy as np
import pytest
from stand_in_segmenters import ComponentSegmenter, SquareSegmenter

from sam_jax.evaluation.evaluate import interactive_scores, summarise
from sam_jax.evaluation.paper_protocol import paper_clicks
from sam_jax.evaluation.propagation import UNREACHED, propagate
from sam_jax.evaluation.tables import grid, markdown
from sam_jax.evaluation.volumetric import volumetric_scores
from sam_jax.metrics import BRATS_MAX_HD95, paper_scores


def test_paper_score_of_a_hand_worked_volume():
    truth = np.zeros((2, 4, 4), bool)
    truth[1, :2, :2] = True  # slice 0 empty, slice 1: four tumour pixels
    logits = np.full((2, 4, 4), -5.0)
    logits[1, 0, :2] = 0.6  # two pixels survive thresholds 0.1 … 0.5, none from 0.7
    logits[1, 1, :2] = 0.2  # two more at 0.1 only
    # Per threshold, slice means: 0.1 → (1 + 1)/2, 0.3 and 0.5 → (1 + 2·2/6)/2, 0.7 and 0.9 → (1 + 0)/2.
    expected = (1 + 5 / 6 + 5 / 6 + 1 / 2 + 1 / 2) / 5
    scores = paper_scores(logits, truth)
    assert scores["paper_dice"] == pytest.approx(expected)
    assert scores["tumour_slice_dice"] == pytest.approx(1.0)  # at logit 0 all four pixels are predicted


def test_paper_clicks_are_positive_everywhere_and_inside_tumour():
    truth = np.zeros((3, 5, 6), bool)
    truth[1, 2, 4] = True
    coords, labels = paper_clicks(truth, np.random.default_rng(0))
    assert coords.shape == (3, 1, 2) and labels.tolist() == [[1], [1], [1]]  # the paper labels empty slices 1 too
    assert coords[1, 0].tolist() == [4, 2]  # (x, y) = (column, row) of the only tumour pixel


def _cube(mask, corner, size=4):
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True


def test_volumetric_scores_with_a_missed_lesion_and_a_false_positive():
    truth = np.zeros((40, 40, 40), bool)
    _cube(truth, (2, 2, 2))
    _cube(truth, (30, 30, 30))  # missed
    prediction = np.zeros_like(truth)
    _cube(prediction, (2, 2, 2))
    _cube(prediction, (2, 30, 2))  # a false-positive lesion
    scores = volumetric_scores(prediction, truth, (1.0, 1.0, 1.0), "GLI")
    assert scores["dice_3d"] == pytest.approx(2 * 64 / (128 + 128))
    assert (scores["lesions_tp"], scores["lesions_fn"], scores["lesions_fp"]) == (1, 1, 1)
    assert scores["lesion_dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert scores["lesion_hd95"] == pytest.approx((0 + 2 * BRATS_MAX_HD95) / 3)


def test_volumetric_scores_of_empty_truth_and_empty_prediction():
    empty = np.zeros((10, 10, 10), bool)
    both_empty = volumetric_scores(empty, empty, (1, 1, 1), "MEN")
    assert (both_empty["dice_3d"], both_empty["hd95"], both_empty["lesion_dice"]) == (1.0, 0.0, 1.0)
    truth = empty.copy()
    _cube(truth, (3, 3, 3))
    missed = volumetric_scores(empty, truth, (1, 1, 1), "MEN")
    assert (missed["dice_3d"], missed["hd95"], missed["lesion_dice"]) == (0.0, BRATS_MAX_HD95, 0.0)


def test_ritm_clicks_fix_two_squares_in_two_clicks():
    truth = np.zeros((1, 9, 12), bool)
    truth[0, 1:4, 1:4] = True
    truth[0, 5:8, 7:10] = True
    scores = interactive_scores(SquareSegmenter(), np.zeros(1), truth, max_clicks=3, feed_back_mask=False)
    # Click 1 at the centre of one square: Dice 2·9/(9 + 18); click 2 the other square: 1.
    assert scores["dice_after_1"] == pytest.approx(2 / 3)
    assert scores["dice_after_2"] == pytest.approx(1.0) and scores["dice_after_3"] == pytest.approx(1.0)
    assert scores["noc85"] == 2 and scores["noc90"] == 2


def test_interactive_scores_skip_volumes_without_tumour():
    assert interactive_scores(SquareSegmenter(), np.zeros(2), np.zeros((2, 5, 5), bool), 3, False) == {}


def test_propagation_follows_the_tumour_up_and_down_and_stops_where_it_ends():
    truth = np.zeros((8, 10, 10), bool)
    truth[2:6, 3:7, 3:7] = True  # slices 2..5
    truth[7, 0:2, 0:2] = True  # a separate blob that one click per tumour must not reach
    logits = propagate(ComponentSegmenter(truth), np.arange(8), (10, 10), [(4, 4, 3)])
    assert np.array_equal(logits > 0, np.where(np.arange(8)[:, None, None] < 7, truth, False))
    assert (logits[0] == UNREACHED).all() and (logits[7] == UNREACHED).all()  # never prompted


def test_summary_means_skip_failed_cases_and_tables_scale_to_percent():
    rows = [
        {"case": "a", "status": "ok", "paper_dice": 0.5, "tumour_slice_dice": 0.25},
        {"case": "b", "status": "ok", "paper_dice": 0.7, "tumour_slice_dice": float("nan")},
        {"case": "c", "status": "failed", "error": "unreadable"},
    ]
    summary = summarise(rows, ("paper",), model="m", column="VD2")
    assert summary["means"] == {"paper_dice": pytest.approx(0.6), "tumour_slice_dice": 0.25}
    assert summary["failed"] == {"c": "unreadable"} and summary["scored"] == 2
    cells = grid([summary], "paper_dice")
    assert cells == {"m": {"VD2": pytest.approx(60.0)}}
    text = markdown("t", cells, {"published": {"VD1": 61.9, "D3": "<10"}})
    assert "| m |  | 60.0 |  |  |" in text
    assert "| published | 61.9 |  | <10 |  |" in text  # the paper's Tables 1–5: tests/test_eval_tables.py
