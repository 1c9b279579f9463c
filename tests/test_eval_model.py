"""Loading a trained run, native-grid inference against the training path, and case-by-case evaluation with a
failing case, on a tiny model trained for two steps on the phantom."""

import collections
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest
from apps import run_app
from flax import nnx
from nibabel import orientations
from tumour_box import cut_case

from sam_jax.config import sam_config
from sam_jax.data import find_cases, load_case
from sam_jax.evaluation import CheckpointError, load_trained, load_zero_shot
from sam_jax.evaluation.evaluate import evaluate_cases
from sam_jax.evaluation.prediction import predict_volume
from sam_jax.evaluation.reproduce import paper_code_options
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.segmenter import _programs as segmenter_programs
from sam_jax.evaluation.trained import parse_zero_shot_name, zero_shot_name
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.metrics.lesion_wise import lesion_wise_scores
from sam_jax.model import Sam, attention
from sam_jax.spec import RunSpec
from sam_jax.training.config import TrainConfig
from sam_jax.training.loop import build
from sam_jax.training.step import forward
from sam_jax.weights.io import model_arrays, read_arrays, save_arrays

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_trained_run):
    return load_trained(tiny_trained_run)


@pytest.fixture(scope="module")
def small_data(phantom_dir, tmp_path_factory):
    """The phantom's GLI and MEN cases cut to a 64×56×12 box around their tumour: quick to score."""
    out = tmp_path_factory.mktemp("small")
    for domain in ("GLI", "MEN"):
        cut_case(find_cases(phantom_dir, domain)[0], out, (64, 56, 12))
    return out


@pytest.fixture(scope="module")
def gli_volume(trained, small_data):
    case = load_case(find_cases(small_data, "GLI")[0])
    return prepare_volume(case, trained.spec)


def _flat(state):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_loaded_run_is_the_trained_adapter_on_the_same_random_base(trained, tiny_trained_run):
    loaded = _flat(nnx.state(trained.model))
    adapter, _ = read_arrays(Path(tiny_trained_run) / "adapter.safetensors")
    assert all(np.array_equal(loaded[k], v) for k, v in adapter.items())
    # The frozen base is rebuilt from the run's seed: identical to the one training started from.
    frozen = build(TrainConfig.load(tiny_trained_run))[0].frozen
    frozen = _flat(frozen)
    assert frozen and all(np.array_equal(loaded[k], v) for k, v in frozen.items())


def _rewrite_spec(adapter: Path, **changes) -> None:
    """The adapter file with its header's run spec changed (the arrays kept)."""
    arrays, metadata = read_arrays(adapter)
    spec = RunSpec.from_metadata(metadata).replace(**changes)
    save_arrays(adapter, arrays, {**metadata, **spec.to_metadata()})


def test_the_adapter_file_alone_rebuilds_the_model(trained, tiny_trained_run, tmp_path):
    workdir = tmp_path / "moved"
    workdir.mkdir()
    shutil.copy(Path(tiny_trained_run) / "adapter.safetensors", workdir)
    alone = load_trained(workdir)
    assert alone.spec == trained.spec == TrainConfig.load(tiny_trained_run).spec() and alone.training == {}
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(nnx.state(alone.model)), jax.tree.leaves(nnx.state(trained.model)))
    )


def test_bad_checkpoints_are_refused_by_name(tiny_trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="adapter.safetensors: no such file"):
        load_trained(tmp_path)
    broken = tmp_path / "run"
    shutil.copytree(tiny_trained_run, broken, ignore=shutil.ignore_patterns("checkpoints"))
    _rewrite_spec(broken / "adapter.safetensors", lora_rank=3)
    with pytest.raises(CheckpointError, match="adapter.safetensors.*does not fit"):
        load_trained(broken)
    shutil.copy(Path(tiny_trained_run) / "adapter.safetensors", broken)
    _rewrite_spec(broken / "adapter.safetensors", sam_weights="/nowhere/sam.safetensors")
    with pytest.raises(CheckpointError, match="/nowhere/sam.safetensors.*--sam_weights"):
        load_trained(broken)
    (broken / "adapter.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter.safetensors: no such file"):
        load_trained(broken)


def test_encoding_does_not_depend_on_the_batch_size(trained, gli_volume):
    slices = gli_volume.slices[2:7]
    one = np.asarray(SliceSegmenter(trained, batch_size=2).encode(slices))
    other = np.asarray(SliceSegmenter(trained, batch_size=4).encode(slices))
    np.testing.assert_allclose(one, other, atol=1e-5)


