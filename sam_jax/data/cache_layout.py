"""Where caches live under a cache root (`--cache_dir`, default `<data_dir>/.sam_jax_cache`): one folder per
preprocessing, named by everything that changes a cached case's bytes (normalisation, brain crop, the domain a
build was restricted to, the format version), so runs with different settings never rebuild each other's cache;
`split.json` sits at the root, one split for every preprocessing. The slice stack and the model's modalities are
chosen when slices are read, so they share a folder. A build holds the folder's lock: a second builder of the same
folder waits for the first, then finds its cases built."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_FILE = "build.lock"
MANIFEST = "manifest.json"


def preprocessing_name(settings: dict, domain: str | None) -> str:
    """`zscore-whole-v2`, `none-brain_crop-v2`, `zscore-whole-PED-v2`: readable in a listing, one per setting."""
    crop = "brain_crop" if settings["crop_to_brain"] else "whole"
    return "-".join([settings["normalisation"], crop, *([domain] if domain else []), f"v{settings['version']}"])


@contextlib.contextmanager
def build_lock(folder: Path):
    """Hold `folder`'s build lock (an OS lock: a killed builder never leaves it held); wait, saying for whom, while
    another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            log.warning(
                "cache %s is being built by another process (%s): waiting for it to finish, then using its cases",
                folder,
                file.read().strip() or "unknown",
            )
            fcntl.flock(file, fcntl.LOCK_EX)
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)
            fcntl.flock(file, fcntl.LOCK_UN)


def adopt_old_layout(root: Path, folder: Path, settings: dict, domain: str | None) -> None:
    """A cache written before the per-preprocessing folders (cases/ and manifest.json at the root) moves into its
    folder when its settings are this build's (a rename, nothing rebuilt); otherwise it stays, and is named."""
    manifest = root / MANIFEST
    if not (root / "cases").is_dir():
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("settings") == settings and old.get("domain") == domain and not (folder / "cases").exists():
        try:
            os.replace(root / "cases", folder / "cases")
            os.replace(manifest, folder / MANIFEST)
        except FileNotFoundError:  # another builder adopted it first
            return
        shutil.rmtree(root / "tmp", ignore_errors=True)
        log.info("cache %s: moved the cases of the older layout at %s into it", folder, root)
    else:
        log.warning(
            "%s/cases and %s hold a cache in the older layout for other settings (%s); nothing uses it now: "
            "remove them to free the space",
            root,
            manifest.name,
            old.get("settings", "unknown"),
        )
