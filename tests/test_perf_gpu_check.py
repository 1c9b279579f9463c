"""benchmarks/gpu_check.py's plumbing on any backend: the GPU tests' run and verdict, the report, the refusal without
a GPU, PyTorch's rows skipped without PyTorch. (Its whole run on the tiny model, `--preset smoke`, takes over a
minute of CPU: a fresh process pays for the model's first build.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench, gpu_check
from benchmarks.flops import train_step_flops
from sam_jax.config import sam_config

ROOT = Path(__file__).resolve().parents[1]


def _check(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", *args],
        cwd=ROOT,
        env=gpu_check._env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_gpu_tests_run_and_their_outcome_is_read(tmp_path):
    """Off a GPU every GPU test is collected and skips, saying why; the counts come from pytest's closing line."""
    tests = gpu_check.run_tests(tmp_path, gpu_check._env(), timeout_s=240)
    log = (tmp_path / "tests.log").read_text()
    assert tests["returncode"] == 0 and set(tests["counts"]) == {"skipped"} and tests["counts"]["skipped"] >= 4
    assert "needs a GPU; JAX's backend here is cpu" in log and tests["summary"] in log
    assert gpu_check.tests_passed(tests, on_gpu=False) and not gpu_check.tests_passed(tests, on_gpu=True)


def test_the_report_holds_the_test_outcome_and_the_speed_table():
    row = dict(bench._case("jax", "train", 64, 2, model="tiny"), seconds=0.5, slices_per_s=4.0, peak_rss_bytes=2e9)
    report = {
        "command": "python -m benchmarks.bench --preset smoke",
        "date": "2026-12-04",
        "hardware": "cpu",
        "memory_note": "RSS",
        "results": bench._annotate([row], "cpu"),
    }
    check = {
        "command": "python benchmarks/gpu_check.py --output_dir out",
        "date": "2026-12-04",
        "backend": "gpu",
        "wall_s": 12.3,
        "tests_ok": False,
        "tests": {"command": "python -m pytest -m gpu tests/test_gpu.py", "summary": "4 passed, 1 failed in 9s"},
    }
    text = gpu_check.markdown(check, bench.markdown(report))
    assert "GPU tests (`python -m pytest -m gpu tests/test_gpu.py`): 4 passed, 1 failed in 9s: **FAILED**" in text
    per_slice = train_step_flops(sam_config("tiny", image_size=64, in_chans=4), 1)
    tflops = per_slice * 4 / 1e12  # 4 slices/s
    assert f"| jax tiny train 64 b2 float32 folded | 0.500 | 4.00 | 2.00 (1.00) |  |  | {tflops:.3f} |" in text


def test_a_gpu_preset_without_a_gpu_is_refused(tmp_path):
    result = _check("--output_dir", str(tmp_path), timeout=120)
    assert result.returncode == 1 and "JAX sees no GPU (backend: cpu)" in result.stderr
    assert json.loads((tmp_path / "gpu_check.json").read_text())["error"].startswith("JAX sees no GPU")
    assert not (tmp_path / "bench.json").exists()


def test_pytorch_rows_are_skipped_without_pytorch(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "torch" else object())
    group = bench.gpu_quick_groups()[1]
    rows = bench._run_group(group, tmp_path / "group", "gpu_quick", {}, deadline=0)
    assert [r["error"] for r in rows] == ["skipped: torch or segment_anything is not installed"] * len(group)
    assert not list(tmp_path.iterdir())  # no worker was started


@pytest.mark.parametrize(
    "counts,returncode,on_gpu,ok",
    [
        ({"passed": 5}, 0, True, True),
        ({"passed": 4, "skipped": 1}, 0, True, False),  # a test that skips on a GPU checked nothing
        ({"passed": 4, "failed": 1}, 1, True, False),
        ({"skipped": 5}, 0, False, True),
        ({"skipped": 5}, 0, True, False),
        ({}, None, True, False),  # timed out
    ],
)
def test_the_verdict_needs_every_gpu_test_to_run_and_pass(counts, returncode, on_gpu, ok):
    assert gpu_check.tests_passed({"counts": counts, "returncode": returncode}, on_gpu) is ok
