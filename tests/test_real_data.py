"""Real MRI through the commands a user types: 12 BraTS 2018 training cases with expert labels and one unlabelled
BraTS 2023 case (../shared/data, see its README). Everything is checked against the files as nibabel reads them, not
against our reader. The tests skip, saying why, where ../shared/data is absent; the project never needs it."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from apps import ROOT, run_app
from nibabel import orientations

from sam_jax.data.brats import find_cases, load_case
from sam_jax.data.preprocess import CLIP_PERCENTILES, volume_slices

SHARED_DATA = ROOT.parent / "shared" / "data"
SATURATED = "Brats18_TCIA10_637_1"
OLD_SUFFIXES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
# Five of the twelve: the seeded 80/20 split holds one of them out, and trains on the saturated case.
TRAINED_ON = {"Brats18_2013_11_1", "Brats18_2013_23_1", "Brats18_CBICA_ALU_1", "Brats18_TCIA02_135_1", SATURATED}


def _shared(name: str):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"needs the real cases in {path}, absent here (a clone without ../shared/data)")
    return path


def _linked_copy(source, out, cases=None):
    """The release's folder layout with every file a link to the real one: a writable data directory (the cache
    goes beside it) that leaves the shared folder untouched."""
    for path in sorted(source.glob("*/*.nii*")):
        if cases is None or path.parent.name in cases:
            (out / path.parent.name).mkdir(parents=True, exist_ok=True)
            (out / path.parent.name / path.name).symlink_to(path)
    return out


@pytest.fixture(scope="module")
def brats2018(tmp_path_factory):
    return _linked_copy(_shared("brats2018"), tmp_path_factory.mktemp("brats2018"))


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    return _linked_copy(_shared("brats2023-unlabelled"), tmp_path_factory.mktemp("brats2023"))


def _seg(case_dir):
    """The expert whole tumour as the file holds it (labels 1, 2, 4 all tumour in BraTS 2018)."""
    image = nib.load(next(case_dir.glob("*_seg.nii.gz")))
    return np.asarray(image.dataobj) > 0, image.affine


def test_validate_finds_the_twelve_real_cases():
    source = _shared("brats2018")
    complete = [
        d
        for d in source.iterdir()
        if all((d / f"{d.name}_{s}.nii.gz").is_file() for s in ("flair", "t1", "t1ce", "t2", "seg"))
    ]
    done = run_app("-m", "sam_jax.data.validate", source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == [
        f"{len(complete)} BraTS 2018 cases",
        f"{len(complete)} cases, {len(complete)} valid, 0 with faults",
    ]
    assert len(complete) == 12


def test_the_unlabelled_2023_case_validates_only_as_unlabelled():
    source = _shared("brats2023-unlabelled")
    refused = run_app("-m", "sam_jax.data.validate", source)
    assert refused.returncode == 1 and "BraTS-GLI-00001-000-seg.nii.gz: missing segmentation" in refused.stdout
    accepted = run_app("-m", "sam_jax.data.validate", source, "--unlabelled")
    assert accepted.returncode == 0 and accepted.stdout.splitlines()[-1] == "1 cases, 1 valid, 0 with faults"


def test_the_saturated_case_is_clipped_at_its_percentiles(brats2018):
    """Brats18_TCIA10_637_1 reaches int16's 32767 in every channel: the saturated voxels are clipped to the brain's
    99.5th percentile, so they neither dominate the z-scores nor produce inf or NaN."""
    raw = {
        ours: np.asarray(nib.load(brats2018 / SATURATED / f"{SATURATED}_{theirs}.nii.gz").dataobj)
        for ours, theirs in OLD_SUFFIXES.items()
    }
    brain = np.logical_or.reduce([v != 0 for v in raw.values()])
    case = load_case(find_cases(brats2018 / SATURATED)[0])
    slices = volume_slices(case.images, case.seg, tuple(OLD_SUFFIXES), "zscore", crop_to_brain=True)
    assert np.isfinite(slices.images).all()
    crop = tuple(slice(*b) for b in slices.box)
    for channel, volume in enumerate(raw.values()):
        assert volume.max() == 32767
        assert np.percentile(volume[brain].astype(np.float64), CLIP_PERCENTILES[1]) < 32767  # saturation is rare
        saturated = (volume == 32767)[crop].transpose(2, 1, 0)  # the file is LPS already: no reorientation
        normalised = slices.images[..., channel]
        # Every saturated voxel takes the brain's top value, that of the percentile itself.
        np.testing.assert_allclose(normalised[saturated], normalised.max(), rtol=1e-6)
        assert normalised.max() < 10


def _dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _ras_copy(case_dir, out):
    """The case's files reoriented to RAS by nibabel (x and y reversed, the affine to match), as MET ships."""
    out.mkdir(parents=True)
    for path in case_dir.glob("*.nii.gz"):
        image = nib.load(path)
        to_ras = orientations.ornt_transform(
            orientations.io_orientation(image.affine), orientations.axcodes2ornt("RAS")
        )
        nib.save(image.as_reoriented(to_ras), out / path.name)
    return out


def _voxel_in(affine_from, affine_to, voxel) -> str:
    """The voxel of a grid with `affine_to` at the same place in the head as `voxel` of a grid with `affine_from`."""
    world = affine_from @ [*voxel, 1]
    return ",".join(str(int(round(v))) for v in (np.linalg.inv(affine_to) @ world)[:3])


