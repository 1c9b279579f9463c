"""A 3-D whole-tumour mask on a case's native grid from one click or one box per tumour (volume voxels: clicks
(x, y, z), boxes (x0, y0, x1, y1, z) on axial slice z, corners inclusive); without either, the ground truth supplies
one per 26-connected component, of the kind the run was trained with: clicks (`sam_jax.data.clicks.volume_clicks`)
for `click`, boxes on each component's middle slice (`sam_jax.data.boxes.volume_boxes`) for `box` and `both`."""

from __future__ import annotations

import numpy as np

from sam_jax.data.boxes import volume_boxes
from sam_jax.data.brats import Case
from sam_jax.data.clicks import volume_clicks
from sam_jax.data.domains import MODALITIES
from sam_jax.evaluation.errors import ClickError
from sam_jax.evaluation.propagation import UNREACHED, propagate
from sam_jax.evaluation.slice_embeddings import SliceEmbeddings
from sam_jax.evaluation.volume import CaseVolume


def _parse(text: str, what: str, plural: str, form: str) -> np.ndarray:
    """ "a,b,…;a,b,…" → (N, len(form)) ints, `form` naming them ("x,y,z")."""
    width, rows = len(form.split(",")), []
    count = {3: "three", 5: "five"}[width]
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            values = [int(v) for v in part.split(",")]
        except ValueError:
            raise ClickError(f"{what} {part!r}: expected {count} integers {form}") from None
        if len(values) != width:
            raise ClickError(f"{what} {part!r}: expected {count} integers {form}, got {len(values)}")
        rows.append(values)
    if not rows:
        raise ClickError(f"no {plural} in {text!r}; expected '{form};{form}'")
    return np.asarray(rows, np.int64)


def parse_clicks(text: str) -> np.ndarray:
    """ "x,y,z;x,y,z" → (N, 3) int voxel indices."""
    return _parse(text, "click", "clicks", "x,y,z")


def parse_boxes(text: str) -> np.ndarray:
    """ "x0,y0,x1,y1,z;…" → (N, 5) int voxel indices: two opposite corners of a box on axial slice z."""
    return _parse(text, "box", "boxes", "x0,y0,x1,y1,z")


def sorted_box(corner_a, corner_b) -> list[int]:
    """Two opposite corners (x, y, z) of a box on one axial slice → (x0, y0, x1, y1, z), x0 ≤ x1 and y0 ≤ y1 (a
    reoriented file may have swapped them); a box whose corners lie on different axial slices is refused."""
    (xa, ya, za), (xb, yb, zb) = corner_a, corner_b
    if za != zb:
        raise ClickError(
            f"box corners ({xa}, {ya}, {za}) and ({xb}, {yb}, {zb}) lie on different axial slices: the file's third "
            "axis is not axial, so give the box's corners on one axial slice"
        )
    return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb), za]


def prompts_on_case_grid(case: Case, clicks=None, boxes=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The user's clicks (x, y, z) and boxes (x0, y0, x1, y1, z), the file's voxel indices, on the case's LPS grid;
    checked before any model is loaded: a click or corner outside the volume is refused, and so is a click on
    background (a voxel that is 0 in all four scans: outside the head, never a tumour)."""
    shape = case.header.get_data_shape()[:3]

    def inside(point, what: str) -> None:
        if not all(0 <= v < n for v, n in zip(point, shape)):
            raise ClickError(
                f"{what} {tuple(map(int, point))} lies outside case {case.case_id}'s volume of shape {shape}"
            )

    if clicks is not None:
        for click in clicks:
            inside(click, "click")
        given, clicks = clicks, np.array([case.voxel_from_file(c) for c in clicks])
        for click, voxel in zip(given, clicks):
            if not any(case.images[m][tuple(voxel)] for m in MODALITIES):
                raise ClickError(
                    f"click {tuple(map(int, click))} is on a voxel that is 0 in all four scans of case "
                    f"{case.case_id}: background outside the head, not a tumour; click inside the tumour"
                )
    if boxes is not None:
        for x0, y0, x1, y1, z in boxes:
            inside((x0, y0, z), "box corner")
            inside((x1, y1, z), "box corner")
        boxes = np.array([_box_from_file(case, b) for b in boxes])
    return clicks, boxes


def _box_from_file(case: Case, box) -> list[int]:
    """A box (x0, y0, x1, y1, z) of the file's voxels → the case's grid: both corners mapped, then re-sorted."""
    x0, y0, x1, y1, z = box
    return sorted_box(case.voxel_from_file((x0, y0, z)), case.voxel_from_file((x1, y1, z)))


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


def slice_boxes(volume: CaseVolume, boxes: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Volume boxes (x0, y0, x1, y1, z) → (x0, y0, x1, y1, slice) in the model's (cropped) slices, clipped to the
    crop; refuses corners outside the volume and boxes off the brain."""
    out = []
    (cx0, cx1), (cy0, cy1), (cz0, cz1) = volume.box
    for x0, y0, x1, y1, z in boxes:
        for corner in ((x0, y0, z), (x1, y1, z)):
            if not all(0 <= v < n for v, n in zip(corner, volume.shape)):
                raise ClickError(
                    f"box corner {corner} lies outside case {volume.case.case_id}'s volume of shape {volume.shape}"
                )
        left, top, right, bottom = max(x0, cx0), max(y0, cy0), min(x1, cx1 - 1), min(y1, cy1 - 1)
        if not (cz0 <= z < cz1 and left <= right and top <= bottom):
            raise ClickError(
                f"box ({x0}, {y0})–({x1}, {y1}) on slice {z} lies outside the brain of case {volume.case.case_id} "
                f"(brain box x {cx0}–{cx1 - 1}, y {cy0}–{cy1 - 1}, z {cz0}–{cz1 - 1})"
            )
        out.append((left - cx0, top - cy0, right - cx0, bottom - cy0, z - cz0))
    return out


def predict_volume(
    segmenter, volume: CaseVolume, clicks: np.ndarray | None = None, embeddings=None, *, boxes=None, prompt="click"
):
    """(mask (X, Y, Z) bool, the prompts used: clicks (N, 3) or boxes (N, 5)). Give clicks or boxes, not both;
    neither: the ground truth's, of the run's `prompt`. Without `embeddings` each slice is encoded when the walk
    reaches it, one at a time: a tumour spans a fraction of a volume's slices, and on CPU the encoder is quickest a
    slice at a time."""
    if clicks is not None and boxes is not None:
        raise ClickError("give clicks or boxes, not both")
    if clicks is None and boxes is None:
        if prompt == "click":
            clicks = volume_clicks(volume.native_tumour())
        else:
            boxes = volume_boxes(volume.native_tumour())
    if embeddings is None:
        embeddings = SliceEmbeddings(segmenter, volume.slices)
    hw = volume.slices.shape[1:3]
    if boxes is not None:
        logits = propagate(segmenter, embeddings, hw, [], slice_boxes(volume, boxes))
    else:
        logits = propagate(segmenter, embeddings, hw, slice_clicks(volume, clicks))
    return volume.to_native(logits, fill=UNREACHED) > 0, clicks if boxes is None else boxes
