"""Volumetric Dice and HD95 on hand-worked masks, with a brute-force cross-check of HD95."""

import math

import numpy as np
import pytest

from sam_jax.metrics import BRATS_MAX_HD95, MetricInputError, dice_3d, hd95


def cube(shape, corner, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return mask


def test_dice_3d_empty_conventions_and_overlap():
    empty = np.zeros((8, 8, 8), bool)
    a = cube((8, 8, 8), (0, 0, 0), (2, 2, 2))  # 8 voxels
    b = cube((8, 8, 8), (1, 0, 0), (2, 2, 2))  # 8 voxels, 4 shared
    assert dice_3d(empty, empty) == 1.0
    assert dice_3d(a, empty) == 0.0
    assert dice_3d(empty, a) == 0.0
    assert dice_3d(a, b) == pytest.approx(2 * 4 / 16)


def test_hd95_empty_conventions():
    empty = np.zeros((8, 8, 8), bool)
    a = cube((8, 8, 8), (0, 0, 0), (2, 2, 2))
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == BRATS_MAX_HD95 == 374.0
    assert hd95(empty, a) == 374.0
    assert math.isnan(hd95(a, empty, one_empty=float("nan")))


def test_hd95_diagonally_shifted_cubes_anisotropic():
    # 2x2x2 cubes, all voxels on the surface, shifted by (3, 4, 0) voxels. The farthest voxel of either cube is 3
    # slices and 4 rows from the other cube's nearest voxel; 2 of 8 voxels (25 % > 5 %) sit there, so HD95 = max.
    spacing = (2.0, 1.5, 0.5)
    a = cube((10, 10, 4), (0, 0, 0), (2, 2, 2))
    b = cube((10, 10, 4), (3, 4, 0), (2, 2, 2))
    assert hd95(a, b, spacing) == pytest.approx(math.hypot(3 * 2.0, 4 * 1.5))


def test_hd95_cubes_shifted_along_the_coarse_axis():
    # 4^3 cubes at x 0..3 and 6..9. The 56 surface voxels of each lie 3, 4, 5, 6 x-steps from the other's facing
    # side (16, 12, 12, 16 voxels); the 95th percentile (rank 54 of 56) is 6 steps of 2.5 mm.
    a = cube((6, 6, 12), (1, 1, 0), (4, 4, 4))
    b = cube((6, 6, 12), (1, 1, 6), (4, 4, 4))
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(15.0)


def test_hd95_ignores_a_single_outlier_voxel():
    # gt: 4^3 cube (56 surface voxels); pred adds one far voxel: 1 of 57 distances is large (< 5 %), so HD95 = 0
    # while the plain Hausdorff distance would be 15·√3 ≈ 26 mm.
    gt = cube((24, 24, 24), (2, 2, 2), (4, 4, 4))
    pred = gt.copy()
    pred[20, 20, 20] = True
    assert hd95(pred, gt) == 0.0


def brute_force_hd95(a, b, spacing):
    def surface_coords(mask):
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        all_neighbours_in = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                all_neighbours_in &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inner & ~all_neighbours_in) * np.asarray(spacing)

    def directed(p, q):
        nearest = np.sqrt(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)).min(axis=1)
        return np.sort(nearest)[math.ceil(0.95 * len(nearest)) - 1]

    sa, sb = surface_coords(a), surface_coords(b)
    return max(directed(sa, sb), directed(sb, sa))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    spacing = (1.3, 0.7, 2.0)
    a = rng.random((12, 12, 12)) < 0.3
    b = rng.random((12, 12, 12)) < 0.3
    a[:, :, :3] = False  # keep the masks unequal in extent, and off one border
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing))


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
