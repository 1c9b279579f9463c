"""A 3-D whole-tumour mask on a case's native grid from one click per tumour (volume voxels (x, y, z)); without
clicks, the ground truth supplies one per 26-connected component (`sam_jax.data.clicks.volume_clicks`)."""

from __future__ import annotations

import numpy as np

from sam_jax.data.clicks import volume_clicks
from sam_jax.evaluation.errors import ClickError
from sam_jax.evaluation.propagation import UNREACHED, propagate
from sam_jax.evaluation.volume import CaseVolume


def parse_clicks(text: str) -> np.ndarray:
    """ "x,y,z;x,y,z" → (N, 3) int voxel indices."""
    clicks = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            values = [int(v) for v in part.split(",")]
        except ValueError:
            raise ClickError(f"click {part!r}: expected three integers x,y,z") from None
        if len(values) != 3:
            raise ClickError(f"click {part!r}: expected three integers x,y,z, got {len(values)}")
        clicks.append(values)
    if not clicks:
        raise ClickError(f"no clicks in {text!r}; expected 'x,y,z;x,y,z'")
    return np.asarray(clicks, np.int64)


def slice_clicks(volume: CaseVolume, clicks: np.ndarray) -> list[tuple[int, int, int]]:
    """Volume voxels (x, y, z) → (column, row, slice) in the model's (cropped) slices; refuses clicks outside."""
    out = []
    for x, y, z in clicks:
        if not all(0 <= v < n for v, n in zip((x, y, z), volume.shape)):
            raise ClickError(
                f"click ({x}, {y}, {z}) lies outside case {volume.case.case_id}'s volume of shape {volume.shape}"
            )
        (x0, x1), (y0, y1), (z0, z1) = volume.box
        if not (x0 <= x < x1 and y0 <= y < y1 and z0 <= z < z1):
            raise ClickError(
                f"click ({x}, {y}, {z}) lies outside the brain of case {volume.case.case_id} "
                f"(brain box x {x0}–{x1 - 1}, y {y0}–{y1 - 1}, z {z0}–{z1 - 1})"
            )
        out.append((x - x0, y - y0, z - z0))
    return out


def predict_volume(segmenter, volume: CaseVolume, clicks: np.ndarray | None = None, embeddings=None):
    """(mask (X, Y, Z) bool, clicks used (N, 3)); embeddings of `volume.slices` are computed unless given."""
    if clicks is None:
        clicks = volume_clicks(volume.native_tumour())
    if embeddings is None:
        embeddings = segmenter.encode(volume.slices)
    logits = propagate(segmenter, embeddings, volume.slices.shape[1:3], slice_clicks(volume, clicks))
    return volume.to_native(logits, fill=UNREACHED) > 0, clicks
