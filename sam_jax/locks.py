"""Exclusive file locks that no crash leaves behind: a `flock` the operating system drops when its process ends,
however it ends (a SIGKILL, a lost node). The file says who holds it (pid, host, start time) so that a refused
process can name the holder; the file itself stays, and its content means nothing once the lock is free."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path


class LockTaken(Exception):
    """The lock is held by another process, `holder` ('pid … on …, started …')."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


class HeldLock:
    """A lock this process holds; `release()` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file drops the flock
            self._fd = None

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0))
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing the file
        return "a process that has just started"


def hold(path: Path) -> HeldLock:
    """Lock `path` (created if missing, in an existing folder) for this process. Raises `LockTaken` naming the
    holder, or `OSError` where the file cannot be opened or locked."""
    # Opened without truncating: a refused process must still read who holds it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockTaken(Path(path), holder) from None
    except OSError:
        os.close(fd)
        raise
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    who = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    os.ftruncate(fd, 0)
    os.pwrite(fd, who.encode() + b"\n", 0)
    return HeldLock(Path(path), fd)