@pytest.fixture
def kernels_traced(monkeypatch):
    """How many times each XLA attention kernel is traced (called while jit traces)."""
    segmenter_programs.cache_clear()  # segmenters of one model structure share programs: these trace anew
    calls = collections.Counter()
    for name in ("plain", "folded"):

        def spy(*args, name=name, kernel=getattr(attention, f"_{name}")):  # noqa: B008 (bound per loop turn)
            calls[name] += 1
            return kernel(*args)

        monkeypatch.setattr(attention, f"_{name}", spy)
    return calls


def test_evaluation_runs_the_kernel_the_run_was_trained_with(trained, gli_volume, kernels_traced):
    assert trained.spec.attention == "folded"  # as the run's adapter says
    SliceSegmenter(trained, batch_size=2).encode(gli_volume.slices[:2])
    assert kernels_traced["folded"] == trained.model.config.encoder_depth and not kernels_traced["plain"]


def test_models_differing_only_in_kernel_compile_apart(trained, tiny_trained_run, tmp_path, kernels_traced):
    workdir = shutil.copytree(tiny_trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    _rewrite_spec(workdir / "adapter.safetensors", attention="plain")
    plain = load_trained(workdir).model
    encode = nnx.jit(lambda model, images: model.encode_image(images))
    images = np.random.default_rng(0).normal(size=(1, 128, 128, 4)).astype(np.float32)
    folded_embedding, plain_embedding = encode(trained.model, images), encode(plain, images)
    encode(trained.model, images)  # already compiled: traces nothing
    depth = plain.config.encoder_depth
    assert kernels_traced == {"folded": depth, "plain": depth}
    np.testing.assert_allclose(folded_embedding, plain_embedding, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["click", "box"])
def test_segmenter_matches_the_training_forward_pass(trained, gli_volume, tiny_trained_run, prompt):
    k = int(np.argmax(gli_volume.tumour.sum(axis=(1, 2))))
    rows, cols = np.nonzero(gli_volume.tumour[k])
    click = np.array([[[cols[0], rows[0]]]], np.float32)
    box = np.array([[cols.min(), rows.min(), cols.max(), rows.max()]], np.float32)
    segmenter = SliceSegmenter(trained, batch_size=1)
    embedding = segmenter.encode(gli_volume.slices[k : k + 1])
    if prompt == "click":
        ours = segmenter.decode(embedding, click, np.ones((1, 1), np.int32), gli_volume.slices.shape[1:3])
    else:
        ours = segmenter.decode(embedding, None, None, gli_volume.slices.shape[1:3], boxes=box)
    h, w = gli_volume.slices.shape[1:3]
    canvas = np.zeros((1, 1, max(h, w), max(h, w), 4), np.float32)  # training's square canvas, slice top-left
    canvas[0, 0, :h, :w] = gli_volume.slices[k]
    batch = {
        "image": canvas,
        "mask": np.zeros(canvas.shape[:-1], np.uint8),
        "valid_hw": np.array([[h, w]], np.int32),
        "point_coords": click[None],
        "point_labels": np.ones((1, 1, 1), np.int32),
        "boxes": box[None],
        "has_box": np.ones((1, 1), bool),
    }
    graphdef, state = nnx.split(trained.model)
    cfg = TrainConfig.load(tiny_trained_run).replace(prompt=prompt)
    run = jax.jit(lambda s, b: forward(nnx.merge(graphdef, s), b, jax.random.key(0), cfg))
    logits, _, _ = run(state, batch)
    np.testing.assert_allclose(ours, np.asarray(logits[:, 0]), atol=1e-4)
    native = segmenter.to_slice_grid(ours, gli_volume.slices.shape[1:3])
    assert native.shape == (1,) + gli_volume.slices.shape[1:3]


class TruthExceptOneSlice:
    """A stand-in model whose scores are known: on slice k (its 'embedding' is k) it predicts the truth whatever the
    clicks, except on slice `missed`, where it predicts nothing; logits live on the slice grid."""

    def __init__(self, tumour, missed):
        self.tumour, self.missed = tumour, missed

    def encode(self, slices, which=None):
        return np.arange(len(slices)) if which is None else np.asarray(which)

    def decode(self, embeddings, coords, labels, hw, mask_input=None, boxes=None):
        k = np.asarray(embeddings)
        return np.where(self.tumour[k] & (k != self.missed)[:, None, None], 5.0, -5.0).astype(np.float32)

    def to_slice_grid(self, low_res, hw):
        return low_res


def test_a_bad_case_is_recorded_and_the_others_are_scored(trained, small_data, gli_volume, tmp_path):
    data = tmp_path / "data"
    good = find_cases(small_data, "GLI")[0]
    shutil.copytree(good.images["t1n"].parent, data / good.case_id)
    bad = data / "BraTS-GLI-00099-000"
    shutil.copytree(good.images["t1n"].parent, bad)
    for path in bad.iterdir():
        path.rename(bad / path.name.replace(good.case_id, bad.name))
    (bad / f"{bad.name}-t2w.nii.gz").write_bytes(b"not a nifti")
    tumour = gli_volume.tumour
    has_tumour = np.flatnonzero(tumour.any(axis=(1, 2)))
    missed = int(has_tumour[-1])  # the last tumour slice: propagation from the clicks below reaches all the others
    rows = evaluate_cases(
        TruthExceptOneSlice(tumour, missed),
        trained,
        find_cases(data),
        tmp_path / "out",
        max_clicks=2,
        save_predictions=True,
        overlays=1,
    )
    by_case = {r["case"]: r for r in rows}
    assert by_case[bad.name]["status"] == "failed" and "t2w.nii.gz: unreadable" in by_case[bad.name]["error"]
    scored = by_case[good.case_id]
    z, t = len(tumour), len(has_tumour)
    assert scored["status"] == "ok" and t > 1
    # Paper protocol: Dice 0 on the missed slice at every threshold, 1 on every other (empty/empty = 1).
    assert scored["paper_dice"] == pytest.approx((z - 1) / z)
    assert scored["tumour_slice_dice"] == pytest.approx((t - 1) / t)
    # Volumetric: every tumour voxel but the missed slice's, back on the native grid, and nothing else.
    native = (nib.load(good.seg).get_fdata() > 0).sum()
    predicted = tumour.sum() - tumour[missed].sum()
    assert scored["dice_3d"] == pytest.approx(2 * predicted / (native + predicted))
    # Interactive: one click reaches Dice 1 on each tumour slice but the missed one, which counts as the cap (2).
    assert scored["noc90"] == pytest.approx((t - 1 + 2) / t) and scored["noc85"] == scored["noc90"]
    assert scored["dice_after_1"] == pytest.approx((t - 1) / t) and scored["dice_after_2"] == scored["dice_after_1"]
    with open(tmp_path / "out" / "cases.csv") as f:
        written = {r["case"]: r for r in csv.DictReader(f)}
    assert written[bad.name]["status"] == "failed" and float(written[good.case_id]["paper_dice"]) == pytest.approx(
        scored["paper_dice"]
    )
    assert (tmp_path / "out" / "predictions" / f"{good.case_id}.nii.gz").is_file()
    assert (tmp_path / "out" / "overlays" / f"{good.case_id}.png").stat().st_size > 1000


class TruthFromBoxesOnly(TruthExceptOneSlice):
    """`TruthExceptOneSlice` that refuses clicks: every prompt of a box-trained run's evaluation is a box."""

    def decode(self, embeddings, coords, labels, hw, mask_input=None, boxes=None):
        assert coords is None and boxes is not None and len(boxes) == len(embeddings), "expected boxes alone"
        return super().decode(embeddings, coords, labels, hw, mask_input, boxes)


def test_box_protocol_and_box_propagation_of_a_box_trained_run(trained, small_data, gli_volume, tmp_path):
    tumour = gli_volume.tumour
    has_tumour = np.flatnonzero(tumour.any(axis=(1, 2)))
    missed = int(has_tumour[-1])
    box_run = dataclasses.replace(trained, spec=trained.spec.replace(prompt="box"))
    (row,) = evaluate_cases(
        TruthFromBoxesOnly(tumour, missed),
        box_run,
        find_cases(small_data, "GLI"),
        tmp_path,
        protocols=("volumetric", "box"),
        overlays=0,
    )
    t = len(has_tumour)
    assert row["status"] == "ok", row
    # every tumour slice but the missed one, whether boxed tightly or jittered
    assert row["box_dice"] == pytest.approx((t - 1) / t) and row["box_jitter_dice"] == row["box_dice"]
    # volumetric: the ground truth's box on the component's middle slice, walked by boxes up and down
    native = (nib.load(find_cases(small_data, "GLI")[0].seg).get_fdata() > 0).sum()
    predicted = tumour.sum() - tumour[missed].sum()
    assert row["dice_3d"] == pytest.approx(2 * predicted / (native + predicted))
    with open(tmp_path / "cases.csv") as f:
        (written,) = csv.DictReader(f)
    assert float(written["box_jitter_dice"]) == pytest.approx(row["box_jitter_dice"]) and "paper_dice" not in written


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory):
    """Plain tiny SAM weights in the converted-file format, standing in for sam_vit_b."""
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.safetensors"
    model = Sam(sam_config("tiny"), rngs=nnx.Rngs(7))
    save_arrays(path, {k: np.asarray(v) for k, v in model_arrays(model).items()}, {})
    return path


