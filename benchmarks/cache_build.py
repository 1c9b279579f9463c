"""How long does caching BraTS 2023 take? Phantom cases at BraTS size (240 x 240 x 155, five files each) are cached
with one worker and with one per available core: cases/s, the speed-up, seconds per case, and the projected time for
BraTS 2023's ~2,400 cases (GLI, MEN, PED, SSA).

    python benchmarks/cache_build.py --output benchmarks/results/cache_build_cpu.json  # 2 cores: ~5 minutes

Each build runs in a fresh process into a fresh cache folder, so every case is built and the time includes what a
real build pays: finding the cases, fingerprinting them and starting the worker pool. The phantom cases are written
once (in parallel) into --data_dir, kept there for later runs, or into a scratch folder removed at the end. Per-case
seconds are the cases' own build times (read, normalise, write; `build_seconds` in each meta.json); the peak memory
of the one-worker build approximates what each worker of a parallel build needs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRATS_2023_CASES = 2400  # GLI 1251 + MEN 1000 + PED 99 + SSA 60 training cases, rounded


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_cases(data_dir: Path, cases_per_domain: int) -> int:
    """Write the phantom cases missing from `data_dir`, one process per core; returns how many cases it holds."""
    from sam_jax.data.brats import find_cases
    from sam_jax.data.phantom import PHANTOM_DOMAINS, case_id, write_case

    have = {c.case_id for c in find_cases(data_dir)} if data_dir.is_dir() else set()
    missing = [(d, i) for d in PHANTOM_DOMAINS for i in range(cases_per_domain) if case_id(d, i) not in have]
    if missing:
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(_available_cores(), mp_context=context) as pool:
            list(pool.map(write_case, *zip(*[(data_dir, d, i, 0) for d, i in missing])))
        print(f"wrote {len(missing)} phantom cases to {data_dir} in {time.perf_counter() - start:.0f} s", flush=True)
    return len(missing) + len(have)


def measure(data_dir: str, cache_dir: str, workers: int) -> dict:
    """One build into an empty `cache_dir` (run in a fresh process by `main`)."""
    from sam_jax.data.cache import build_cache

    start = time.perf_counter()
    cache = build_cache(data_dir, cache_dir, workers=workers)
    wall = time.perf_counter() - start
    seconds = [
        json.loads((cache.cache_dir / "cases" / c / "meta.json").read_text())["build_seconds"] for c in cache.case_ids
    ]
    return dict(
        workers=workers,
        processes=min(workers or _available_cores(), len(seconds)),
        cases=len(seconds),
        wall_s=round(wall, 2),
        cases_per_s=round(len(seconds) / wall, 4),
        case_s_mean=round(statistics.mean(seconds), 3),
        case_s_median=round(statistics.median(seconds), 3),
        cache_mb_per_case=round(_folder_bytes(cache.cache_dir / "cases") / len(seconds) / 1e6, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _run_in_fresh_process(data_dir: Path, cache_dir: Path, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, __file__, "--measure", str(data_dir), str(cache_dir), str(workers)],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode:
        raise SystemExit(f"the build with {workers} workers failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def report_lines(report: dict) -> list[str]:
    lines = [
        f"{report['hardware']}; {report['cases']} phantom cases at 240 x 240 x 155",
        "| workers | processes | cases/s | s per case (mean) | peak RSS of the parent (MB) | "
        f"projected {BRATS_2023_CASES} cases |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workers']} | {r['processes']} | {r['cases_per_s']:.3f} | {r['case_s_mean']:.2f} | "
            f"{r['peak_rss_mb']} | {_hours(r['projected_s'])} |"
        )
    if "speed_up" in report:
        lines.append(f"speed-up of all cores over one worker: {report['speed_up']:.2f}x")
    mb = report["results"][0]["cache_mb_per_case"]
    lines.append(f"cache size: {mb} MB per case, ~{mb * BRATS_2023_CASES / 1000:.0f} GB for {BRATS_2023_CASES} cases")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases_per_domain", type=int, default=8)
    parser.add_argument(
        "--data_dir",
        default="",
        help="Phantom cases are written here (missing ones only) and kept; default: a scratch folder.",
    )
    parser.add_argument("--workers", default="1,0", help="Comma-separated worker counts to time (0: one per core).")
    parser.add_argument(
        "--output",
        default="",
        help="Write the results as JSON here (e.g. under benchmarks/results/); printed only by default.",
    )
    parser.add_argument("--measure", nargs=3, metavar=("DATA", "CACHE", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        return print(json.dumps(measure(args.measure[0], args.measure[1], int(args.measure[2]))))
    if args.cases_per_domain < 1:
        parser.error(f"--cases_per_domain {args.cases_per_domain}: expected at least 1")
    workers = [int(w) for w in args.workers.split(",")]
    if any(w < 0 for w in workers):
        parser.error(f"--workers {args.workers}: expected counts ≥ 0")
    scratch = Path(tempfile.mkdtemp(prefix="cache_build_"))
    try:
        data_dir = Path(args.data_dir) if args.data_dir else scratch / "data"
        cases = write_cases(data_dir, args.cases_per_domain)
        report = dict(
            command="python benchmarks/cache_build.py " + " ".join(argv or sys.argv[1:]),
            date=datetime.date.today().isoformat(),
            cases=cases,
            results=[],
            hardware=f"{platform.processor() or platform.machine()}, {_available_cores()} cores available",
        )
        for w in workers:
            print(f"building the cache with workers={w} ...", flush=True)
            result = _run_in_fresh_process(data_dir, scratch / f"cache_{w}", w)
            shutil.rmtree(scratch / f"cache_{w}")  # 80 MB a case: keep one cache on disk at a time
            result["projected_s"] = round(BRATS_2023_CASES / result["cases_per_s"])
            report["results"].append(result)
        rates = {r["workers"]: r["cases_per_s"] for r in report["results"]}
        if 1 in rates and 0 in rates:
            report["speed_up"] = round(rates[0] / rates[1], 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(report_lines(report)))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
