"""Volumetric Dice and HD95. HD95 is pinned by hand-worked geometries and by an independent re-derivation of the
BraTS 2023 evaluator's definition for masks made of boxes (`reference_hd95`), never by the library it calls."""

import math

import numpy as np
import pytest
from box_geometry import box_surfels, boxes_mask, cube, reference_hd95

from sam_jax.metrics import BRATS_MAX_HD95, MetricInputError, dice_3d, hd95


def test_reference_surfel_areas_add_up_to_the_box_surface():
    # Beveled edges and corners make the patch areas of a box a little less than its faces' area: a 3x3x3 box at
    # 1 mm has 6 * 4 flat points, 12 * 2 edge points and 8 corners.
    _, area = box_surfels((0, 0, 0), (3, 3, 3), (1.0, 1.0, 1.0))
    assert area.sum() == pytest.approx(24 + 24 * math.sqrt(0.5) + 8 * math.sqrt(3) / 8)


def test_dice_3d_empty_conventions_and_overlap():
    empty = np.zeros((8, 8, 8), bool)
    a = cube((8, 8, 8), (0, 0, 0), (2, 2, 2))  # 8 voxels
    b = cube((8, 8, 8), (1, 0, 0), (2, 2, 2))  # 8 voxels, 4 shared
    assert dice_3d(empty, empty) == 1.0
    assert dice_3d(a, empty) == 0.0
    assert dice_3d(empty, a) == 0.0
    assert dice_3d(a, b) == pytest.approx(2 * 4 / 16)


def test_hd95_empty_conventions():
    # As the BraTS 2023 evaluator: both empty 0, one empty infinite, which it reports as 374.
    empty = np.zeros((8, 8, 8), bool)
    a = cube((8, 8, 8), (0, 0, 0), (2, 2, 2))
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == BRATS_MAX_HD95 == 374.0
    assert hd95(empty, a) == 374.0
    assert math.isnan(hd95(a, empty, one_empty=float("nan")))


def test_hd95_single_voxels_anisotropic():
    # Each voxel has 8 corner surfels of equal area. The corner of a farthest from b is 2, 3 and 1 voxels short of
    # b's nearest corner along the three axes: (1.0, 2.4, 2.5) mm; 1 of 8 equal areas (12.5 % > 5 %) lies there.
    spacing = (0.5, 0.8, 2.5)
    a = cube((6, 6, 4), (0, 0, 0), (1, 1, 1))
    b = cube((6, 6, 4), (2, 3, 1), (1, 1, 1))
    assert hd95(a, b, spacing) == pytest.approx(math.sqrt(1.0**2 + 2.4**2 + 2.5**2))


def test_hd95_concentric_cubes():
    # gt 5^3, pred its centred 3^3 core, 1 mm. Every pred surfel is 1 mm from gt's surface. gt's surfels: 96 face
    # points (1 mm² each) 1 mm away, 48 edge points (√½ mm² each, 33.9 in all) √2 mm away, 8 corners (1.7 mm²)
    # √3 mm away: 98.7 % of the area is within √2, so HD95 = √2. (Counting surface voxels instead, the corner
    # and edge voxels are 44 of 98 and HD95 was √3.)
    gt = cube((7, 7, 7), (1, 1, 1), (5, 5, 5))
    pred = cube((7, 7, 7), (2, 2, 2), (3, 3, 3))
    assert hd95(pred, gt) == pytest.approx(math.sqrt(2))
    assert hd95(pred, gt) == pytest.approx(
        reference_hd95([((2, 2, 2), (3, 3, 3))], [((1, 1, 1), (5, 5, 5))], (1.0, 1.0, 1.0))
    )


@pytest.mark.parametrize("gap", [5, 25])
def test_hd95_missed_27_voxel_lesion_beside_a_large_one(gap):
    # gt: an 11^3 lesion and a 3x3x3 one `gap` empty columns beyond it, facing it; pred: the large lesion only.
    # Surfel areas: large 686.6 mm², small 42.7 mm² (5.9 % > 5 %), so the 95th percentile of gt → pred falls on
    # the small lesion's facing side, `gap` mm away. (Counting surface voxels, the small lesion had 26 of 628,
    # 4.1 % < 5 %, and HD95 was 0.)
    shape = (40, 40, 64)
    large, small = ((10, 10, 10), (11, 11, 11)), ((14, 14, 21 + gap), (3, 3, 3))
    gt, pred = boxes_mask(shape, [large, small]), boxes_mask(shape, [large])
    assert hd95(pred, gt) == pytest.approx(float(gap))
    assert hd95(gt, pred) == pytest.approx(float(gap))
    assert reference_hd95([large], [large, small], (1.0, 1.0, 1.0)) == pytest.approx(float(gap))


def test_hd95_diagonally_shifted_cubes_anisotropic():
    # 2x2x2 cubes shifted by (3, 4, 0) voxels. a's corner column at (0, 0, ·) lies (3 * 2.0, 4 * 1.5) mm from b's
    # nearest surface; its 3 surfels hold 1.44 of 27.76 mm² (5.2 % > 5 %), so HD95 is that distance.
    spacing = (2.0, 1.5, 0.5)
    a = cube((10, 10, 4), (0, 0, 0), (2, 2, 2))
    b = cube((10, 10, 4), (3, 4, 0), (2, 2, 2))
    assert hd95(a, b, spacing) == pytest.approx(math.hypot(3 * 2.0, 4 * 1.5))


