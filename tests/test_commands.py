"""Every documented command, run as a user types it: the README's commands (convert, data, train, eval, zero-shot,
table, predict, analyses) and every training flagfile (paper runs, ablations, two-step chain, cross-slice, demo),
each trained run evaluated. Only model size, input size, data and run length are overridden (a tiny SAM converted
from a random PyTorch SAM, 64² input, a small BraTS-layout phantom, one epoch). Numbers are checked against
references outside the code under test: epoch lengths counted from the NIfTI files, the best step read from the
run's own log, the predicted mask's Dice recomputed with NumPy, two-step scores recomputed through the training's
path on the model evaluation rebuilds."""

from __future__ import annotations

import csv
import glob
import http.cookiejar
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from apps import app_env, command
from tumour_box import box_around_tumour, cut_case

from sam_jax.data.brats import find_cases
from sam_jax.data.phantom import case_id, make_case, save_case
from sam_jax.spec import RunSpec
from sam_jax.training.config import TrainConfig
from sam_jax.weights.io import read_arrays

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {
    "train.main": ["--model_type=tiny", "--image_size=64", "--steps=0", "--epochs=1", "--warmup_steps=0"],
    "eval.main": ["--max_clicks=3", "--image_size=64"],  # the input size is the zero-shot model's
    "eval.viewer": ["--port=0"],
    "benchmarks/data_pipeline.py": ["--batches=20"],
}
# GLI 3 cases and MEN 2: the saved split (seed 0, per domain) then holds out one of each (of 0.6 and 0.4, the largest
# remainders with SSA's tie drawn), so both paper runs validate.
PHANTOM_CASES = {"GLI": 3, "MEN": 2, "PED": 1, "SSA": 2}
BOX = (48, 40, 8)  # voxels kept around each tumour's centre


def _small_phantom(out: Path) -> None:
    """The cases of PHANTOM_CASES, each cut to the BOX around its tumour before it is written."""
    for domain, count in PHANTOM_CASES.items():
        for index in range(count):
            images, labels, affine = make_case(domain, index, seed=0)
            box = box_around_tumour(labels > 0, BOX)
            save_case(out, case_id(domain, index), {m: v[box] for m, v in images.items()}, labels[box], affine)


def _cut_around_tumours(raw: Path, out: Path) -> Path:
    """Each case of `raw` cut to the BOX around its tumour, in `out`: a few quick steps an epoch."""
    for files in find_cases(raw):
        cut_case(files, out, BOX)
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_sam_checkpoint):
    """A user's folder: a random tiny SAM checkpoint, the phantom, and where every command runs (with the session's
    compilation cache: the runs share programs, the ×3 ablations the same step)."""
    cwd = tmp_path_factory.mktemp("user")
    _small_phantom(cwd / "brats")
    shutil.copy(tiny_sam_checkpoint, cwd / "sam_tiny.pth")
    return cwd, app_env()


