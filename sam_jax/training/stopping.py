"""A scheduler's stop (SIGTERM) or a Ctrl-C (SIGINT) ends training at a step boundary, with a checkpoint of that step.

One process: a handler notes the signal and the loop stops after the step in progress. Several processes: they must
stop at the same step, since the checkpoint is written by all of them together. JAX's distributed runtime already
listens for SIGTERM (its preemption notifier, which replaces any handler of ours) and agrees on that step with every
process (`reached_preemption_sync_point`, asked at every step); SIGINT is passed on to it as a SIGTERM. In one
process a second signal stops it at once (the handlers in place before the run come back after the first).

Outside the steps (the cache build, the model build, the final scoring) there is no step to stop at: while
`signals_interrupt()` is in place (train.main), either signal raises `Interrupted` wherever the main thread is, and
each stage of the run turns it into a message saying what was interrupted and what is kept. With `--distributed`,
JAX's notifier takes SIGTERM from the moment the process joins the group: training then stops at its first step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal outside the steps. A BaseException, as KeyboardInterrupt is: no `except Exception` on its way
    up (a cache build's clean-up, a library's retry) takes it for an error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt():
    """Within the block SIGTERM and SIGINT raise `Interrupted` in the main thread (`StopSignals` takes them over
    during the steps); the handlers before it come back after it."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopSignals:
    """`with StopSignals() as stop:` … `stop.reached(step)` after every step (on every process)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second signal: the usual behaviour, at once
        if jax.process_count() > 1 and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells every process

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            distributed = jax.process_count() > 1
            for signum in SIGNALS:
                if not (distributed and signum == signal.SIGTERM):
                    self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (steps done): every process of a run gives the same answer at the same step."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal that stopped the run; SIGTERM when it reached another process of the run."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (143 SIGTERM, 130 SIGINT)."""
        return 128 + (self.signum or signal.SIGTERM)