def test_zero_shot_is_plain_sam_on_three_channels(tiny_sam_file, small_data):
    zero_shot = load_zero_shot(str(tiny_sam_file), "tiny", 128)
    stored, _ = read_arrays(tiny_sam_file)
    loaded = _flat(nnx.state(zero_shot.model))
    assert set(loaded) == set(stored) and all(np.array_equal(loaded[k], v) for k, v in stored.items())
    case = load_case(find_cases(small_data, "GLI")[0])
    assert zero_shot.spec.normalisation == "sam_rgb"
    volume = prepare_volume(case, zero_shot.spec)
    # The brain's 99.5th percentile of T1 becomes 255 before SAM's normalisation of the red channel.
    brain = case.images["t1n"] != 0
    top = (np.percentile(case.images["t1n"][brain], 99.5) >= case.images["t1n"]) & brain
    red = volume.slices[..., 0].transpose(2, 1, 0)
    assert volume.slices.shape[-1] == 3 and red[top].max() <= (255 - 123.675) / 58.395 + 1e-4
    with pytest.raises(CheckpointError, match="3 channels"):
        load_zero_shot(str(tiny_sam_file), "tiny", 128, modalities="all4")


def test_zero_shot_takes_the_original_codes_inference_choices(tiny_sam_file):
    """original_code: every option of train/paper_code/ that the run spec holds, as that flagfile sets it (the loss
    grid and the volume batch are training's), plus the training flagfile's raw, brain-cropped input; the name says
    so and reads back."""
    zero_shot = load_zero_shot(str(tiny_sam_file), "tiny", 128, "t1n_x3", "original_code")
    spec_fields = {f.name for f in dataclasses.fields(RunSpec)}
    options = dict(o[2:].split("=", 1) for o in paper_code_options())
    at_inference = {k: v for k, v in options.items() if k in spec_fields}
    assert set(options) - set(at_inference) == {"loss_grid", "volume_batch"}
    assert {k: str(getattr(zero_shot.spec, k)).lower() for k in at_inference} == at_inference
    assert (zero_shot.spec.normalisation, zero_shot.spec.crop_to_brain) == ("none", True)
    assert not any(np.asarray(b.attn.rel_pos_h[...]).any() for b in zero_shot.model.image_encoder.blocks)
    assert zero_shot.name == "sam_tiny_zero_shot_t1n_x3_original_code"  # 128: the tiny model's own size
    for model_type, size, given in (
        *(("vit_b", 1024, given) for given in ("sam_rgb", "raw_crop", "original_code")),
        ("vit_b", 256, "sam_rgb"),
        ("lite_medsam", 256, "lite_medsam"),
        ("lite_medsam", 512, "raw_crop"),
    ):
        name = zero_shot_name(model_type, ("t2w", "t1n", "t2f"), size, given)
        assert parse_zero_shot_name(name) == dict(
            model_type=model_type, modalities=("t2w", "t1n", "t2f"), image_size=size, zero_shot_input=given
        )
    assert zero_shot_name("lite_medsam", ("t2f",) * 3, 256, "lite_medsam") == "sam_lite_medsam_zero_shot_t2f_x3"
    assert parse_zero_shot_name("sam_vit_b_zero_shot_t1n_t2w_t2f_none_crop")["zero_shot_input"] == "raw_crop"
    assert parse_zero_shot_name("sam_vit_b_zero_shot_all_the_things") is None


