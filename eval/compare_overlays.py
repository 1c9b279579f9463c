"""Where models disagree (Figure 7 across models): `python -m eval.compare_overlays RUN_A RUN_B ... [--domain D]
[--cases N] [--metric dice_3d] [--data_dir DATA] [--output_dir O]`.

Each RUN is an evaluation folder of `eval.main --save_predictions` (<workdir>/eval/<domain>: cases.csv,
predictions/). Picks the N cases the models disagree on most (largest spread, max − min, of the per-case metric),
draws each as O/<case>.png: the four modalities at the slice with most tumour with the ground truth, then one panel
per model with its mask; prints the chosen cases with every model's score. The images come from the data directory
the evaluation recorded, or --data_dir."""

from __future__ import annotations

from absl import flags

from eval.common import EXPECTED_ERRORS, fail
from sam_jax.data.domains import COLUMNS
from sam_jax.evaluation.disagreement import compare
from sam_jax.flags_util import run_app
from sam_jax.outputs import check_output_dir

flags.DEFINE_enum("domain", None, list(COLUMNS), "Domain the folders scored; default: the one they recorded.")
flags.DEFINE_integer("cases", 4, "How many cases to draw.", lower_bound=1)
flags.DEFINE_string(
    "metric",
    "dice_3d",
    "Per-case score of cases.csv whose spread ranks the cases (dice_3d, paper_dice, lesion_dice, …).",
)
flags.DEFINE_string("data_dir", "", "BraTS cases; default: the data directory the evaluations recorded.")
flags.DEFINE_string("output_dir", "compare_overlays", "Where the PNGs go.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        out = check_output_dir(FLAGS.output_dir, "--output_dir")
        drawn = compare(
            argv[1:], out, domain=FLAGS.domain or "", cases=FLAGS.cases, metric=FLAGS.metric, data_dir=FLAGS.data_dir
        )
    except EXPECTED_ERRORS as e:
        return fail(e)
    print(f"{len(drawn)} cases where the models disagree most ({FLAGS.metric}, spread = max − min):")
    for rank, (case_id, spread, scores, path) in enumerate(drawn, 1):
        listed = "  ".join(f"{name}={score:.4f}" for name, score in scores.items())
        print(f"{rank}. {case_id}  spread={spread:.4f}  {listed}  {path}")
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
