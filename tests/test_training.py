"""The training app on phantom data in a tiny config: steps, partition, resume, refusals (data parallel:
test_multi_process.py)."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from apps import config_flags, run_app, start_app

from sam_jax.errors import SamJaxError
from sam_jax.model.mask_decoder import KEY_BIASES_WITHOUT_EFFECT
from sam_jax.training import loop
from sam_jax.training.loop import TrainingError, build, check_inputs, train_and_evaluate
from sam_jax.weights.io import read_arrays

ROOT = Path(__file__).resolve().parents[1]


def _adapter(workdir):
    return read_arrays(Path(workdir) / "adapter.safetensors")[0]


@pytest.mark.slow
def test_steps_train_exactly_the_trainable_leaves(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config.replace(workdir=str(tmp_path / "run"))
    initial_trainable = build(cfg)[0].trainable
    # Scores are those of a stand-in that predicts nothing (the model's forward still runs): per volume, the paper's
    # score is then exactly its share of slices without tumour, and the Dice over tumour slices 0.
    scored = {}
    real_predictions = loop.low_res_predictions

    def predicting_nothing(forward, *args, **kwargs):
        def stand_in(batch, rng):
            logits, iou, target = forward(batch, rng)
            return np.full(np.shape(logits), -5.0, np.float32), iou, target

        predictions = real_predictions(stand_in, *args, **kwargs)
        scored.update(predictions)  # the final evaluation of whole volumes comes after validation
        return predictions

    monkeypatch.setattr(loop, "low_res_predictions", predicting_nothing)
    summary = train_and_evaluate(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in lines)
    # Trained on all domains, each is scored on its validation cases: one phantom case of the four is held out.
    ((domain, per_case),) = summary["per_case"].items()
    ((case, score),) = per_case.items()
    tumour_slices = (scored[case][1] > 0.5).any(axis=(1, 2))  # its soft targets, as the evaluation binarises them
    assert tumour_slices.any() and not tumour_slices.all()  # slices with and without tumour: not a trivial score
    assert score == pytest.approx(1 - tumour_slices.mean())
    assert summary["paper_dice"] == {domain: pytest.approx(score)} and summary["tumour_slice_dice"] == {domain: 0.0}

    trained = _adapter(tmp_path / "run")
    flat_initial = {".".join(map(str, p)): np.asarray(v[...]) for p, v in initial_trainable.flat_state()}
    assert set(trained) == set(flat_initial)
    assert any(".lora_" in p for p in trained) and any(p.startswith("mask_decoder.") for p in trained)
    unchanged = {p for p in trained if np.array_equal(trained[p], flat_initial[p])}
    unchanged -= {p for p in trained if p.endswith(KEY_BIASES_WITHOUT_EFFECT)}  # moved by noise at most
    # Everything on the single-mask path moves; the IoU head and the three multimask heads get no gradient.
    off_path = {
        p
        for p in trained
        if p.startswith(
            (
                "mask_decoder.iou_prediction_head.",
                "mask_decoder.output_hypernetworks_mlps.1.",
                "mask_decoder.output_hypernetworks_mlps.2.",
                "mask_decoder.output_hypernetworks_mlps.3.",
            )
        )
    }
    assert unchanged == off_path
    # Frozen leaves never reach the adapter file, and nothing frozen is in the trainable set.
    assert not any(p.startswith(("prompt_encoder.", "image_encoder.blocks.0.attn.qkv.kernel")) for p in trained)


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_parameters(tiny_config, tmp_path):
    cfg = tiny_config.replace(steps=6, eval_every=100)
    train_and_evaluate(cfg.replace(workdir=str(tmp_path / "straight")))
    train_and_evaluate(cfg.replace(workdir=str(tmp_path / "resumed"), steps=4))  # "interrupted" after step 4
    train_and_evaluate(cfg.replace(workdir=str(tmp_path / "resumed")))  # the same command again: resumes at 4
    straight, resumed = _adapter(tmp_path / "straight"), _adapter(tmp_path / "resumed")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    # The same parameters and spec give the same file, byte for byte (the header's keys in one order): a child
    # adapter's parent_sha256 does not depend on which of two identical runs it came from.
    adapter = "adapter.safetensors"
    assert (tmp_path / "straight" / adapter).read_bytes() == (tmp_path / "resumed" / adapter).read_bytes()


@pytest.mark.slow
def test_the_best_adapter_is_the_parameters_of_the_best_step(tiny_config, tmp_path, monkeypatch):
    """Validated after each of 2 steps, the Dice scripted to peak after the first: adapter_best.safetensors holds
    the parameters of a run that stopped there (read back from that step's checkpoint; the last step's come from
    memory)."""
    cfg = tiny_config.replace(steps=2, eval_every=1, checkpoint_every=1, eval_domains=("MEN",))  # constant rate
    with monkeypatch.context() as scripted:
        scores = iter([0.9, 0.1])
        scripted.setattr(loop.Run, "validate", lambda run: next(scores))
        summary = train_and_evaluate(cfg.replace(workdir=str(tmp_path / "peaked")))
    train_and_evaluate(cfg.replace(workdir=str(tmp_path / "one_step"), steps=1))
    assert (summary["best_step"], summary["best_val_dice"]) == (1, 0.9)
    best = read_arrays(tmp_path / "peaked" / "adapter_best.safetensors")[0]
    one_step, last = _adapter(tmp_path / "one_step"), _adapter(tmp_path / "peaked")
    assert all(np.array_equal(best[k], one_step[k]) for k in one_step)
    assert not all(np.array_equal(best[k], last[k]) for k in last)


def _train(flags, workdir):
    return ("-m", "train.main", *flags, f"--workdir={workdir}")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tiny_config, tmp_path):
    """SIGKILL after the first checkpoint, then the same command: the result equals an uninterrupted run."""
    flags = config_flags(tiny_config, steps=24, checkpoint_every=5, eval_every=1000, schedule="cosine", warmup_steps=3)
    assert run_app(*_train(flags, tmp_path / "straight")).returncode == 0
    proc = start_app(*_train(flags, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and proc.poll() is None
        and not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "adapter.safetensors").exists(), "the run ended before it could be killed"
    assert run_app(*_train(flags, tmp_path / "killed")).returncode == 0
    straight, resumed = _adapter(tmp_path / "straight"), _adapter(tmp_path / "killed")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_named(tiny_config, tmp_path):
    cfg = tiny_config.replace(
        workdir=str(tmp_path / "nan"), steps=50, learning_rate=1e38, checkpoint_every=1, eval_every=1000
    )
    with pytest.raises(TrainingError, match=r"the loss became nan at step \d+.*last good checkpoint is step \d+"):
        train_and_evaluate(cfg)
    assert not (tmp_path / "nan" / "adapter.safetensors").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sam_weights="/nonexistent/sam.safetensors"), "no such file"),
        (dict(data_dir="/nonexistent"), "no cases found, searched recursively"),
        (dict(trainable="lora_frozen_patch"), "need a trained patch embedding"),
        (dict(modalities="t1n,flair"), "flair"),
        (dict(batch_size=3, steps=0, epochs=0), "nothing to train"),
        (dict(steps=0, epochs=-1.0), "nothing to train: steps 0 and epochs -1.0"),
        (dict(steps=-3), "steps -3: expected an integer ≥ 0"),
        (dict(loss="l2"), "loss 'l2': expected one of bce, dice, bce_dice, focal"),
        (dict(precision="float16"), "precision 'float16'"),
        (dict(steps=-3, loss="l2", attention="flash"), "(?s)attention 'flash'.*loss 'l2'.*steps -3"),  # all at once
    ],
)
def test_contradictions_fail_before_compute(tiny_config, change, message):
    # Settings are refused when the config is built, missing inputs by check_inputs: one error type for both.
    with pytest.raises(SamJaxError, match=message):
        check_inputs(tiny_config.replace(**change))


@pytest.mark.slow
def test_iterative_prompts_multimask_and_cross_slice_train(tiny_config, tmp_path):
    """The less common paths together: 3 click rounds, SAM's multimask rule, 3-slice stacks with cross-slice."""
    cfg = tiny_config.replace(
        workdir=str(tmp_path / "run"),
        steps=2,
        prompt_rounds=3,
        multimask=True,
        slices=3,
        cross_slice=True,
        eval_every=1000,
    )
    train_and_evaluate(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(r["loss"]) for r in lines)
    trained = _adapter(tmp_path / "run")
    assert any(p.endswith("cross_slice.gate") for p in trained)
    assert all(np.abs(v).sum() > 0 for p, v in trained.items() if p.endswith("cross_slice.gate"))