@pytest.mark.slow
def test_eval_app_writes_csv_summary_and_table(tiny_sam_file, small_data, tmp_path):
    out = tmp_path / "men"
    result = run_app(
        "-m",
        "eval.main",
        "--flagfile=eval/meningioma.flags",
        "--zero_shot",
        f"--sam_weights={tiny_sam_file}",
        "--model_type=tiny",
        "--image_size=128",
        f"--data_dir={small_data}",
        f"--output_dir={out}",
        "--protocols=paper,volumetric",
        "--overlays=0",
        "--model_name=tiny zero-shot",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["column"], summary["split"], summary["scored"]) == ("VD2", "all", 1)
    assert "| tiny zero-shot |  | " in result.stdout and (out / "cases.csv").read_text().count("\n") == 2


def _ras_copy(files, folder: Path) -> Path:
    """The case's files reoriented to RAS (x and y reversed, the affine to match), as case `folder.name`."""
    folder.mkdir(parents=True)
    ras = orientations.axcodes2ornt("RAS")
    for path in [*files.images.values(), files.seg]:
        image = nib.load(path)
        to_ras = orientations.ornt_transform(orientations.io_orientation(image.affine), ras)
        nib.save(image.as_reoriented(to_ras), folder / path.name.replace(files.case_id, folder.name))
    return folder


