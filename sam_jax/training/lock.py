"""One run per workdir: an exclusive lock on `<workdir>/run.lock` (`sam_jax.locks`), held from before anything is
written until the run ends; a second trainer on the workdir stops at once, naming the first."""

from __future__ import annotations

from pathlib import Path

from sam_jax import locks
from sam_jax.errors import SamJaxError

LOCK = "run.lock"


class WorkdirBusyError(SamJaxError):
    """A workdir another process is training in."""


def hold(workdir: Path) -> locks.HeldLock:
    """Lock `workdir` (an existing folder) for this process, or raise `WorkdirBusyError` naming the holder."""
    path = Path(workdir) / LOCK
    try:
        return locks.hold(path)
    except locks.LockTaken as e:
        raise WorkdirBusyError(
            f"--workdir {workdir} is in use by another training run ({e.holder}). Nothing was changed: wait for "
            "it to end or stop it (it resumes from its last checkpoint), or choose another --workdir"
        ) from None
    except OSError as e:
        raise WorkdirBusyError(f"--workdir {workdir}: cannot lock {path} ({e.strerror})") from None
