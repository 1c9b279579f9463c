"""Worker processes end with the process that started them, however it ends (a SIGKILL, the out-of-memory killer).

`prctl(PR_SET_PDEATHSIG)` is not enough: a pool's workers may be children of multiprocessing's forkserver, which
itself stays alive as long as they do. So each worker watches the starting process itself, by pid (a pidfd on Linux:
woken the moment it ends, never fooled by a reused pid; polling elsewhere), and leaves at once when it is gone:
nothing is left running under PID 1, writing after the run is dead.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time


def _wait_for_end(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here, or `pid` is gone already
        while _alive(pid):
            time.sleep(0.2)
        return
    select.select([fd], [], [])  # readable once the process has ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user (a reused pid): treated as alive
    return True


def end_with(pid: int, *_) -> None:
    """A worker initializer (more arguments, as some pools pass, are ignored): this process leaves, at once and
    without clean-up, when process `pid` ends. It ignores SIGINT: a Ctrl-C reaches the terminal's whole process
    group, and the starting process decides what stops (it shuts its pool down, or ends, and its workers with it)."""
    if threading.current_thread() is threading.main_thread():  # where handlers can be set
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        _wait_for_end(pid)
        os._exit(1)

    threading.Thread(target=watch, name=f"end with {pid}", daemon=True).start()