def test_hd95_cubes_shifted_along_the_coarse_axis():
    # 4^3 cubes at x 0..3 and 6..9, 2.5 mm along x. a's surfels lie on corner planes x = 0..4, 6 to 2 steps from
    # b's facing side; the far face (x = 0) holds 27.0 of 165.2 mm² (16 % > 5 %): HD95 = 6 * 2.5 mm.
    a = cube((6, 6, 12), (1, 1, 0), (4, 4, 4))
    b = cube((6, 6, 12), (1, 1, 6), (4, 4, 4))
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(15.0)


def test_hd95_ignores_a_single_outlier_voxel():
    # gt: 4^3 cube (81.2 mm² of surfels); pred adds one far voxel (8 corner surfels, 1.7 mm², 2.1 % < 5 %), so
    # HD95 = 0 while the plain Hausdorff distance would be about 26 mm.
    gt = cube((24, 24, 24), (2, 2, 2), (4, 4, 4))
    pred = gt.copy()
    pred[20, 20, 20] = True
    assert hd95(pred, gt) == 0.0


HARD_CASES = {
    # name: (shape, boxes of a, boxes of b, spacing)
    "tiny cubes shifted, (1, 1, 3) mm": (
        (8, 8, 10),
        [((1, 1, 2), (3, 3, 3))],
        [((2, 3, 3), (3, 3, 3))],
        (1.0, 1.0, 3.0),
    ),
    "tiny cubes shifted, (0.5, 0.8, 2.5) mm": (
        (8, 8, 10),
        [((1, 1, 2), (3, 3, 3))],
        [((3, 2, 4), (3, 3, 3))],
        (0.5, 0.8, 2.5),
    ),
    "touching the volume border": ((6, 7, 8), [((0, 0, 0), (3, 4, 2))], [((3, 4, 0), (3, 3, 8))], (0.5, 0.8, 2.5)),
    "thin slab vs bar at the border": ((5, 9, 9), [((0, 0, 0), (1, 9, 9))], [((2, 3, 3), (3, 2, 2))], (1.0, 1.0, 3.0)),
    "missed tiny lesion, (1, 1, 3) mm": (
        (23, 17, 22),
        [((2, 2, 2), (13, 13, 6))],
        [((2, 2, 2), (13, 13, 6)), ((7, 7, 12), (3, 3, 3))],
        (1.0, 1.0, 3.0),
    ),
    "concentric, (0.5, 0.8, 2.5) mm": ((9, 9, 9), [((2, 2, 2), (3, 3, 3))], [((1, 1, 1), (6, 5, 7))], (0.5, 0.8, 2.5)),
}


@pytest.mark.parametrize("name", sorted(HARD_CASES))
def test_hd95_matches_the_reference_on_hard_cases(name):
    shape, boxes_a, boxes_b, spacing = HARD_CASES[name]
    a, b = boxes_mask(shape, boxes_a), boxes_mask(shape, boxes_b)
    expected = reference_hd95(boxes_a, boxes_b, spacing)
    assert hd95(a, b, spacing) == pytest.approx(expected, abs=1e-6)
    assert hd95(b, a, spacing) == pytest.approx(expected, abs=1e-6)


def random_boxes(rng, shape):
    """1 to 3 boxes, each in its own 8-column slot along the last axis and at most 7 wide there, so boxes stay an
    empty voxel apart; boxes may touch any border of the volume."""
    boxes = []
    for slot in rng.choice(shape[2] // 8, size=int(rng.integers(1, 4)), replace=False):
        size = tuple(int(rng.integers(1, n + 1)) for n in (shape[0], shape[1], 7))
        corner = (
            int(rng.integers(0, shape[0] - size[0] + 1)),
            int(rng.integers(0, shape[1] - size[1] + 1)),
            8 * int(slot) + int(rng.integers(0, 8 - size[2])),
        )
        boxes.append((corner, size))
    return boxes


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_the_reference_on_random_box_layouts(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 10, 32)
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, 3))
    boxes_a, boxes_b = random_boxes(rng, shape), random_boxes(rng, shape)
    assert hd95(boxes_mask(shape, boxes_a), boxes_mask(shape, boxes_b), spacing) == pytest.approx(
        reference_hd95(boxes_a, boxes_b, spacing), abs=1e-6
    )


def test_bad_spacing_and_masks_raise_named_errors():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(MetricInputError, match="spacing"):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(MetricInputError, match="spacing"):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(MetricInputError, match="pred"):
        dice_3d(np.zeros((4, 4, 4), np.float32), a)
    with pytest.raises(MetricInputError, match="shape"):
        dice_3d(a, np.zeros((4, 4, 5), bool))
    with pytest.raises(MetricInputError, match="shape"):
        hd95(a, np.zeros((4, 4, 5), bool))
    with pytest.raises(MetricInputError, match="2-D or 3-D"):
        hd95(np.ones((2, 2, 2, 2), bool), np.ones((2, 2, 2, 2), bool), (1.0,) * 4)
