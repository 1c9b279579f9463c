"""Score a model on one domain with every protocol: `python -m eval.main --flagfile=eval/adult.flags
--checkpoint WORKDIR [--data_dir D] [--output_dir O]`. Writes O/cases.csv (one row per case, failures included),
O/summary.json, and prints the row in the paper's layout. Default O: WORKDIR/eval/<domain>.

With --distributed (README "Scaling out") the processes share the cases and process 0 writes the one cases.csv and
summary.json a single process would (the `seconds` column aside)."""

from __future__ import annotations

from pathlib import Path

import jax
from absl import app, flags

from eval.common import EXPECTED_ERRORS, check_model_flags, define_model_flags, load_model
from sam_jax import distributed
from sam_jax.data.domains import COLUMNS, domain_help
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.cases import SPLITS, resolve_split, select_cases
from sam_jax.evaluation.evaluate import (
    DEFAULT_PROTOCOLS,
    PROTOCOLS,
    check_protocols,
    evaluate_cases,
    merge_process_csvs,
    process_csv,
    summarise,
    write_summary,
)
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.tables import markdown
from sam_jax.flags_util import config_from_flags, define_flags, run_app
from sam_jax.metrics import NOC_MAX_CLICKS

define_model_flags()
define_flags(distributed.ProcessGroup)
flags.DEFINE_enum("domain", "GLI", list(COLUMNS), f"Domain to score: {domain_help()}.")
flags.DEFINE_enum(
    "split",
    "auto",
    list(SPLITS),
    "val: held-out cases of the saved split; all: every case; auto: val for the training domain, all for the others.",
)
flags.DEFINE_string("data_dir", "", "BraTS cases; default: the run's training data_dir.")
flags.DEFINE_string(
    "cache_dir", "", "Where the saved split lives; default: the run's cache (or <data_dir>/.sam_jax_cache)."
)
flags.DEFINE_string(
    "output_dir",
    "",
    "Default: <checkpoint>/eval/<domain>[_best]; zero-shot: "
    "workdir/<model name>/eval/<domain>, beside the trained runs.",
)
flags.DEFINE_list(
    "protocols",
    list(DEFAULT_PROTOCOLS),
    f"Any of {', '.join(PROTOCOLS)}; box: each tumour slice from its ground-truth box, tight and jittered.",
)
flags.DEFINE_integer("seed", 0, "Seed of the paper protocol's clicks and the box protocol's jitter.", lower_bound=0)
flags.DEFINE_integer("max_clicks", NOC_MAX_CLICKS, "Interactive protocol: clicks per slice.", lower_bound=1)
flags.DEFINE_bool("save_predictions", False, "Write each case's native-grid mask to O/predictions/.")
flags.DEFINE_integer("overlays", 2, "PNG overlays (Figure 7) of the first N cases in O/overlays/.", lower_bound=0)
flags.DEFINE_string("model_name", "", "Row label in tables; default: the workdir's name.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(config_from_flags(distributed.ProcessGroup))
        distributed.default_sigterm()
        index, count = jax.process_index(), jax.process_count()
        check_protocols(FLAGS.protocols)  # every flag and the cases before the model's seconds of loading
        run = check_model_flags()  # where and on what the run trained (empty for zero-shot SAM)
        data_dir = FLAGS.data_dir or run.get("data_dir", "")
        if not data_dir:
            raise EvaluationError("--data_dir is required: zero-shot SAM (or this run) records no training data")
        same_data = Path(data_dir).resolve() == Path(run.get("data_dir") or ".").resolve()
        cache_dir = FLAGS.cache_dir or (run.get("cache_dir", "") if same_data else "")
        split = resolve_split(FLAGS.split, FLAGS.domain, run.get("domain"))
        if distributed.is_writer():  # may draw and save the split: once
            cases = select_cases(data_dir, FLAGS.domain, split, cache_dir)
        distributed.barrier("split ready")
        if not distributed.is_writer():
            cases = select_cases(data_dir, FLAGS.domain, split, cache_dir)
        trained = load_model()
        name = FLAGS.model_name or trained.name
        run_dir = Path("workdir") / trained.name if FLAGS.zero_shot else Path(FLAGS.checkpoint)
        selected = "_best" if FLAGS.select == "best" and not FLAGS.zero_shot else ""
        out_dir = Path(FLAGS.output_dir or run_dir / "eval" / f"{FLAGS.domain}{selected}")
        rows = evaluate_cases(
            SliceSegmenter(trained, FLAGS.batch_size),
            trained,
            cases[index::count],
            out_dir,
            protocols=tuple(FLAGS.protocols),
            seed=FLAGS.seed,
            max_clicks=FLAGS.max_clicks,
            save_predictions=FLAGS.save_predictions,
            overlays=FLAGS.overlays if index == 0 else 0,  # process 0's first cases
            csv_name="cases.csv" if count == 1 else process_csv(index, count),
        )
        distributed.barrier("cases scored")
        if not distributed.is_writer():
            return 0
        if count > 1:
            rows = merge_process_csvs(out_dir, [c.case_id for c in cases], count)
    except EXPECTED_ERRORS as e:
        distributed.fail_fast(str(e))  # several processes: the others stop too, naming this one
        return 1
    except Exception as e:  # a barrier or collective failing because another process is gone (killed, stopped)
        if not distributed.is_lost_peer(e):
            raise
        distributed.fail_fast(distributed.lost_peer(e))
        return 1
    summary = summarise(
        rows,
        tuple(FLAGS.protocols),
        model=name,
        domain=FLAGS.domain,
        column=COLUMNS[FLAGS.domain],
        split=split,
        data_dir=str(data_dir),
        seed=FLAGS.seed,
        checkpoint=FLAGS.checkpoint,
    )
    write_summary(summary, out_dir)
    for metric, scale in (("paper_dice", 100), ("dice_3d", 100), ("lesion_dice", 100), ("noc90", 1), ("box_dice", 100)):
        value = summary["means"].get(metric)
        if value is not None:
            print(markdown(metric, {name: {COLUMNS[FLAGS.domain]: value * scale}}))
    print(
        f"{summary['scored']} of {summary['cases']} cases scored; {len(summary['failed'])} failed; "
        f"per-case scores in {out_dir / 'cases.csv'}"
    )
    for case_id, reason in summary["failed"].items():
        print(f"  failed {case_id}: {reason}")
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