def _records(workdir):
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_a_workdir_is_one_run_and_signals_stop_it_with_a_checkpoint(tiny_config, tmp_path):
    """A second trainer on the workdir is refused naming the first; SIGTERM, then SIGINT (the same command again in
    between, resuming) stop the run after a step with that step's checkpoint, exit 128 + signal, and say how to
    resume. The cosine schedule without warm-up says nothing about a constant schedule."""
    flags = config_flags(
        tiny_config, steps=500, checkpoint_every=1000, eval_every=1000, schedule="cosine", warmup_steps=0
    )
    workdir = tmp_path / "run"
    stopped_at = 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        log = tmp_path / f"{signum.name}.log"
        with open(log, "w") as out:
            proc = start_app(*_train(flags, workdir), stdout=out, stderr=subprocess.STDOUT, fresh=True)  # its pid
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(_records(workdir)) <= stopped_at:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        if signum == signal.SIGTERM:
            second = run_app(*_train(flags, workdir))
            assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
            assert f"--workdir {workdir} is in use by another training run (pid {proc.pid} on " in second.stderr
        proc.send_signal(signum)
        proc.wait(timeout=120)
        text = log.read_text()
        assert proc.returncode == 128 + signum, text[-3000:]
        stopped_at = _records(workdir)[-1]["step"]
        assert (
            f"stopped by {signum.name} after step {stopped_at} of 500: its checkpoint is kept in "
            f"{workdir / 'checkpoints' / str(stopped_at)}; the same command resumes from it"
        ) in text
        assert (workdir / "checkpoints" / str(stopped_at)).is_dir() and "Traceback" not in text
        assert "constant schedule" not in text
    assert "resumed from step" in text


