"""Train SAM on BraTS: `python -m train.main --flagfile=train/adult.flags [--workdir W]`.

Every option is a field of `sam_jax.training.config.TrainConfig` (see `--helpfull`). The same command resumes an
interrupted run from its last checkpoint in the workdir.
"""

import sys

from absl import app, logging

from sam_jax.errors import SamJaxError
from sam_jax.flags_util import config_from_flags, define_flags, run_app
from sam_jax.training.config import TrainConfig
from sam_jax.training.loop import train_and_evaluate

define_flags(TrainConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # Our INFO lines (trainable counts, resume) stay; the libraries' chatter goes.
    logging.get_absl_handler().addFilter(lambda r: not any(s in r.pathname for s in ("/orbax/", "/jax/", "/grain/")))
    try:
        config = config_from_flags(TrainConfig)
        summary = train_and_evaluate(config)
    except SamJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nDice after {summary['steps']} steps (workdir {config.workdir}):")
    print("  domain  paper protocol  tumour slices")
    for domain, dice in summary["paper_dice"].items():
        print(f"  {domain:6s}  {100 * dice:14.1f}  {100 * summary['tumour_slice_dice'][domain]:13.1f}")
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
