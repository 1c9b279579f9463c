"""Reproduce the paper's tables, one command each:
`python -m eval.reproduce --table 1|2|3|4|5|all --data_dir D --sam_weights W --root R [--variant paper|paper_code]`.

Trains every run the table needs, evaluates each on VD1, VD2, D3 and D4, then prints the paper's tables with the
published values beside ours (`eval.table`; files in R/<variant>/tables). Finished steps are skipped, so the same
command resumes; a failing step is reported and the others go on. `--dry_run` prints the commands only.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from absl import app, flags

from eval.common import fail
from sam_jax.errors import SamJaxError
from sam_jax.evaluation.reproduce import TABLES, VARIANTS, DataLedger, data_fingerprint, plan
from sam_jax.flags_util import run_app

flags.DEFINE_string("table", "all", "1–5, a comma list, or all.")
flags.DEFINE_enum(
    "variant",
    "paper",
    list(VARIANTS),
    "paper: the paper's method with the code's defects fixed; "
    "paper_code: the original code's choices (train/paper_code/).",
)
flags.DEFINE_string("data_dir", "", "BraTS 2023 (all four domains).")
flags.DEFINE_string("sam_weights", "", "Converted SAM weights (convert/sam_weights.py).")
flags.DEFINE_string("root", "reproduce", "Where the runs go: <root>/<variant>/<run>.")
flags.DEFINE_string("train_flags", "", "Extra flags for every training run (e.g. '--model_type=vit_l').")
flags.DEFINE_string("eval_flags", "", "Extra flags for every evaluation.")
flags.DEFINE_bool("dry_run", False, "Print the commands and stop.")
FLAGS = flags.FLAGS


def _tables(text: str) -> list[int]:
    if text == "all":
        return sorted(TABLES)
    try:
        tables = [int(t) for t in text.split(",")]
    except ValueError:
        tables = []
    if not tables or any(t not in TABLES for t in tables):
        raise SamJaxError(f"--table {text}: expected 1–5, a comma list of them, or all")
    return tables


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        tables = _tables(FLAGS.table)
        if not FLAGS.dry_run and not (FLAGS.data_dir and FLAGS.sam_weights):
            raise SamJaxError("--data_dir and --sam_weights are required (or --dry_run)")
        steps = plan(
            tables,
            FLAGS.variant,
            FLAGS.root,
            FLAGS.data_dir,
            FLAGS.sam_weights,
            shlex.split(FLAGS.train_flags),
            shlex.split(FLAGS.eval_flags),
        )
    except SamJaxError as e:
        return fail(e)
    if FLAGS.dry_run:
        print("\n".join(step.command() for step in steps))
        print(f"# {len(steps)} commands for table(s) {', '.join(map(str, tables))} ({FLAGS.variant})")
        return 0
    ledger = DataLedger(f"{FLAGS.root}/{FLAGS.variant}")
    try:
        ledger.check([step.settled() for step in steps], data_fingerprint(FLAGS.data_dir))
    except SamJaxError as e:
        return fail(e)
    failed_runs = {}
    for i, step in enumerate(steps, 1):
        step = step.settled()  # an evaluation learns here whether its run kept a best model
        label = f"[{i}/{len(steps)}] {step.run}: {step.kind}"
        if step.run in failed_runs:
            print(f"{label}: skipped, its training failed", flush=True)
        elif step.skip:
            print(f"{label}: skipped: {step.skip}", flush=True)
        elif step.done.exists():
            print(f"{label}: done already ({step.done})", flush=True)
        else:
            print(f"{label}: {step.command()}", flush=True)
            tick = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", *step.args], capture_output=True, text=True)
            if result.returncode:
                reason = (result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1]
                print(f"{label}: FAILED after {time.perf_counter() - tick:.0f} s: {reason}", flush=True)
                if step.kind == "train":
                    failed_runs[step.run] = reason
                else:
                    failed_runs.setdefault(f"{step.run} {step.kind}", reason)
            else:
                ledger.record(step, data_fingerprint(FLAGS.data_dir))  # a phantom may have been written by the step
                print(f"{label}: {time.perf_counter() - tick:.0f} s", flush=True)
    out = f"{FLAGS.root}/{FLAGS.variant}/tables"
    table = subprocess.run(
        [sys.executable, "-m", "eval.table", f"{FLAGS.root}/{FLAGS.variant}", f"--output_dir={out}"],
        capture_output=True,
        text=True,
    )
    print(table.stdout if table.returncode == 0 else f"eval.table failed: {table.stderr.strip()}")
    for what, reason in failed_runs.items():
        print(f"failed: {what}: {reason}")
    return 1 if failed_runs or table.returncode else 0


if __name__ == "__main__":
    run_app(main, __file__)