@pytest.mark.slow
def test_train_evaluate_and_predict_on_real_cases(brats2018, unlabelled, tmp_path):
    """The demo's training at test size on five real cases (the saturated one among those trained on), eval.main on
    the held-out one, eval.predict from a click on a real case and on an RAS copy of it, and on the unlabelled 2023
    case."""
    data = _linked_copy(brats2018, tmp_path / "data", cases=TRAINED_ON)
    work = tmp_path / "run"
    trained = run_app(
        "-m", "train.main", "--flagfile=train/demo.flags", f"--data_dir={data}", f"--workdir={work}",
        "--phantom_cases_per_domain=0", "--model_type=tiny", "--image_size=64", "--steps=4", "--warmup_steps=0",
        "--batch_size=2", "--checkpoint_every=2", "--eval_every=2", "--val_slices=8", "--log_every=1",
        "--eval_domains=GLI",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    split = json.loads((data / ".sam_jax_cache" / "split.json").read_text())
    assert SATURATED in split["train"] and len(split["val"]) == 1, split
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and np.isfinite(losses).all(), losses

    scored = run_app(
        "-m", "eval.main", f"--checkpoint={work}", "--domain=GLI", "--split=val", "--protocols=paper,volumetric",
        "--save_predictions", "--overlays=1", f"--output_dir={tmp_path / 'eval'}",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    with open(tmp_path / "eval" / "cases.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == split["val"] and all(r["status"] == "ok" for r in rows.values())
    for case_id, row in rows.items():
        prediction = nib.load(tmp_path / "eval" / "predictions" / f"{case_id}.nii.gz")
        truth, affine = _seg(data / case_id)
        np.testing.assert_array_equal(prediction.affine, affine)
        assert float(row["dice_3d"]) == pytest.approx(_dice(np.asarray(prediction.dataobj) > 0, truth), abs=1e-6)

    # One click on a real case, then the same click on an RAS copy: the same mask, each on its own file's grid.
    case_id = split["val"][0]
    ras = _ras_copy(data / case_id, tmp_path / "ras" / case_id)
    truth, lps_affine = _seg(data / case_id)
    ras_affine = nib.load(next(ras.glob("*_seg.nii.gz"))).affine
    assert "".join(nib.aff2axcodes(ras_affine)) == "RAS"
    click = tuple(int(v) for v in np.argwhere(truth)[len(np.argwhere(truth)) // 2])
    masks = {}
    for name, folder, affine in (("lps", data / case_id, lps_affine), ("ras", ras, ras_affine)):
        out = tmp_path / f"{name}.nii.gz"
        done = run_app(
            "-m", "eval.predict", f"--checkpoint={work}", f"--case_dir={folder}", f"--output={out}",
            f"--clicks={_voxel_in(lps_affine, affine, click)}",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        written = nib.load(out)
        np.testing.assert_array_equal(written.affine, affine)
        masks[name] = np.asarray(written.dataobj) > 0
        in_file = _seg(folder)[0]
        printed = f"whole-tumour Dice against the case's segmentation: {100 * _dice(masks[name], in_file):.1f}"
        assert done.stdout.splitlines()[-1] == printed
    to_ras = orientations.ornt_transform(orientations.io_orientation(lps_affine), orientations.axcodes2ornt("RAS"))
    assert masks["lps"].any()
    np.testing.assert_array_equal(masks["ras"], orientations.apply_orientation(masks["lps"], to_ras))

    (unlabelled_case,) = unlabelled.iterdir()
    t1n = nib.load(next(unlabelled_case.glob("*-t1n.nii.gz")))
    centre = ",".join(str(v) for v in _brain_centre(unlabelled_case))
    out = tmp_path / "unlabelled.nii.gz"
    done = run_app(
        "-m", "eval.predict", f"--checkpoint={work}", f"--case_dir={unlabelled_case}", f"--output={out}",
        f"--clicks={centre}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"from clicks [[{centre.replace(',', ', ')}]]" in done.stdout
    written = nib.load(out)
    assert written.shape == t1n.shape and np.array_equal(written.affine, t1n.affine)


def _brain_centre(case_dir) -> tuple[int, int, int]:
    """A voxel deep inside the brain of the case's T1 (from the file, not from our reader)."""
    t1n = np.asarray(nib.load(next(case_dir.glob("*-t1n.nii.gz"))).dataobj) > 0
    brain = np.argwhere(t1n)
    return tuple(int(v) for v in brain[len(brain) // 2])


@pytest.mark.slow
def test_the_unlabelled_case_opens_in_the_viewer(unlabelled, tiny_trained_run, tmp_path):
    from starlette.testclient import TestClient

    from sam_jax.evaluation import load_trained
    from sam_jax.evaluation.segmenter import SliceSegmenter
    from sam_jax.viewer import build_app
    from sam_jax.viewer.access import new_token
    from sam_jax.viewer.cases import CaseStore

    trained = load_trained(tiny_trained_run)
    segmenter = SliceSegmenter(trained, batch_size=8)
    store = CaseStore(unlabelled, segmenter, trained.spec, warm_clicks=1)
    (case_dir,) = unlabelled.iterdir()
    token = new_token()
    with TestClient(build_app(store, segmenter, tmp_path, token=token)) as client:
        assert client.get(f"/?token={token}").status_code == 200  # the printed URL: its cookie carries the token
        assert client.get("/api/cases").json()["cases"] == [dict(case=case_dir.name, domain="GLI", has_seg=False)]
        opened = client.post("/api/sessions", json={"case": case_dir.name})
        assert opened.status_code == 201 and opened.json()["has_seg"] is False
        session = f"/api/sessions/{opened.json()['session']}"
        x, y, z = _brain_centre(case_dir)
        clicked = client.post(f"{session}/click", json={"x": x, "y": y, "z": z}).json()
        assert clicked["dice"] is None and clicked["clicks"][0] == dict(x=x, y=y, z=z, positive=True, by_user=True)
    store.close()
