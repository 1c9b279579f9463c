"""BraTS 2023 lesion-wise Dice/HD95 on hand-built lesion layouts; every expected value is worked out in comments.

HD95 surfels (the evaluator's): voxel-corner lattice points on a mask's surface weighted by area; at 1 mm a 4x4x4
cube's end face holds 18.35 mm² and each ring between 14.83 mm² (81.19 mm² in all). Where a layout is not worked by
hand, `reference_hd95` (a geometric re-derivation for masks made of boxes) gives the value.
"""

import numpy as np
import pytest
from box_geometry import boxes_mask, reference_hd95

from sam_jax.metrics import BRATS_2023_LESION_RULES, MetricInputError, lesion_wise_scores

SHAPE = (8, 8, 40)


def box(x_start, x_size, size=4):
    """A size^2 x x_size block at rows/slices 2..2+size, columns x_start..x_start+x_size."""
    mask = np.zeros(SHAPE, bool)
    mask[2 : 2 + size, 2 : 2 + size, x_start : x_start + x_size] = True
    return mask


EMPTY = np.zeros(SHAPE, bool)
CUBE_A = box(0, 4)  # 64 voxels
CUBE_FAR = box(30, 4)  # 64 voxels, far from CUBE_A for any dilation


def test_both_empty():
    result = lesion_wise_scores(EMPTY, EMPTY)
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert (result.legacy_dice, result.legacy_hd95) == (1.0, 0.0)
    assert result.lesions == () and result.false_positive_labels == ()


def test_empty_ground_truth_makes_every_prediction_a_false_positive():
    result = lesion_wise_scores(CUBE_A, EMPTY)
    assert (result.dice, result.hd95) == (0.0, 374.0)
    assert (result.legacy_dice, result.legacy_hd95) == (0.0, 374.0)
    assert result.num_false_positive == 1


def test_empty_prediction_misses_every_lesion():
    result = lesion_wise_scores(EMPTY, CUBE_A)
    assert (result.dice, result.hd95) == (0.0, 374.0)
    assert (result.num_true_positive, result.num_false_negative, result.num_false_positive) == (0, 1, 0)


def test_two_lesions_one_missed():
    # Found lesion: Dice 1, HD95 0; missed lesion: Dice 0, HD95 374; mean over the 2 lesions.
    result = lesion_wise_scores(CUBE_A, CUBE_A | CUBE_FAR)
    assert result.dice == pytest.approx(0.5)
    assert result.hd95 == pytest.approx(187.0)
    assert (result.num_true_positive, result.num_false_negative) == (1, 1)
    assert result.legacy_dice == pytest.approx(2 * 64 / (64 + 128))


def test_false_positive_lesion():
    # One perfect lesion plus one predicted lesion touching no ground truth: (1 + 0) / (1 + 1), (0 + 374) / 2.
    result = lesion_wise_scores(CUBE_A | CUBE_FAR, CUBE_A)
    assert result.dice == pytest.approx(0.5)
    assert result.hd95 == pytest.approx(187.0)
    assert result.num_false_positive == 1


def test_small_lesion_is_dropped_but_its_prediction_is_no_false_positive():
    small = box(30, 3, size=3)  # 27 voxels <= 50
    gt = CUBE_A | small
    found_large = lesion_wise_scores(CUBE_A, gt)
    assert (found_large.dice, found_large.hd95) == (1.0, 0.0)
    assert [s.counted for s in found_large.lesions] == [True, False]
    assert [s.voxels for s in found_large.lesions] == [64, 27]
    found_both = lesion_wise_scores(gt, gt)
    assert (found_both.dice, found_both.hd95, found_both.num_false_positive) == (1.0, 0.0, 0)
    # Only the small lesion found: the large one is missed, the small one's prediction is not a false positive.
    found_small = lesion_wise_scores(small, gt)
    assert (found_small.dice, found_small.hd95, found_small.num_false_positive) == (0.0, 374.0, 0)


