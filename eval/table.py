"""Assemble the paper's tables from evaluation runs: `python -m eval.table RUN_DIR... [--output_dir O]`.

Every summary.json under the given folders becomes a cell (row: its model, column: VD1 VD2 D3 D4); the paper's
published rows are printed beside ours. Writes O/tables.md and one CSV per metric (default O: tables/)."""

from __future__ import annotations

from absl import app, flags

from eval.common import fail
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.tables import load_summaries, write_tables

flags.DEFINE_string("output_dir", "tables", "Where tables.md and the CSVs go.")
FLAGS = flags.FLAGS


def main(argv):
    summaries = load_summaries(argv[1:])
    if not summaries:
        return fail(EvaluationError(f"no summary.json under {argv[1:] or 'the given folders (none given)'}"))
    print(write_tables(summaries, FLAGS.output_dir))
    return 0


if __name__ == "__main__":
    app.run(main)
