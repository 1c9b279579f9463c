"""Did a change slow the train step? The JAX LoRA train step (ViT-B at 256², fp32, batches 1 and 4) of a git ref
against this working tree, side by side: fresh processes, alternating, the median of `--rounds` each, and PyTorch's
step once as a common unit (on a shared machine only such ratios mean anything).

    python benchmarks/ab_train_step.py --before 9830479 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs in a fresh process inside one tree; `module` is where that tree keeps the benchmark.
_CASE = """
import json, os, sys
root = {root!r}
sys.path[:0] = [root, root + "/tests"]
os.chdir(root)
from {module} import _case, _jax_case, _torch_case
run = _torch_case if {torch} else _jax_case
print(json.dumps({{b: run(_case("torch" if {torch} else "jax", "train", 256, b, steps=4), b)["seconds"]
                  for b in (1, 4)}}))
"""


def _seconds(root: Path, torch: bool = False) -> dict:
    module = "benchmarks.bench" if (root / "benchmarks" / "bench.py").exists() else "train.bench"
    result = subprocess.run(
        [sys.executable, "-c", _CASE.format(root=str(root), module=module, torch=torch)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )
    if result.returncode:
        raise SystemExit(f"{root}: the benchmark failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the tree to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be ≥ 1")
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(before), args.before], check=True
        )
        try:
            rounds = {"before": [], "after": []}
            for i in range(args.rounds):
                rounds["before"].append(_seconds(before))
                rounds["after"].append(_seconds(ROOT))
                print(f"round {i + 1}: before {rounds['before'][-1]}, after {rounds['after'][-1]}", flush=True)
            torch = _seconds(ROOT, torch=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    for b in ("1", "4"):
        old = statistics.median(r[b] for r in rounds["before"])
        new = statistics.median(r[b] for r in rounds["after"])
        print(
            f"batch {b}: before {old:.3f} s/step, after {new:.3f} s/step (after/before {new / old:.3f}); "
            f"PyTorch {torch[b]:.3f} s/step: {torch[b] / old:.2f}x → {torch[b] / new:.2f}x"
        )


if __name__ == "__main__":
    main()