def test_size_threshold_is_a_volume_in_mm3():
    # 27 voxels of 1 x 1 x 2 mm = 54 mm^3 > 50: the lesion counts, and it is missed.
    small = box(30, 3, size=3)
    result = lesion_wise_scores(EMPTY, small, spacing=(1.0, 1.0, 2.0))
    assert (result.dice, result.hd95) == (0.0, 374.0)
    assert result.lesions[0].volume_mm3 == pytest.approx(54.0)


def test_lesions_merged_by_dilation_depend_on_the_domain():
    cube_b = box(7, 4)  # 3 empty columns (x = 4, 5, 6) between it and CUBE_A
    gt = CUBE_A | cube_b
    # GLI (3 dilations): one lesion of 128 voxels; the prediction CUBE_A gives Dice 2*64/(64+128) = 2/3.
    # HD95: CUBE_A's surfels coincide with the lesion's; cube_b's lie on corner planes 3..7 columns from CUBE_A's
    # facing side. Cumulative area share: 50 % at 0, then 61, 70, 80, 89 % up to 6 columns, 100 % at 7: HD95 = 7.
    gli = lesion_wise_scores(CUBE_A, gt, domain="GLI")
    assert len(gli.lesions) == 1
    assert gli.dice == pytest.approx(2 / 3)
    assert gli.hd95 == pytest.approx(7.0)
    # MEN (1 dilation): the dilations stop at x = 4 and x = 6, so two lesions, one found and one missed.
    men = lesion_wise_scores(CUBE_A, gt, domain="MEN")
    assert len(men.lesions) == 2
    assert (men.dice, men.hd95) == (pytest.approx(0.5), pytest.approx(187.0))
    # The parameter overrides the domain's default.
    assert len(lesion_wise_scores(CUBE_A, gt, domain="GLI", dilation_iterations=1).lesions) == 2


def test_prediction_next_to_a_lesion_is_matched_not_a_false_positive():
    # A cube one empty column beyond CUBE_A lies inside its 3-voxel dilation: matched with Dice 0 and a finite
    # HD95. Each cube's surfels lie on corner planes 1..5 columns from the other's facing side; the far end face
    # holds 21.7 % of the area (at 2 mm columns), so HD95 = 5 columns of 2 mm = 10 mm.
    near = box(5, 4)
    result = lesion_wise_scores(near, CUBE_A, spacing=(1.0, 1.0, 2.0))
    assert result.num_false_positive == 0
    assert result.lesions[0].matched_pred_labels == (1,)
    assert (result.dice, result.hd95) == (0.0, pytest.approx(10.0))


def test_one_prediction_spanning_two_lesions_scores_against_each():
    # A 4x4x24 bar (384 voxels) covers CUBE_A (x 0..3) and a cube at x 20..23: each lesion's Dice is
    # 2*64/(384+64) = 2/7. HD95 per lesion: the bar's surfels lie 0 to 20 columns from the cube's surface, the far
    # end face (18.35 of 377.76 mm², 4.9 % < 5 %) alone at 20, the next ring at 19: the 95th percentile is 19.
    # The cube's surfels are all within 2 of the bar's. Max of the two directions: 19. (Counting surface voxels,
    # the far end was 16 of 296, 5.4 %, and HD95 was 20.)
    far_end = box(20, 4)
    bar = box(0, 24)
    result = lesion_wise_scores(bar, CUBE_A | far_end)
    assert len(result.lesions) == 2 and result.num_false_positive == 0
    assert [s.dice for s in result.lesions] == [pytest.approx(2 / 7)] * 2
    assert result.dice == pytest.approx(2 / 7)
    assert [s.hd95 for s in result.lesions] == [pytest.approx(19.0)] * 2
    assert result.hd95 == pytest.approx(19.0)


BIG_SHAPE = (40, 40, 64)
LARGE = ((10, 10, 10), (11, 11, 11))  # 1331 voxels


def small_beyond_large(gap):
    """A 3x3x3 (27-voxel) lesion `gap` empty columns beyond LARGE's x = 20 face, facing it."""
    return ((14, 14, 21 + gap), (3, 3, 3))


