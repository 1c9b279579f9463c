"""The paper's per-slice Dice protocol on hand-worked slices."""

import numpy as np
import pytest

from sam_jax.metrics import MetricInputError, dice_per_slice, paper_slice_dice


def test_dice_per_slice_hand_values():
    pred = np.zeros((4, 3, 3), bool)
    gt = np.zeros((4, 3, 3), bool)
    # slice 0: both empty -> 1; slice 1: gt only -> 0; slice 2: pred only -> 0
    gt[1, 0, 0] = True
    pred[2, 1, 1] = True
    # slice 3: pred 2 px, gt 3 px, overlap 1 -> 2*1/(2+3)
    pred[3, 0, :2] = True
    gt[3, 0, 1:] = True
    gt[3, 1, 1] = True
    np.testing.assert_allclose(dice_per_slice(pred, gt), [1.0, 0.0, 0.0, 2 / 5])


def test_thresholds_apply_to_logits_not_probabilities():
    logits = np.full((2, 4, 4), -5.0)
    gt = np.zeros((2, 4, 4), bool)
    gt[0, 0, :4] = True
    logits[0, 0, :4] = [0.95, 0.95, 0.6, 0.2]
    # Slice 0, pred sizes per threshold 0.1/0.3/0.5/0.7/0.9: 4, 3, 3, 2, 2, all inside the 4-pixel gt.
    slice0 = [1.0, 6 / 7, 6 / 7, 4 / 6, 4 / 6]
    # Slice 1 is empty in both at every threshold -> 1.
    expected = np.mean([(d + 1.0) / 2 for d in slice0])
    assert paper_slice_dice(logits, gt) == pytest.approx(expected)
    # Read as probabilities (sigmoid 0.72, 0.72, 0.65, 0.55) the slice would score 1, 1, 1, 4/6, 0 instead.
    as_probabilities = np.mean([(d + 1.0) / 2 for d in (1.0, 1.0, 1.0, 4 / 6, 0.0)])
    assert paper_slice_dice(logits, gt) != pytest.approx(as_probabilities)


def test_threshold_set_is_a_parameter():
    logits = np.array([[[0.05, -1.0], [-1.0, -1.0]]])
    gt = np.array([[[True, False], [False, False]]])
    assert paper_slice_dice(logits, gt, thresholds=(0.0,)) == 1.0
    assert paper_slice_dice(logits, gt, thresholds=(0.1,)) == 0.0
    assert paper_slice_dice(logits, gt, thresholds=(0.0, 0.1)) == 0.5


def test_soft_gt_is_binarised_at_each_threshold():
    logits = np.array([[[1.0, 1.0]]])
    soft_gt = np.array([[[1.0, 0.4]]])
    # thresholds 0.3: gt 2 px, pred 2 px -> 1; 0.5: gt 1 px, pred 2 px -> 2/3
    assert paper_slice_dice(logits, soft_gt, thresholds=(0.3, 0.5)) == pytest.approx((1 + 2 / 3) / 2)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(MetricInputError, match="logits"):
        paper_slice_dice(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    with pytest.raises(MetricInputError, match="shape"):
        paper_slice_dice(np.zeros((1, 2, 2)), np.zeros((1, 2, 3), bool))
    with pytest.raises(MetricInputError, match="gt"):
        dice_per_slice(np.zeros((1, 2, 2), bool), np.full((1, 2, 2), 2))
