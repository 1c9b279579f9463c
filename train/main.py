"""Train SAM on BraTS: `python -m train.main --flagfile=train/adult.flags [--workdir W]`.

Every option is a field of `sam_jax.training.config.TrainConfig` (see `--helpfull`). The same command resumes an
interrupted run from its last checkpoint in the workdir.
"""

import sys

from absl import app, flags, logging

from sam_jax.adaptation import AdaptationError
from sam_jax.data import DataError
from sam_jax.flags_util import config_from_flags, define_flags
from sam_jax.training.config import TrainConfig
from sam_jax.training.loop import TrainingError, train_and_evaluate
from sam_jax.weights.params import WeightsError

define_flags(TrainConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    config = config_from_flags(TrainConfig)
    try:
        summary = train_and_evaluate(config)
    except (TrainingError, DataError, AdaptationError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nPaper-protocol Dice after {summary['steps']} steps (workdir {config.workdir}):")
    for domain, dice in summary["paper_dice"].items():
        print(f"  {domain}: {100 * dice:5.1f}")
    return 0


if __name__ == "__main__":
    app.run(main)
