"""One run per workdir: an exclusive `flock` on `<workdir>/run.lock`, held from before anything is written until
the run ends. The operating system drops it when the process ends however it ends (a SIGKILL, a lost node), so no
stale lock is ever left to remove by hand. The file says who holds it (pid, host, start time) so that a second
trainer can name the first; the file itself stays, and its content means nothing once the lock is free."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from sam_jax.errors import SamJaxError

LOCK = "run.lock"


class WorkdirBusyError(SamJaxError):
    """A workdir another process is training in."""


class WorkdirLock:
    """The held lock of one workdir; `release()` (or the process's end) frees it."""

    def __init__(self, workdir: Path, fd: int):
        self.workdir, self._fd = workdir, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0))
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing the file
        return "a process that has just started"


def hold(workdir: Path) -> WorkdirLock:
    """Lock `workdir` (an existing folder) for this process, or raise `WorkdirBusyError` naming the holder."""
    path = Path(workdir) / LOCK
    # Opened without truncating: a refused trainer must still read who holds it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise WorkdirBusyError(
            f"--workdir {workdir} is in use by another training run ({holder}). Nothing was changed: wait for "
            "it to end or stop it (it resumes from its last checkpoint), or choose another --workdir"
        ) from None
    except OSError as e:
        os.close(fd)
        raise WorkdirBusyError(f"--workdir {workdir}: cannot lock {path} ({e.strerror})") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    who = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    os.ftruncate(fd, 0)
    os.pwrite(fd, who.encode() + b"\n", 0)
    return WorkdirLock(Path(workdir), fd)
