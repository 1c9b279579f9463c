"""Train SAM on BraTS: `python -m train.main --flagfile=train/adult.flags [--workdir W]`.

Every option is a field of `sam_jax.training.config.TrainConfig` (see `--helpfull`). The same command resumes an
interrupted run from its last checkpoint in the workdir.

Exit status: 0 trained and scored; 1 an error, named on stderr; 128 + the signal (143 SIGTERM, 130 SIGINT) when a
signal stopped the run: during training after a step, whose checkpoint was written; before or after training (cache
build, model build, scoring) at once, saying what was interrupted and what is kept; while it starts (loading its
libraries, seconds) at once, saying nothing was written.
"""

import os
import signal
import sys


def _stopped_while_loading(signum, frame):
    print(f"stopped by {signal.Signals(signum).name} while starting: nothing was written", file=sys.stderr, flush=True)
    os._exit(128 + signum)  # not an exception: one raised inside a library's import could be taken for its error


for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, _stopped_while_loading)

import traceback

import jax
from absl import app, logging

from sam_jax import distributed
from sam_jax.errors import SamJaxError
from sam_jax.flags_util import config_from_flags, define_flags, run_app
from sam_jax.training.config import TrainConfig
from sam_jax.training.loop import TrainingStopped, train_and_evaluate
from sam_jax.training.stopping import signals_interrupt

define_flags(TrainConfig)
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # loaded: the usual actions until `signals_interrupt` takes over
signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # Our INFO lines (trainable counts, resume) stay; the libraries' chatter goes.
    logging.get_absl_handler().addFilter(lambda r: not any(s in r.pathname for s in ("/orbax/", "/jax/", "/grain/")))
    try:
        config = config_from_flags(TrainConfig)
        with signals_interrupt():  # a stop signal before or after the steps, too, stops with a message
            summary = train_and_evaluate(config)
    except TrainingStopped as e:  # after a step, with its checkpoint; or between stages, saying what is kept
        message = f"{distributed.who()}: {e}" if distributed.who() else str(e)
        print(message, file=sys.stderr, flush=True)
        if not e.every_process:
            distributed.leave(message, e.exit_code)
        return e.exit_code
    except SamJaxError as e:
        distributed.fail_fast(str(e))  # several processes: the others stop too, naming this one
        return 1
    except Exception as e:
        if jax.process_count() == 1:
            raise
        traceback.print_exc()
        lost = distributed.is_lost_peer(e)
        distributed.fail_fast(distributed.lost_peer(e) if lost else f"{type(e).__name__} (traceback above)")
    print(f"\nDice after {summary['steps']} steps (workdir {config.workdir}):")
    print("  domain  paper protocol  tumour slices")
    for domain, dice in summary["paper_dice"].items():
        print(f"  {domain:6s}  {100 * dice:14.1f}  {100 * summary['tumour_slice_dice'][domain]:13.1f}")
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