@pytest.mark.slow
def test_a_copied_workdir_resumes(tiny_trained_run, tmp_path):
    from sam_jax.training.config import TrainConfig

    workdir = tmp_path / "moved"
    shutil.copytree(tiny_trained_run, workdir)
    result = run_app(*_train(config_flags(TrainConfig.load(workdir), steps=3), workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 2" in result.stderr
    assert [r["step"] for r in _records(workdir)][-1] == 3


def _processes_of_session(sid: int) -> list[str]:
    """'pid state command' of every live process in session `sid` (zombies are ended, waiting to be reaped)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
        except (OSError, IndexError):
            continue
        if proc.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{proc.name} {fields[0]} {command}")
    return found


@pytest.mark.slow
def test_a_run_killed_while_building_the_cache_leaves_no_worker_behind(tiny_config, phantom_two_per_domain, tmp_path):
    """SIGKILL while 2 cache workers build: within seconds no process of the run is left (forkserver, workers,
    resource tracker), and nothing in the cache was written after the kill."""
    cache = tmp_path / "cache"
    flags = config_flags(tiny_config, cache_workers=2, data_dir=str(phantom_two_per_domain), cache_dir=str(cache))
    proc = start_app(
        *_train(flags, tmp_path / "run"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        fresh=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(cache.rglob("*.npy")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its cache was built"
    proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    proc.wait()
    deadline = time.time() + 10
    while (left := _processes_of_session(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert (cache_cases := [p for p in cache.rglob("*") if p.is_file()])
    assert max(p.stat().st_mtime for p in cache_cases) <= killed_at + 0.5  # the kernel's clock vs ours
    assert not any(cache.rglob("manifest.json"))  # the build did not finish


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signum - 1) & 1)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_command_loads_its_libraries_says_nothing_was_written(tmp_path, signum):
    """A stop in the seconds train.main spends loading JAX and the rest (before, SIGTERM ended it without a word and
    SIGINT with a KeyboardInterrupt traceback from inside an import)."""
    proc = start_app(
        *_train([f"--data_dir={tmp_path}"], tmp_path / "run"), stderr=subprocess.PIPE, text=True, fresh=True
    )
    deadline = time.time() + 60
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signum)
    said = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, said[-3000:]
    assert said.strip() == f"stopped by {signum.name} while starting: nothing was written"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_building_the_cache_stops_the_run_saying_what_is_kept(
    tiny_config, phantom_two_per_domain, tmp_path, signum
):
    """SIGTERM to the run, or SIGINT to its whole process group (a Ctrl-C in its terminal), while 2 workers build
    the cache: the run says what it interrupted and what is kept, exits 128 + the signal without a traceback, and no
    process of it is left; the cases already built stay in the cache."""
    cache = tmp_path / "cache"
    flags = config_flags(tiny_config, cache_workers=2, data_dir=str(phantom_two_per_domain), cache_dir=str(cache))
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = start_app(
            *_train(flags, tmp_path / "run"), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, fresh=True
        )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(cache.rglob("*.npy")):
        time.sleep(0.02)
    assert proc.poll() is None, log.read_text()[-3000:]
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 128 + signum and "Traceback" not in text, text[-3000:]
    assert (
        f"stopped by {signum.name} while preparing the data. Cases already cached stay cached in {cache}. "
        "No checkpoint was saved yet: the same command starts the run again."
    ) in text, text[-3000:]
    deadline = time.time() + 10
    while (left := _processes_of_session(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert any(cache.rglob("*.npy")) and not any(cache.rglob("manifest.json"))
