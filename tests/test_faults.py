"""Faults as a careless or unlucky user meets them: the command, its exit status, and the line that names the file
or flag and the fault; nothing the user had is lost. Full and read-only disks are real: a small tmpfs or a read-only
bind mount in a private mount namespace (`unshare`), which this machine's CI allows (the test fails, not skips,
where it does not)."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from apps import app_env, config_flags, run_app

ROOT = Path(__file__).resolve().parents[1]


def _in_namespace(script: str, timeout=600) -> str:
    """Run a bash script as root of a private user + mount namespace; its own mounts vanish with it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.fail("these tests need `unshare -rm` (user and mount namespaces) to mount a small or read-only disk")
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", f"set -u\n{script}"],
        env=app_env(PY=sys.executable),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _clean_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-3000:])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_nonsense_training_flags_are_all_named_before_compute(tmp_path):
    result = run_app(
        "-m",
        "train.main",
        f"--data_dir={tmp_path}",
        f"--workdir={tmp_path / 'w'}",
        "--batch_size=0",
        "--learning_rate=-0.01",
        "--prompt_rounds=0",
        "--eval_domains=GLI,XYZ",
        "--checkpoint_every=0",
        "--log_every=0",
        "--empty_fraction=2.5",
        "--steps=10",
        "--schedule=cosine",
        "--warmup_steps=10",
        "--seed=-1",
    )
    _clean_error(
        result,
        "batch_size 0: expected an integer ≥ 1",
        "learning_rate -0.01: expected a finite number > 0",
        "prompt_rounds 0",
        "unknown ['XYZ']",
        "checkpoint_every 0",
        "log_every 0",
        "empty_fraction 2.5",
        "warmup_steps 10 ≥ steps 10",
        "seed -1",
    )
    assert not (tmp_path / "w").exists()  # refused before anything was written

    result = run_app("-m", "eval.main", "--checkpoint=x", "--batch_size=0")
    assert result.returncode == 1 and "--batch_size" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def tiny_flags(tiny_config):
    """The tiny run as flags (data and cache the phantom's); later flags override them."""
    return config_flags(tiny_config, eval_domains=("GLI",))


@pytest.mark.slow
def test_a_finished_run_is_kept_when_rerun_with_another_model(tiny_trained_run, tiny_flags, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_trained_run, workdir)
    saved = _sha(workdir / "config.json")
    config = json.loads((workdir / "config.json").read_text())
    result = run_app(
        "-m",
        "train.main",
        *tiny_flags,
        f"--cache_dir={config['cache_dir']}",
        f"--workdir={workdir}",
        "--model_type=demo",
        "--steps=2",
    )
    _clean_error(result, f"{workdir} holds a run with other settings", "model_type: 'tiny' there, 'demo' now")
    assert _sha(workdir / "config.json") == saved

    (workdir / "config.json").write_text((workdir / "config.json").read_text()[:40])  # truncated by a crash
    truncated = _sha(workdir / "config.json")
    result = run_app("-m", "train.main", *tiny_flags, f"--workdir={workdir}", "--steps=2")
    _clean_error(result, f"{workdir / 'config.json'}: not valid JSON")
    assert _sha(workdir / "config.json") == truncated
    result = run_app("-m", "eval.main", f"--checkpoint={workdir}", "--domain=GLI")
    _clean_error(result, "config.json")


@pytest.mark.slow
def test_converter_refuses_outputs_it_cannot_or_must_not_write(tiny_sam_checkpoint, tmp_path):
    checkpoint = Path(shutil.copy(tiny_sam_checkpoint, tmp_path / "sam_tiny.pth"))
    original = _sha(checkpoint)
    convert = ROOT / "convert" / "sam_weights.py"
    _clean_error(run_app(convert, "--checkpoint", checkpoint, "--output", checkpoint), "is the input file")
    assert _sha(checkpoint) == original
    (tmp_path / "folder").mkdir()
    _clean_error(run_app(convert, "--checkpoint", checkpoint, "--output", tmp_path / "folder"), "is a folder")
    # A read-only place and a full disk, for real.
    out = _in_namespace(f"""
        mkdir -p {tmp_path}/ro {tmp_path}/full
        mount --bind {tmp_path}/ro {tmp_path}/ro && mount -o remount,bind,ro {tmp_path}/ro
        mount -t tmpfs -o size=64k tmpfs {tmp_path}/full
        "$PY" {convert} --checkpoint {checkpoint} --output {tmp_path}/ro/sam.safetensors 2>&1; echo "rc=$?"
        "$PY" {convert} --checkpoint {checkpoint} --output {tmp_path}/full/sam.safetensors 2>&1; echo "rc=$?"
        ls -A {tmp_path}/full; echo "listed"
    """)
    read_only, full = out.split("rc=1\n")[:2]
    assert f"cannot write in {tmp_path}/ro: Read-only file system" in read_only
    assert f"{tmp_path}/full/sam.safetensors: the disk is full" in full and "MiB) free" in full
    assert "Traceback" not in out and out.endswith("rc=1\nlisted\n")  # nothing left behind on the full disk


