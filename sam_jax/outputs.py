"""Where results go. Every output path is checked before the work that fills it (not a folder, not one of the
inputs, its folder made or writable, room on the disk where the size is known), files are written whole or not at
all (a temporary beside the target, then a rename), and a full disk is reported by path, bytes needed and bytes
free, never as a trace from the library that happened to write."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from sam_jax.errors import SamJaxError

_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(SamJaxError, OSError):
    """An output that cannot be written: the message names the path and why."""


def _size(n: int | None) -> str:
    return "an unknown size" if n is None else f"{n:,} bytes ({n / 2**20:.1f} MiB)"


def free_bytes(path) -> int:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full(path, needed: int | None = None) -> OutputError:
    return OutputError(
        f"{path}: the disk is full: writing it needs {_size(needed)}, {_size(free_bytes(path))} free. "
        "Free some space or write elsewhere; nothing was left half-written."
    )


def _writable_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what}: {folder} exists and is not a folder") from None
    except OSError as e:
        raise OutputError(f"{what}: cannot create the folder {folder}: {e.strerror}") from None
    try:  # os.access misses read-only mounts for root; creating a file does not
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {folder}: {e.strerror}") from None


def check_output_file(path, what: str, inputs=(), needed: int | None = None) -> Path:
    """`path` as an absolute Path, once it is known that a file can be written there: `what` names the flag or role
    in messages. Refuses a folder, a path that is one of `inputs` (the user's own file would be replaced), a folder
    that cannot be made or written, and a disk with fewer than `needed` bytes free."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name")
    for source in inputs:
        if source and Path(source).exists() and path.exists() and os.path.samefile(path, source):
            raise OutputError(
                f"{what} {path}: is the input file {source}; it would be replaced. Choose another output name"
            )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: exists and is not writable")
    _writable_folder(path.parent, what)
    if needed is not None and free_bytes(path.parent) < needed:
        raise disk_full(path, needed)
    return path


def check_output_dir(path, what: str) -> Path:
    """`path` as an absolute Path, made if missing, once it is known to be a writable folder."""
    path = Path(path).expanduser().absolute()
    _writable_folder(path, what)
    return path


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it came from, is a full disk or quota, however the writing library wrapped it
    (orbax and tensorstore raise their own types, with the OS message in the text)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(text in str(error) for text in ("No space left on device", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def reporting_full_disk(path, needed: int | None = None):
    """Turn a full disk (or quota) met while writing `path` into one `OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(path, needed) from None
        raise


def write_atomic(path, data: str | bytes) -> Path:
    """Write the whole of `data` to `path` or leave `path` as it was (temporary file + rename)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with reporting_full_disk(path, len(raw)), os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
