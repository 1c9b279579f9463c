"""Assemble the paper's tables from evaluation runs: `python -m eval.table RUN_DIR... [--output_dir O]`.

Every summary.json under the given folders is read (none: the published values alone). First the paper's Tables
1–5: each published row with the run of ours that matches it by its run spec (layout, trainable preset, training
domain, two-step, zero-shot), ours beside the published paper-protocol Dice and the difference
(O/paper_table<N>.csv). Then one table per metric, a row per model (O/<metric>.csv). All of it in O/tables.md
(default O: tables/)."""

from __future__ import annotations

import sys

from absl import flags

from eval.common import EXPECTED_ERRORS, fail
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.paper_tables import write_paper_tables
from sam_jax.evaluation.tables import load_summaries, write_tables
from sam_jax.flags_util import run_app
from sam_jax.outputs import check_output_dir

flags.DEFINE_string("output_dir", "tables", "Where tables.md and the CSVs go.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        check_output_dir(FLAGS.output_dir, "--output_dir")
    except EXPECTED_ERRORS as e:
        return fail(e)
    if len(argv) < 2:
        return fail(EvaluationError("no folders given: python -m eval.table RUN_DIR... [--output_dir O]"))
    summaries = load_summaries(argv[1:])
    if not summaries:  # still worth printing: the published values, every row waiting for its run
        print(f"note: no summary.json under {' '.join(argv[1:])}: the paper's values alone", file=sys.stderr)
    paper = write_paper_tables(summaries, FLAGS.output_dir)
    print(
        write_tables(
            summaries, FLAGS.output_dir, preface="## The paper's tables\n\n" + paper + "\n## Every run, by metric\n"
        )
    )
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