@pytest.mark.slow
def test_read_only_data_gets_its_cache_in_the_user_cache(phantom_dir, tmp_path):
    out = _in_namespace(f"""
        mkdir -p {tmp_path}/data {tmp_path}/home
        cp -r {phantom_dir}/. {tmp_path}/data
        mount --bind {tmp_path}/data {tmp_path}/data && mount -o remount,bind,ro {tmp_path}/data
        XDG_CACHE_HOME={tmp_path}/home "$PY" -c "
from sam_jax.data.cache import build_cache, default_cache_dir
cache = build_cache('{tmp_path}/data', default_cache_dir('{tmp_path}/data'))
print('cache at', cache.cache_dir, len(cache.case_ids))"
    """)
    assert f"cache at {tmp_path}/home/sam_jax/data-" in out and out.strip().endswith(" 4")


@pytest.mark.slow
def test_full_disk_during_training_stops_cleanly_and_the_run_resumes(phantom_dir, tiny_flags, tmp_path):
    """The workdir on a 3 MB disk: the first checkpoint (about 1.8 MB) fits, the second does not. One message names
    the checkpoint and the bytes; with room again, the same command resumes from step 1. The data holds a case
    without segmentation, skipped by --skip_bad_cases and listed in summary.json."""
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    case = next(data.rglob("BraTS-GLI-*-seg.nii.gz"))
    unlabelled = case.parent.with_name(case.parent.name.replace("-000", "-001"))
    unlabelled.mkdir()
    for image in case.parent.glob("*-t*.nii.gz"):
        shutil.copy(image, unlabelled / image.name.replace(case.parent.name, unlabelled.name))
    command = (
        f'"$PY" -m train.main {" ".join(tiny_flags)} --data_dir={data} --cache_dir={tmp_path}/cache '
        f"--workdir={tmp_path}/disk/run --skip_bad_cases --steps=3 --checkpoint_every=1"
    )
    out = _in_namespace(f"""
        mkdir -p {tmp_path}/disk
        mount -t tmpfs -o size=3m tmpfs {tmp_path}/disk
        {command} > {tmp_path}/first.txt 2>&1; echo "first rc=$?"
        mount -o remount,size=64m {tmp_path}/disk
        {command} > {tmp_path}/second.txt 2>&1; echo "second rc=$?"
        cp -r {tmp_path}/disk/run {tmp_path}/kept
    """)
    first, second = (tmp_path / "first.txt").read_text(), (tmp_path / "second.txt").read_text()
    assert "first rc=1" in out and "second rc=0" in out, first[-3000:] + second[-3000:]
    errors = [line for line in first.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path}/disk/run/checkpoints/2: the disk is full: writing it needs " + errors[0].split("needs ")[1]
    ], first[-3000:]
    assert "The last complete checkpoint is step 1" in first and "Traceback" not in first
    assert "resumed from step 1" in second
    steps = [json.loads(line)["step"] for line in (tmp_path / "kept" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert list(summary["skipped_cases"]) == [unlabelled.name]
    assert "missing segmentation" in summary["skipped_cases"][unlabelled.name][0]


def test_output_paths_are_made_or_refused_before_the_work(tmp_path):
    from sam_jax.outputs import OutputError, check_output_file

    assert check_output_file(tmp_path / "new" / "deeper" / "pred.nii.gz", "--output").parent.is_dir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputError, match=r"--output: .*a_file exists and is not a folder"):
        check_output_file(tmp_path / "a_file" / "pred.nii.gz", "--output")
    with pytest.raises(OutputError, match=r"--overlay .*: is a folder"):
        check_output_file(tmp_path / "new", "--overlay")


def test_a_domain_without_held_out_cases_is_a_loud_warning(phantom_dir, phantom_cache_dir):
    from sam_jax.data.cache import Cache, preprocessing_dir
    from sam_jax.training.config import TrainConfig
    from sam_jax.training.loop import prepare_data

    split = Cache.open(preprocessing_dir(phantom_cache_dir)).split()
    unvalidated = next(d for d in ("GLI", "MEN", "PED", "SSA") if not any(f"-{d}-" in c for c in split["val"]))
    cfg = TrainConfig(
        data_dir=str(phantom_dir), cache_dir=str(phantom_cache_dir), domain=unvalidated, eval_domains=(unvalidated,)
    )
    *_, eval_sets, warnings = prepare_data(cfg)
    assert unvalidated not in eval_sets
    assert warnings == [
        f"no held-out case of domain {unvalidated} in the split: no validation, no best checkpoint, "
        f"no final score for {unvalidated}"
    ]


@pytest.mark.slow
def test_predict_on_an_empty_segmentation_asks_for_prompts(tiny_trained_run, write_tiny_case, tmp_path):
    import numpy as np

    case = write_tiny_case(tmp_path / "data", seg=np.zeros((12, 10, 6), np.uint8))
    result = run_app(
        "-m",
        "eval.predict",
        f"--checkpoint={tiny_trained_run}",
        f"--case_dir={case}",
        f"--output={tmp_path / 'out' / 'pred.nii.gz'}",
    )
    _clean_error(
        result,
        "BraTS-GLI-00001-000-seg.nii.gz: the segmentation is empty: no tumour to take prompts from; "
        "give --clicks or --boxes",
    )


@pytest.mark.slow
def test_prompts_and_protocols_are_refused_before_the_model_and_a_nan_adapter_after(
    tiny_trained_run, write_tiny_case, tmp_path
):
    """The adapter holds a NaN: a refusal of the prompt or the protocols rather than of the adapter shows they came
    before the model was loaded; a good click then meets the adapter's check, which names the file and the tensor."""
    from sam_jax.weights.io import read_arrays, save_arrays

    run = tmp_path / "run"
    shutil.copytree(tiny_trained_run, run)
    arrays, metadata = read_arrays(run / "adapter.safetensors")
    name = sorted(arrays)[0]
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = float("nan")
    save_arrays(run / "adapter.safetensors", arrays, metadata)
    case = write_tiny_case(tmp_path / "data")  # brain x 2–9, y 1–8, z 1–4; tumour around voxel (4, 3, 2)
    predict = ["-m", "eval.predict", f"--checkpoint={run}", f"--case_dir={case}", f"--output={tmp_path / 'p.nii.gz'}"]
    _clean_error(run_app(*predict, "--clicks=12,4,3"), "click (12, 4, 3) lies outside case BraTS-GLI-00001-000")
    _clean_error(
        run_app(*predict, "--clicks=4,3,2;0,0,0"),
        "click (0, 0, 0) is on a voxel that is 0 in all four scans of case BraTS-GLI-00001-000",
    )
    _clean_error(
        run_app("-m", "eval.main", f"--checkpoint={run}", "--protocols=paper,bogus", f"--data_dir={tmp_path / 'data'}"),
        "--protocols: unknown ['bogus']",
    )
    result = run_app(*predict, "--clicks=4,3,2")
    _clean_error(result, f"{run / 'adapter.safetensors'}: tensor '{name}' holds 1 NaN or Inf values of ")
    assert not (tmp_path / "p.nii.gz").exists()


@pytest.mark.slow
def test_failed_cases_are_named_with_their_reason_on_the_console(tiny_trained_run, write_tiny_case, tmp_path):
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00001-000")
    write_tiny_case(tmp_path / "data", "BraTS-GLI-00002-000", modalities=("t1n", "t1c", "t2w", "seg"))
    result = run_app(
        "-m",
        "eval.main",
        f"--checkpoint={tiny_trained_run}",
        f"--data_dir={tmp_path / 'data'}",
        "--split=all",
        "--protocols=paper",
        "--overlays=0",
        f"--output_dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 2 cases scored; 1 failed" in result.stdout
    assert "  failed BraTS-GLI-00002-000: case BraTS-GLI-00002-000 is unusable: | " in result.stdout
    assert "BraTS-GLI-00002-000-t2f.nii.gz: missing modality t2f" in result.stdout
