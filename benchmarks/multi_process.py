"""Throughput of one training run as 1 process over N devices against N processes of 1 device each, on this
machine's CPU (processes joined on 127.0.0.1, gloo collectives): the demo configuration (train/demo.flags) for a
few steps, slices/s measured after the first logged step (compilation excluded), from each run's metrics.jsonl.

    python benchmarks/multi_process.py --processes 2 --steps 30

The data (the demo's phantom) is written once into --scratch and shared by both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import portpicker

ROOT = Path(__file__).resolve().parents[1]


def steady_slices_per_s(metrics_path: Path, slices_per_step: int) -> float:
    """Slices/s between the first and the last logged step: each record's slices_per_s is cumulative since the run's
    start (so it holds the compile time), and samples / rate gives the elapsed seconds at that step."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if '"slices_per_s"' in line]
    first, last = records[0], records[-1]
    elapsed = [r["step"] * slices_per_step / r["slices_per_s"] for r in (first, last)]
    return (last["step"] - first["step"]) * slices_per_step / (elapsed[1] - elapsed[0])


def run(flags, processes: int, devices_per_process: int, timeout: int) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    port = portpicker.pick_unused_port()

    def group(i):
        return (
            []
            if processes == 1
            else [
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ]
        )

    tick = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "train.main", *flags, *group(i)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        if p.returncode:
            raise SystemExit(f"a run failed:\n{err[-3000:]}")
    return time.perf_counter() - tick


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log_every", type=int, default=5)
    parser.add_argument("--scratch", default="", help="Folder for data and runs (default: a temporary one).")
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="multi_process_"))
    batch = 8  # train/demo.flags
    common = [
        "--flagfile=train/demo.flags",
        f"--data_dir={scratch / 'data'}",
        f"--cache_dir={scratch / 'cache'}",
        f"--steps={args.steps}",
        f"--log_every={args.log_every}",
        "--eval_every=100000",
        f"--checkpoint_every={args.steps}",
        "--eval_domains=",
        f"--batch_size={batch}",
    ]
    results = {}
    for name, processes, devices in (
        ("1 process x %d devices" % args.processes, 1, args.processes),
        ("%d processes x 1 device" % args.processes, args.processes, 1),
    ):
        workdir = scratch / name.replace(" ", "_")
        wall = run([*common, f"--workdir={workdir}"], processes, devices, args.timeout)
        results[name] = {"slices_per_s": steady_slices_per_s(workdir / "metrics.jsonl", batch), "wall_s": wall}
        print(
            f"{name}: {results[name]['slices_per_s']:.2f} slices/s after the first logged step "
            f"(wall {wall:.0f} s with start-up and compilation)",
            flush=True,
        )
    one, many = results.values()
    print(f"{args.processes} processes / 1 process: {many['slices_per_s'] / one['slices_per_s']:.2f}x")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