def test_missed_27_voxel_lesion_merged_with_a_large_one():
    # Gap 5 < 7: the 3-voxel dilations touch, so GLI scores one 1358-voxel lesion against the prediction LARGE.
    # The small part holds 42.7 of 729.3 mm² of the lesion's surfels (5.9 % > 5 %) and its facing side is 5 mm
    # from LARGE: HD95 = 5 mm, lesion-wise and legacy alike. (Counting surface voxels, 26 of 628 = 4.1 %: 0.)
    gt = boxes_mask(BIG_SHAPE, [LARGE, small_beyond_large(5)])
    result = lesion_wise_scores(boxes_mask(BIG_SHAPE, [LARGE]), gt, domain="GLI")
    assert [s.voxels for s in result.lesions] == [1358]
    assert result.hd95 == pytest.approx(5.0)
    assert result.legacy_hd95 == pytest.approx(5.0)


def test_missed_27_voxel_lesion_apart_from_a_large_one():
    # Gap 25: a lesion of its own, at most 50 mm³, so left out of the lesion-wise means (its own score, missed, is
    # 374) while the legacy whole-volume HD95 still sees it 25 mm away.
    gt = boxes_mask(BIG_SHAPE, [LARGE, small_beyond_large(25)])
    result = lesion_wise_scores(boxes_mask(BIG_SHAPE, [LARGE]), gt, domain="GLI")
    assert [(s.voxels, s.counted, s.hd95) for s in result.lesions] == [(1331, True, 0.0), (27, False, 374.0)]
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert result.legacy_hd95 == pytest.approx(25.0)


def test_tiny_lesion_at_the_border_anisotropic():
    # A 3x3x3 lesion in the volume's corner, 3 mm columns (81 mm³ > 50: counted), predicted one column further
    # along. Each mask's end face away from the other is 3 mm from the other's surface and holds 18.3 % of the
    # surfel area; everything else is within 1 mm: HD95 = 3 mm.
    shape, spacing = (6, 6, 8), (1.0, 1.0, 3.0)
    lesion, shifted = ((0, 0, 0), (3, 3, 3)), ((0, 0, 1), (3, 3, 3))
    result = lesion_wise_scores(boxes_mask(shape, [shifted]), boxes_mask(shape, [lesion]), spacing)
    assert result.lesions[0].counted
    assert result.hd95 == pytest.approx(3.0)
    assert result.hd95 == pytest.approx(reference_hd95([shifted], [lesion], spacing), abs=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 3.0), (0.5, 0.8, 2.5)])
def test_per_lesion_hd95_matches_the_reference(spacing):
    # Two tiny lesions, one at the volume border, each predicted off by a voxel or two on every axis; the
    # lesion-wise HD95 is the mean of the two per-lesion values, whatever the size rule.
    shape = (9, 9, 30)
    lesions = [((0, 0, 0), (3, 3, 3)), ((4, 5, 20), (3, 3, 3))]
    predictions = [((1, 1, 1), (3, 2, 3)), ((5, 3, 22), (3, 3, 3))]
    result = lesion_wise_scores(
        boxes_mask(shape, predictions), boxes_mask(shape, lesions), spacing, small_lesion_mm3=0.0
    )
    expected = [reference_hd95([p], [g], spacing) for p, g in zip(predictions, lesions)]
    assert [s.hd95 for s in result.lesions] == pytest.approx(expected, abs=1e-6)
    assert result.hd95 == pytest.approx(sum(expected) / 2, abs=1e-6)


def test_domain_table_matches_the_2023_challenge():
    assert {
        d: (r.dilation_iterations, r.small_lesion_mm3) for d, r in BRATS_2023_LESION_RULES.items() if d != "MET"
    } == {"GLI": (3, 50.0), "SSA": (3, 50.0), "PED": (3, 50.0), "MEN": (1, 50.0)}


def test_bad_inputs_raise_named_errors():
    with pytest.raises(MetricInputError, match="domain"):
        lesion_wise_scores(EMPTY, EMPTY, domain="BRAIN")
    with pytest.raises(MetricInputError, match="3-D"):
        lesion_wise_scores(EMPTY[0], EMPTY[0])
    with pytest.raises(MetricInputError, match="dilation_iterations"):
        lesion_wise_scores(EMPTY, EMPTY, dilation_iterations=-1)
