"""Masks made of boxes and the BraTS 2023 evaluator's HD95 re-derived for them from geometry alone: the independent
reference the metrics tests pin `sam_jax.metrics` against."""

import numpy as np


def cube(shape, corner, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return mask


def boxes_mask(shape, boxes):
    mask = np.zeros(shape, bool)
    for corner, size in boxes:
        mask |= cube(shape, corner, size)
    return mask


def box_surfels(corner, size, spacing):
    """Surface elements of one box of voxels, from geometry alone: the voxel-corner lattice points on the box's
    boundary (corner-lattice point i lies between voxels i - 1 and i) and the area of the marching-cubes patch around
    each. A face point carries a flat s_a·s_b rectangle, an edge point a 45° strip s_k·|(s_a, s_b)|/2, a corner
    point the triangle through three half-edges, |(s_a·s_b, s_a·s_c, s_b·s_c)|/8."""
    s = np.asarray(spacing, float)
    lattice = np.stack(np.meshgrid(*[np.arange(n + 1) for n in size], indexing="ij"), -1).reshape(-1, 3)
    extreme = (lattice == 0) | (lattice == np.asarray(size))
    on_surface = extreme.any(axis=1)
    lattice, extreme = lattice[on_surface], extreme[on_surface]
    count = extreme.sum(axis=1)
    face = np.prod(s) / (s * extreme).sum(axis=1)
    edge = (s * ~extreme).sum(axis=1) * np.sqrt(((s * extreme) ** 2).sum(axis=1)) / 2
    corner_area = np.linalg.norm(np.prod(s) / s) / 8
    area = np.select([count == 1, count == 2], [face, edge], corner_area)
    return (lattice + np.asarray(corner)) * s, area


def reference_hd95(boxes_a, boxes_b, spacing):
    """HD95 of two masks, each a union of boxes at least one empty voxel apart (so no 2×2×2 neighbourhood mixes two
    boxes): per direction the smallest distance whose cumulative surfel area reaches 95 %; the larger direction."""

    def surfels(boxes):
        parts = [box_surfels(c, z, spacing) for c, z in boxes]
        return np.concatenate([p for p, _ in parts]), np.concatenate([a for _, a in parts])

    def directed(source, target):
        (points, area), (other, _) = source, target
        nearest = np.sqrt(((points[:, None, :] - other[None, :, :]) ** 2).sum(-1)).min(axis=1)
        order = np.argsort(nearest, kind="stable")
        reached = np.cumsum(area[order]) / area.sum()
        return nearest[order][min(np.searchsorted(reached, 0.95), len(order) - 1)]

    a, b = surfels(boxes_a), surfels(boxes_b)
    return max(directed(a, b), directed(b, a))
