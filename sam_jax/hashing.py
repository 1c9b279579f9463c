"""A file's identity: its sha256, read in chunks (SAM's checkpoints are gigabytes)."""

from __future__ import annotations

import hashlib


def file_sha256(path) -> str:
    """The hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