def _run(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    args = shlex.split(line)
    args = [a for pattern in args for a in (sorted(glob.glob(pattern, root_dir=cwd)) or [pattern])]  # the shell's *
    app = args[2] if args[1] == "-m" else args[1]
    args = command(*args[1:], *OVERRIDES.get(app, []))  # a script path is the checkout's
    if app == "eval.viewer":
        return _serve(line, args, cwd, env)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _serve(line: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A server command: started, its printed URL (with its token) serving the page and, to the cookie that page
    set, the case list; then stopped."""
    server = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = server.stdout.readline()  # the line with the URL, once the socket listens
        assert "open http://127.0.0.1:" in printed, f"{line}\n{printed}{server.communicate(timeout=60)[1][-3000:]}"
        address = printed.split("open ")[1].strip()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        deadline = time.time() + 120
        while True:  # the socket is bound when the URL is printed; the server accepts once it has started
            try:
                with browser.open(address, timeout=60) as page:
                    assert page.status == 200 and b"<html" in page.read().lower()
                break
            except urllib.error.URLError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        with browser.open(urllib.parse.urljoin(address, "/api/cases"), timeout=60) as cases:
            assert cases.status == 200 and json.loads(cases.read())["cases"]
    finally:
        server.kill()
        server.communicate()
    return subprocess.CompletedProcess(args, 0, printed, "")


def readme_commands() -> list[str]:
    """The python commands of the README's bash blocks, continuations joined, comments and pytest left out."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            command = line.split("&&")[-1].strip()
            if command.startswith("python") and "pytest" not in command:
                lines.append(command)
    return lines


def _slices_per_epoch(cwd: Path, domain: str) -> int:
    """Brain slices of the domain's training cases, counted from the NIfTI files (slice policy `all`, brain crop)."""
    split = json.loads((cwd / "brats" / ".sam_jax_cache" / "split.json").read_text())
    total = 0
    for files in find_cases(cwd / "brats", domain):
        if files.case_id in split["train"]:
            brain = sum(np.asarray(nib.load(p).dataobj) != 0 for p in files.images.values())
            total += int(brain.any(axis=(0, 1)).sum())
    return total


def _training_cases(cwd: Path, domain: str) -> int:
    split = json.loads((cwd / "brats" / ".sam_jax_cache" / "split.json").read_text())
    return sum(files.case_id in split["train"] for files in find_cases(cwd / "brats", domain))


def _check_training(workdir: Path, expected_steps: int | None) -> dict:
    summary = json.loads((workdir / "summary.json").read_text())
    if expected_steps is not None:
        assert summary["steps"] == expected_steps
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in log if "val_dice" in r]
    # The logs people read: the training curve and TensorBoard events beside metrics.jsonl.
    assert (workdir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # The adapter carries the run spec that config.json records.
    assert TrainConfig.load(workdir).spec() == RunSpec.from_metadata(read_arrays(workdir / "adapter.safetensors")[1])
    if validated:  # once per epoch: one pass, at the last step; it is the best and exported as such
        assert [r["step"] for r in validated] == [summary["steps"]]
        best = max(validated, key=lambda r: r["val_dice"])
        assert summary["best_step"] == best["step"] and summary["best_val_dice"] == pytest.approx(best["val_dice"])
        final, _ = read_arrays(workdir / "adapter.safetensors")
        best_arrays, _ = read_arrays(workdir / "adapter_best.safetensors")
        assert all(np.array_equal(final[k], best_arrays[k]) for k in final)
    return summary


def _check_eval(out_dir: Path, cases: int) -> dict:
    with open(out_dir / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == cases and all(r["status"] == "ok" for r in rows), rows
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["means"]["paper_dice"] == pytest.approx(np.mean([float(r["paper_dice"]) for r in rows]))
    return summary


# The README's demo and data commands share data/phantom and nothing with the others: a test of their own, which
# pytest-xdist runs beside the test of the others.
DEMO_AND_DATA = ("train/demo.flags", "sam_jax.data.phantom", "benchmarks/data_pipeline.py")


def _run_readme_commands(workspace, demo_and_data: bool) -> tuple[dict, object]:
    """Run the README's commands of one part in order, the user's files replaced by the workspace's; their outputs
    and the GLI case standing in for the README's."""
    cwd, env = workspace
    case = find_cases(cwd / "brats", "GLI")[0]
    seg = np.asarray(nib.load(case.seg).dataobj) > 0
    click = ",".join(map(str, np.argwhere(seg)[len(np.argwhere(seg)) // 2]))
    substitutions = {
        "sam_vit_b_01ec64.pth": "sam_tiny.pth",
        "sam_vit_b.safetensors": "sam_tiny.safetensors",
        "/data/BraTS-GLI-00001-000": str(cwd / "brats" / case.case_id),
        "/data/BraTS2023": str(cwd / "brats"),
        "120,98,77": click,
        "--cases_per_domain 4": "--cases_per_domain 1",
        "/tmp/cache": str(cwd / "bench_cache"),
    }
    commands = readme_commands()
    assert len(commands) >= 15, commands
    outputs = {}
    for line in commands:
        if any(name in line for name in DEMO_AND_DATA) != demo_and_data:
            continue
        for old, new in substitutions.items():
            line = line.replace(old, new)
        if "train/demo.flags" in line:
            line += " --phantom_cases_per_domain=1"  # the demo's own phantom, one case per domain
        outputs[line] = _run(line, cwd, env).stdout
    return outputs, case


@pytest.mark.slow
def test_readme_demo_and_data_commands_run_as_written(workspace):
    outputs, _ = _run_readme_commands(workspace, demo_and_data=True)
    assert len(outputs) == len(DEMO_AND_DATA)
    assert (workspace[0] / "workdir" / "demo" / "adapter.safetensors").is_file()


@pytest.mark.slow
def test_readme_commands_run_as_written(workspace):
    outputs, case = _run_readme_commands(workspace, demo_and_data=False)
    cwd, _ = workspace
    seg = np.asarray(nib.load(case.seg).dataobj) > 0

    for name in ("adult", "meningioma"):
        domain = "GLI" if name == "adult" else "MEN"
        summary = _check_training(cwd / "workdir" / name, _slices_per_epoch(cwd, domain))
        assert summary["best_step"] is not None
    for domain, cases in (("GLI", 1), ("MEN", 2), ("PED", 1), ("SSA", 2)):
        _check_eval(cwd / "workdir" / "adult" / "eval" / f"{domain}_best", cases)
    zero_shot = cwd / "workdir" / "sam_tiny_zero_shot_t1n_t2w_t2f_64" / "eval" / "GLI"
    assert _check_eval(zero_shot, 1)["model"] == zero_shot.parent.parent.name
    table = (cwd / "tables" / "tables.md").read_text()
    assert "| adult_best |" in table and "| sam_tiny_zero_shot_t1n_t2w_t2f_64 |" in table

    # The predicted mask lies on the case's grid, and the Dice the command prints is the mask's Dice.
    mask_image, seg_image = nib.load(cwd / "pred.nii.gz"), nib.load(case.seg)
    np.testing.assert_array_equal(mask_image.affine, seg_image.affine)
    mask = np.asarray(mask_image.dataobj) > 0
    dice = 2 * (mask & seg).sum() / (mask.sum() + seg.sum())
    printed = next(v for k, v in outputs.items() if "eval.predict" in k)
    assert f"{100 * dice:.1f}" in printed.splitlines()[-1]
    assert (cwd / "pred.png").is_file()

    # Figure 8: the exact spectral distance of one layer, recomputed from the two adapters' LoRA factors.
    with open(next((cwd / "lora_discrepancy").glob("*.csv"))) as f:
        row = next(csv.DictReader(f))
    deltas = []
    for name in ("adult", "meningioma"):
        arrays, meta = read_arrays(cwd / "workdir" / name / "adapter.safetensors")
        block, target = row["block"], row["target"]
        layer = {
            "q": "attn.qkv.lora_q",
            "k": "attn.qkv.lora_k",
            "v": "attn.qkv.lora_v",
            "proj": "attn.proj.lora",
            "lin1": "mlp.lin1.lora",
            "lin2": "mlp.lin2.lora",
        }[target]
        a, b = (arrays[f"image_encoder.blocks.{block}.{layer}_{f}"].astype(np.float64) for f in "ab")
        deltas.append(float(meta["lora_alpha"]) / int(meta["lora_rank"]) * a @ b)
    assert float(row["spectral_distance"]) == pytest.approx(np.linalg.norm(deltas[0] - deltas[1], 2), rel=1e-4)
    assert json.loads((cwd / "embedding_map" / "separation.json").read_text())["slices"] > 0


def _flagfiles_outside_readme() -> list[str]:
    """Those of train/lite_medsam need LiteMedSAM's real weights (and hold its zero-shot rows, for eval.main):
    tests/test_lite_medsam_frame.py runs its decoder-only and two zero-shot ones."""
    in_readme = {m for line in readme_commands() for m in re.findall(r"--flagfile=train/(\S+)", line)}
    every = sorted(
        str(p.relative_to(ROOT / "train")) for p in (ROOT / "train").rglob("*.flags") if p.parent.name != "lite_medsam"
    )
    assert in_readme <= set(every)
    return sorted(set(every) - in_readme)


def _flagfile_runs() -> list[tuple[str, ...]]:
    """The flagfiles the README does not run, one test each; two-step's step 2 starts from step 1's adapter, so the
    two are one test, step 1 first."""
    names = _flagfiles_outside_readme()
    steps = ("ablations/two_step_1.flags", "ablations/two_step_2.flags")
    return [(n,) for n in names if n not in steps] + [steps]


def test_every_training_flagfile_is_run():
    names = _flagfiles_outside_readme()
    assert "ablations/two_step_2.flags" in names and len(names) >= 10
    assert sorted(n for run in _flagfile_runs() for n in run) == names


def _ensure_converted(cwd: Path, env: dict) -> None:
    """The README's conversion, once for the tests of the workspace (the README's test runs it as written)."""
    if not (cwd / "sam_tiny.safetensors").exists():
        _run("python convert/sam_weights.py --checkpoint sam_tiny.pth --output sam_tiny.safetensors", cwd, env)


@pytest.mark.slow
@pytest.mark.parametrize("names", _flagfile_runs(), ids=lambda names: "+".join(names))
def test_every_training_flagfile_trains_and_is_evaluated(workspace, names):
    """Each flagfile the README does not run, named as users may (relative to train/), then eval/adult.flags on it."""
    cwd, env = workspace
    _ensure_converted(cwd, env)

    def train_and_evaluate(name):
        _run(
            f"python -m train.main --flagfile={name} --data_dir={cwd / 'brats'} --sam_weights=sam_tiny.safetensors",
            cwd,
            env,
        )
        workdir = (
            cwd
            / "workdir"
            / next(
                line.split("=", 1)[1].split("/")[-1]
                for line in (ROOT / "train" / name).read_text().splitlines()
                if line.startswith("--workdir=")
            )
        )
        # One epoch of the training domain's cases' slices, one step each (batch 1); cross-slice runs take a stack
        # around each centre slice, which still counts once; the paper-code runs take one step per case.
        domain = json.loads((workdir / "config.json").read_text())["domain"]
        per_case = name.startswith("paper_code/")
        _check_training(workdir, _training_cases(cwd, domain) if per_case else _slices_per_epoch(cwd, domain))
        _run(
            f"python -m eval.main --flagfile=eval/adult.flags --checkpoint {workdir} --data_dir {cwd / 'brats'}",
            cwd,
            env,
        )
        _check_eval(workdir / "eval" / "GLI_best", 1)  # eval/adult.flags: GLI's held-out split (--split=val)
        return workdir

    workdirs = [train_and_evaluate(name) for name in names]
    if len(workdirs) == 2:
        _check_two_step(*workdirs)


def _check_two_step(step1: Path, step2: Path) -> None:
    """Step 2's adapter carries step 1's frozen patch embedding, so the model evaluation rebuilds is the trained one:
    the training loop's own score equals the score of that rebuilt model through the training's scoring path."""
    from flax import nnx

    from sam_jax.data.cache import Cache, preprocessing_dir
    from sam_jax.evaluation import load_trained
    from sam_jax.training.step import make_eval_forward
    from sam_jax.training.validate import low_res_predictions, paper_dice

    first, _ = read_arrays(step1 / "adapter.safetensors")
    second, metadata = read_arrays(step2 / "adapter.safetensors")
    embedding = [p for p in first if p.startswith("image_encoder.patch_embed.")]
    assert embedding and all(np.array_equal(first[p], second[p]) for p in embedding)
    assert set(metadata["inherited"].split(",")) == set(embedding)

    trained = load_trained(step2)
    cfg = TrainConfig.load(step2)
    graphdef, params, rest = nnx.split(trained.model, nnx.Param, ...)
    forward = make_eval_forward(graphdef, cfg)
    cache = Cache.open(preprocessing_dir(Path(cfg.data_dir) / ".sam_jax_cache", cfg.normalisation, cfg.crop_to_brain))
    summary = json.loads((step2 / "summary.json").read_text())
    for domain, expected in summary["paper_dice"].items():
        ids = summary["per_case"][domain]
        predictions = low_res_predictions(
            lambda b, r: forward(params, rest, b, r),
            cache,
            list(ids),
            modalities=trained.spec.modalities,
            slices=cfg.slices,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        assert paper_dice(predictions)["mean"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_one_command_reproduces_a_table(workspace):
    """`eval.reproduce` trains and evaluates what a table needs, prints it beside the paper, and a second call
    finds every step done; the dry run of all five tables lists every command a user would otherwise type."""
    cwd, env = workspace
    _ensure_converted(cwd, env)
    line = (
        f"python -m eval.reproduce --table 4 --data_dir {cwd / 'brats'} --sam_weights sam_tiny.safetensors "
        f"--root repro --train_flags='--model_type=tiny --image_size=64 --epochs=1' --eval_flags=--max_clicks=3"
    )
    first = _run(line, cwd, env).stdout
    run = cwd / "repro" / "paper" / "full_finetune"
    _check_training(run, _slices_per_epoch(cwd, "GLI"))
    scores = {
        d: _check_eval(run / "eval" / f"{d}_best", n)
        for d, n in (("GLI", 1), *((d, len(find_cases(cwd / "brats", d))) for d in ("MEN", "PED", "SSA")))
    }
    # Table 4's row: our paper-protocol Dice per column, the published value and the difference, in percent.
    row = next(r for r in first.splitlines() if r.startswith("| SAM FT") and "full_finetune" in r)
    cells = [c.strip() for c in row.strip("|").split("|")]
    for i, (domain, published) in enumerate((("GLI", 17.19), ("MEN", 14.92), ("PED", 11.96), ("SSA", 11.71))):
        ours = 100 * scores[domain]["means"]["paper_dice"]
        assert cells[2 + 3 * i : 5 + 3 * i] == [f"{ours:.2f}", f"{published:.2f}", f"{round(ours, 2) - published:+.2f}"]
    assert any(r.startswith("| Ours | adult_best (tiny, 64 px) |") for r in first.splitlines())  # its other row
    again = _run(line, cwd, env).stdout
    assert again.count("done already") == 10 and row in again
    dry = _run("python -m eval.reproduce --table all --dry_run", cwd, env).stdout.splitlines()
    assert dry[-1] == "# 70 commands for table(s) 1, 2, 3, 4, 5 (paper)"
    assert sum(c.startswith("python -m train.main") for c in dry) == 10  # 10 trained rows; zero-shot only evaluates
    assert sum("--zero_shot" in c for c in dry) == 20  # Table 1's five layouts on four domains


@pytest.mark.slow
def test_reproduce_finishes_on_a_phantom_and_refuses_steps_made_on_other_data(workspace, phantom_dir):
    """One phantom case per domain (cut around its tumour): no held-out GLI case, so no best checkpoint; GLI's
    evaluation (held-out cases) is skipped saying why, the others take the final model. The same root then refuses
    another --data_dir, naming the steps and their data, and runs nothing."""
    cwd, env = workspace
    _ensure_converted(cwd, env)
    phantom = _cut_around_tumours(phantom_dir, cwd / "phantom")  # its cache is written beside it
    line = (
        "python -m eval.reproduce --table 4 --sam_weights sam_tiny.safetensors --root phantom_repro "
        "--train_flags='--model_type=tiny --image_size=64 --epochs=1' --eval_flags=--max_clicks=3"
    )
    first = _run(f"{line} --data_dir {phantom}", cwd, env).stdout
    runs = ("full_finetune", "adult")  # Table 4's rows: full fine-tuning, then ours
    for run in runs:
        assert json.loads((cwd / "phantom_repro" / "paper" / run / "summary.json").read_text())["best_step"] is None
        for domain in ("MEN", "PED", "SSA"):  # on the final model
            assert (cwd / "phantom_repro" / "paper" / run / "eval" / domain / "summary.json").is_file(), first
    for step, run in ((2, "full_finetune"), (7, "adult")):
        assert f"[{step}/10] {run}: eval GLI: skipped: the run had no held-out GLI case (no validation split)" in first
    assert "FAILED" not in first and "failed:" not in first
    ledger = json.loads((cwd / "phantom_repro" / "paper" / "data.json").read_text())
    assert set(ledger) == {f"{r}: {s}" for r in runs for s in ("train", "eval MEN", "eval PED", "eval SSA")}
    assert {v["data_dir"] for v in ledger.values()} == {str(phantom)}

    other = subprocess.run(
        command(*shlex.split(f"{line} --data_dir {cwd / 'brats'}")[1:]),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr[-3000:]
    assert "steps were made on other data than --data_dir " + str(cwd / "brats") in other.stderr
    assert f"full_finetune: train: made on {phantom} (4 cases" in other.stderr
    assert "[1/10]" not in other.stdout  # nothing was run
