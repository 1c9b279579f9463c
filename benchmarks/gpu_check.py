"""Does the GPU path work, and how fast is it? One command on a machine with one GPU (H100/H200), < 8 minutes:

    python benchmarks/gpu_check.py --output_dir gpu_check

1. The GPU tests, `pytest -m gpu tests/test_gpu.py`: cuDNN attention against XLA's in the model's forward, the bf16
   train step (cuDNN; folded + remat) against the fp32 one, donation and no hidden host copies in the step. A test
   skipped on a GPU counts as a failure: it did not check what it is for.
2. The speed table of `python -m benchmarks.bench --preset gpu_quick` (that benchmark's machinery, worker processes
   and all): ViT-B at 1024, encoder inference in bf16 with cuDNN attention and the LoRA train step in bf16 with folded
   attention and remat at batches 8 and 16: slices/s, MFU, peak memory; PyTorch's bf16 step beside them where torch
   and segment_anything are installed, else that row says it was skipped.

Into --output_dir: tests.log (pytest's output), bench.json and bench.md (the benchmark's report), and
gpu_check.json and gpu_check.md (the tests' outcome and the speed table). Exits 1 when JAX sees no GPU or a GPU test
did not pass. `--preset smoke` runs the same steps on the tiny model at 64² on any backend, the GPU tests being
skipped there: the plumbing check of tests/test_perf_gpu_check.py.

A GPU machine without internet runs it from the repository root under an image's Python that holds jax with CUDA,
flax >= 0.12, optax, orbax-checkpoint, numpy, scipy, safetensors, absl-py, tqdm and pytest. Our imports need more,
which such images rarely hold: carry these as wheels (cp312 manylinux x86-64 where they are compiled) and put them
on PYTHONPATH: nibabel (the tests' conftest, sam_jax.data), grain and array-record (sam_jax.data.pipeline, which
TrainConfig reads), portpicker (sam_jax.distributed); for the PyTorch row, segment-anything (torch from the image).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script, benchmarks/ is first on the path, not the repository root

from benchmarks import bench  # noqa: E402

PRESETS = ("gpu_quick", "gpu", "smoke")  # benchmarks/bench.py's presets this check may run
# In one process, as a GPU runs them best (pyproject.toml asks for two pytest-xdist workers).
TESTS = ["-m", "pytest", "-q", "-rs", "-n", "0", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py"]
TESTS_TIMEOUT_S = 240
MARGIN_S = 60  # the benchmark's last group may run this long past its budget


def _env() -> dict:
    # Each process takes the GPU memory it uses, not XLA's default 75% of it, so the next one finds it free.
    return dict(
        os.environ,
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


def jax_backend(env) -> str:
    """JAX's default backend, asked in a fresh process (this one must not hold the GPU)."""
    result = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (result.stdout.strip() or result.stderr.strip() or "no output").splitlines()
    return lines[-1] if result.returncode == 0 else f"none (JAX failed to start: {lines[-1]})"


def run_tests(output_dir: Path, env, timeout_s: float) -> dict:
    """The GPU tests in a fresh process, their output in tests.log; the counts from pytest's closing line."""
    try:
        result = subprocess.run(
            [sys.executable, *TESTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        text, returncode = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as e:  # its output may come back as bytes
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        text, returncode = f"{text}\ntimed out after {timeout_s:.0f} s", None
    (output_dir / "tests.log").write_text(text)
    closing = next(
        (
            line.strip("= ")
            for line in reversed(text.splitlines())
            if re.search(r"\d+ (passed|failed|skipped|error)", line)
        ),
        "no test ran",
    )
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", closing)}
    return {"command": "python " + " ".join(TESTS), "returncode": returncode, "summary": closing, "counts": counts}


def tests_passed(tests: dict, on_gpu: bool) -> bool:
    """On a GPU every test ran and passed; elsewhere every test skipped (the smoke run)."""
    counts = tests["counts"]
    if tests["returncode"] != 0 or counts.get("failed") or counts.get("error"):
        return False
    ran, skipped = counts.get("passed", 0), counts.get("skipped", 0)
    return ran > 0 and not skipped if on_gpu else skipped > 0 and not ran


def markdown(check: dict, bench_md: str) -> str:
    tests = check["tests"]
    verdict = "ok" if check["tests_ok"] else "**FAILED** (tests.log)"
    return (
        f"GPU check `{check['command']}`, {check['date']}, JAX backend {check['backend']}, "
        f"{check['wall_s']:.0f} s.\n\nGPU tests (`{tests['command']}`): {tests['summary']}: {verdict}.\n\n" + bench_md
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Folder for the logs, JSON and markdown (made if absent).")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="gpu_quick",
        help="The speed table's preset in benchmarks/bench.py; smoke: the tiny model, any backend.",
    )
    parser.add_argument(
        "--budget_s",
        type=float,
        default=420,
        help="Seconds for the whole check; the benchmark "
        "starts no case past what the tests leave of it (less a margin for its last case).",
    )
    args = parser.parse_args(argv)
    start = time.time()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    backend = jax_backend(env)
    on_gpu = backend == "gpu"
    command = f"python benchmarks/gpu_check.py --output_dir {args.output_dir} --preset {args.preset}"
    check = {"command": command, "date": datetime.date.today().isoformat(), "backend": backend}
    if not on_gpu and args.preset != "smoke":
        check.update(error=f"JAX sees no GPU (backend: {backend}): install jax with CUDA, or use --preset smoke")
        (output_dir / "gpu_check.json").write_text(json.dumps(check, indent=1))
        print(check["error"], file=sys.stderr)
        return 1
    print(f"JAX backend: {backend}; GPU tests ...", flush=True)
    check["tests"] = run_tests(output_dir, env, min(TESTS_TIMEOUT_S, args.budget_s / 2))
    check["tests_ok"] = tests_passed(check["tests"], on_gpu)
    print(f"GPU tests: {check['tests']['summary']}", flush=True)
    bench_json = output_dir / "bench.json"
    budget = max(args.budget_s - (time.time() - start) - MARGIN_S, 30)
    bench.main(["--preset", args.preset, "--output", str(bench_json), "--budget_s", f"{budget:.0f}"])
    check.update(bench=json.loads(bench_json.read_text()), wall_s=time.time() - start)
    (output_dir / "gpu_check.json").write_text(json.dumps(check, indent=1))
    (output_dir / "gpu_check.md").write_text(markdown(check, bench_json.with_suffix(".md").read_text()))
    print(
        f"GPU tests: {check['tests']['summary']}: {'ok' if check['tests_ok'] else 'FAILED'}; "
        f"{output_dir / 'gpu_check.md'}",
        flush=True,
    )
    return 0 if check["tests_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