@pytest.mark.slow
def test_predict_from_a_box_on_the_files_grid(trained, tiny_trained_run, small_data, gli_volume, tmp_path):
    """eval.predict --boxes on the phantom (stored LPS) and on an RAS copy given the same box in its own voxels,
    corners unsorted there: the library's box propagation on the LPS grid, and the same mask on each file's grid."""
    files = find_cases(small_data, "GLI")[0]
    truth = np.asarray(nib.load(files.seg).dataobj) > 0
    z = int(np.argmax(truth.sum(axis=(0, 1))))
    xs, ys = np.nonzero(truth[:, :, z])
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), z]
    last_x, last_y = truth.shape[0] - 1, truth.shape[1] - 1
    ras_box = [last_x - box[0], last_y - box[1], last_x - box[2], last_y - box[3], z]  # x0 > x1, y0 > y1
    ras = _ras_copy(files, tmp_path / "ras" / files.case_id)
    masks = {}
    for name, folder, given in (("lps", files.seg.parent, box), ("ras", ras, ras_box)):
        out = tmp_path / f"{name}.nii.gz"
        boxes = "--boxes=" + ",".join(map(str, given))
        result = run_app(
            "-m", "eval.predict", f"--checkpoint={tiny_trained_run}", f"--case_dir={folder}", f"--output={out}", boxes
        )
        assert result.returncode == 0, result.stderr[-2000:]
        x0, x1, y0, y1 = sorted(given[0::2][:2]) + sorted(given[1::2][:2])
        assert f"from boxes [[{x0}, {y0}, {x1}, {y1}, {z}]]" in result.stdout, result.stdout
        masks[name] = np.asarray(nib.load(out).dataobj) > 0
    expected, used = predict_volume(SliceSegmenter(trained, batch_size=8), gli_volume, boxes=np.array([box]))
    assert used.tolist() == [box] and expected[:, :, z].any()
    np.testing.assert_array_equal(masks["lps"], expected)
    np.testing.assert_array_equal(masks["ras"], masks["lps"][::-1, ::-1])


@pytest.mark.slow
def test_eval_scores_metastases_a_fifth_domain_in_its_own_column(tiny_sam_file, small_data, tmp_path):
    """A BraTS 2023 MET case, shipped in RAS as the MET samples are: eval.main scores it with the MET lesion rule
    and eval.table gives it a column after the paper's four."""
    met = _ras_copy(find_cases(small_data, "GLI")[0], tmp_path / "met" / "BraTS-MET-00000-000")
    out = tmp_path / "eval"
    result = run_app(
        "-m", "eval.main", "--domain=MET", "--zero_shot", f"--sam_weights={tiny_sam_file}", "--model_type=tiny",
        "--image_size=128", f"--data_dir={met.parent}", f"--output_dir={out}", "--protocols=volumetric",
        "--overlays=0", "--save_predictions", "--model_name=zero",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["domain"], summary["column"], summary["scored"]) == ("MET", "MET", 1)
    prediction = nib.load(out / "predictions" / f"{met.name}.nii.gz")
    assert "".join(nib.aff2axcodes(prediction.affine)) == "RAS"
    truth = np.asarray(nib.load(met / f"{met.name}-seg.nii.gz").dataobj) > 0
    with open(out / "cases.csv") as f:
        (row,) = csv.DictReader(f)
    expected = lesion_wise_scores(np.asarray(prediction.dataobj) > 0, truth, (1.0, 1.0, 1.0), domain="MET")
    assert float(row["lesion_dice"]) == pytest.approx(expected.dice)
    tables = run_app("-m", "eval.table", str(out), f"--output_dir={tmp_path / 'tables'}")
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert "| model | VD1 | VD2 | D3 | D4 | MET |" in (tmp_path / "tables" / "tables.md").read_text()
