"""Fit SAM's 1024-input weights to another input size, with PyTorch's interpolation arithmetic.

The absolute position embedding is resized bicubically to the new token grid, and the global blocks' relative
position tables linearly to 2·grid−1 rows (windowed blocks keep theirs: the window does not change). The
interpolation matrices follow `torch.nn.functional.interpolate(..., align_corners=False)` exactly, so a PyTorch
model built at the new size and given these weights is our reference.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import numpy as np

_CUBIC_A = -0.75  # PyTorch's bicubic kernel


def _cubic_weights(t: float):
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return (far(t + 1), near(t), near(1 - t), far(2 - t))


def interpolation_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """(out_size, in_size) matrix M such that M @ x resizes x along one axis like F.interpolate does."""
    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = scale * (o + 0.5) - 0.5
        if mode == "linear":
            src = max(src, 0.0)
            i0 = min(int(math.floor(src)), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            t = src - i0
            m[o, i0] += 1 - t
            m[o, i1] += t
        elif mode == "cubic":
            i0 = int(math.floor(src))
            for tap, w in zip(range(i0 - 1, i0 + 3), _cubic_weights(src - i0)):
                m[o, min(max(tap, 0), in_size - 1)] += w
        else:
            raise ValueError(mode)
    return m


def resize_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, g, g, C) → (1, grid, grid, C), bicubic."""
    g = pos_embed.shape[1]
    if g == grid:
        return pos_embed
    m = interpolation_matrix(g, grid, "cubic")
    out = np.einsum("ih,jw,bhwc->bijc", m, m, pos_embed.astype(np.float64))
    return out.astype(pos_embed.dtype)


def resize_rel_pos(table: np.ndarray, length: int) -> np.ndarray:
    """(L, D) → (length, D), linear."""
    if table.shape[0] == length:
        return table
    m = interpolation_matrix(table.shape[0], length, "linear")
    return (m @ table.astype(np.float64)).astype(table.dtype)


def fit_to_image_size(params: Mapping[str, np.ndarray], expected_shapes: Mapping[str, tuple]) -> Dict[str, np.ndarray]:
    """Resize the position embedding and relative-position tables whose shapes differ from the model's."""
    out = dict(params)
    for path, value in params.items():
        want = tuple(expected_shapes.get(path, value.shape))
        if value.shape == want:
            continue
        if path.endswith("pos_embed") and value.ndim == 4 and value.shape[-1] == want[-1]:
            out[path] = resize_pos_embed(value, want[1])
        elif path.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[-1] == want[-1]:
            out[path] = resize_rel_pos(value, want[0])
    return out
