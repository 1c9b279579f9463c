"""Predictions on the native grid: the NIfTI round trip keeps an oblique, non-RAS affine and puts every voxel back
where it came from; clicks outside the volume or brain, empty cases and cases without ground truth are refused."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from stand_in_segmenters import ComponentSegmenter

from sam_jax.data import find_cases, load_case, save_prediction
from sam_jax.evaluation import ClickError
from sam_jax.evaluation.evaluate import evaluate_cases, summarise
from sam_jax.evaluation.prediction import parse_clicks, predict_volume, prompts_on_case_grid
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.spec import RunSpec

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _oblique_lps_affine():
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.2, 2.0])  # x and y flipped (LPS-like), anisotropic voxels
    affine[:3, 3] = [90.0, 126.0, -72.0]
    return affine


@pytest.fixture
def oblique_case(write_tiny_case, tmp_path):
    seg = np.zeros((12, 10, 6), np.uint8)
    seg[4:7, 3:5, 2:4] = 2  # one tumour, asymmetric in x and y so a transposed write-back would show
    seg[5, 3, 2] = 3
    write_tiny_case(tmp_path, seg=seg, affine=_oblique_lps_affine())
    return load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("crop", [False, True])
def test_round_trip_keeps_the_oblique_affine_and_every_voxel(oblique_case, tmp_path, crop):
    volume = prepare_volume(oblique_case, RunSpec(crop_to_brain=crop))
    assert volume.slices.shape[1:3] == (volume.box[1][1] - volume.box[1][0], volume.box[0][1] - volume.box[0][0])
    # A perfect stand-in model: what comes back must be the truth, voxel for voxel, from one click per tumour.
    mask, clicks = predict_volume(ComponentSegmenter(volume.tumour), volume, embeddings=np.arange(len(volume.slices)))
    assert len(clicks) == 1
    save_prediction(oblique_case, mask, tmp_path / "pred.nii.gz")
    written = nib.load(tmp_path / "pred.nii.gz")
    np.testing.assert_allclose(written.affine, _oblique_lps_affine(), atol=1e-5)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(_oblique_lps_affine())
    assert np.array_equal(np.asarray(written.dataobj) > 0, oblique_case.seg > 0)


def test_user_clicks_in_voxel_indices(oblique_case):
    volume = prepare_volume(oblique_case, RunSpec(crop_to_brain=True))
    mask, _ = predict_volume(
        ComponentSegmenter(volume.tumour), volume, parse_clicks("6,4,3"), embeddings=np.arange(len(volume.slices))
    )
    assert np.array_equal(mask, oblique_case.seg > 0)


def test_bad_clicks_are_refused_with_the_reason(oblique_case):
    volume = prepare_volume(oblique_case, RunSpec(crop_to_brain=True))
    segmenter, embeddings = ComponentSegmenter(volume.tumour), np.arange(len(volume.slices))
    with pytest.raises(ClickError, match=r"\(12, 4, 3\) lies outside .* shape \(12, 10, 6\)"):
        predict_volume(segmenter, volume, np.array([[12, 4, 3]]), embeddings=embeddings)
    with pytest.raises(ClickError, match=r"\(0, 4, 3\) lies outside the brain .* x 2–9"):
        predict_volume(segmenter, volume, np.array([[0, 4, 3]]), embeddings=embeddings)
    for text, fault in (("1,2", "three integers"), ("a,b,c", "three integers"), (" ; ", "no clicks")):
        with pytest.raises(ClickError, match=fault):
            parse_clicks(text)


def test_cases_without_ground_truth_brain_or_tumour_are_recorded(write_tiny_case, tmp_path):
    write_tiny_case(tmp_path / "data", "BraTS-PED-00001-000", modalities=MODALITIES)
    write_tiny_case(
        tmp_path / "data", "BraTS-PED-00002-000", images={m: np.zeros((12, 10, 6), np.float32) for m in MODALITIES}
    )
    write_tiny_case(tmp_path / "data", "BraTS-PED-00003-000", seg=np.zeros((12, 10, 6), np.uint8))
    trained = SimpleNamespace(spec=RunSpec(), training={})
    rows = evaluate_cases(None, trained, find_cases(tmp_path / "data"), tmp_path / "out", protocols=("paper",))
    assert [r["status"] for r in rows] == ["failed", "failed", "empty_ground_truth"]
    assert "missing segmentation" in rows[0]["error"] and "constant image" in rows[1]["error"]
    summary = summarise(rows, ("paper",))
    assert summary["scored"] == 0 and summary["means"]["paper_dice"] is None  # the empty case scores nothing
    assert summary["empty_ground_truth"] == ["BraTS-PED-00003-000"] and len(summary["failed"]) == 2


def test_prompts_are_checked_on_the_case_before_any_model(oblique_case):
    """Clicks and box corners outside the volume, and a click on background (0 in all four scans, outside the
    head), are refused from the case alone; a click in the brain maps to the case's grid."""
    brain = oblique_case.images["t1n"] > 0
    inside = next(c for c in np.argwhere(brain))
    outside_head = next(c for c in np.argwhere(~brain))
    given = np.array([oblique_case.voxel_to_file(inside)])
    clicks, boxes = prompts_on_case_grid(oblique_case, given)
    assert clicks.tolist() == [inside.tolist()] and boxes is None
    with pytest.raises(ClickError, match=r"click \(12, 4, 3\) lies outside case .*'s volume of shape \(12, 10, 6\)"):
        prompts_on_case_grid(oblique_case, np.array([[12, 4, 3]]))
    background = tuple(oblique_case.voxel_to_file(outside_head))
    with pytest.raises(ClickError, match=rf"click \({', '.join(map(str, background))}\) is on a voxel that is 0 in"):
        prompts_on_case_grid(oblique_case, np.array([given[0], background]))
    with pytest.raises(ClickError, match=r"box corner \(2, 10, 3\) lies outside"):
        prompts_on_case_grid(oblique_case, boxes=np.array([[1, 1, 2, 10, 3]]))
    _, boxes = prompts_on_case_grid(oblique_case, boxes=np.array([[3, 4, 1, 1, 3]]))
    assert boxes.tolist() == [[1, 1, 3, 4, 3]]  # the file is LPS, as the case's grid: corners sorted only


class _CountingSegmenter(ComponentSegmenter):
    """The perfect stand-in whose 'encoder' records each slice it is asked for (its embedding is the slice index)."""

    def __init__(self, truth):
        super().__init__(truth)
        self.encoded = []

    def encode(self, slices, which):
        self.encoded += [int(k) for k in which]
        return np.asarray(which)


def test_without_embeddings_only_the_slices_the_walk_reaches_are_encoded(oblique_case):
    """The tumour spans axial slices 2–3 of 6: the walk segments those and stops at the first empty mask on each side
    (slices 1 and 4); slices 0 and 5 are never encoded, and the mask is the one of every slice encoded up front."""
    volume = prepare_volume(oblique_case, RunSpec(crop_to_brain=False))
    counting = _CountingSegmenter(volume.tumour)
    mask, _ = predict_volume(counting, volume, parse_clicks("5,3,2"))
    assert sorted(counting.encoded) == [1, 2, 3, 4]
    expected, _ = predict_volume(
        ComponentSegmenter(volume.tumour), volume, parse_clicks("5,3,2"), embeddings=np.arange(len(volume.slices))
    )
    assert np.array_equal(mask, expected) and np.array_equal(mask, oblique_case.seg > 0)
