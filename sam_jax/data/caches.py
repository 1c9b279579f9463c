"""List the preprocessing caches of data folders or cache roots, with their settings, cases and size on disk:
`python -m sam_jax.data.caches /data/BraTS2023 [more data folders or --cache_dir roots]`.

A data folder's caches are in its default root (`<data_dir>/.sam_jax_cache`, or the user cache for a read-only
folder). Remove one with `rm -r <its folder>` when no run is using it; a later run that needs it builds it again."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sam_jax.data.cache import DEFAULT_NAME, user_cache_dir
from sam_jax.data.cache_layout import LOCK_FILE, MANIFEST
from sam_jax.data.split import SPLIT_FILE


def _disk_bytes(folder: Path) -> int:
    """Bytes the folder takes on disk, as `du` counts them (blocks, not file lengths)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _size(n: int) -> str:
    unit, name = next((u, name) for u, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (0, "kB")) if n >= u)
    return f"{n / max(unit, 1e3):.3g} {name}"


def _roots(path: Path) -> list[Path]:
    """`path` itself when it is a cache root, else the roots a data folder's runs use by default."""
    if (path / SPLIT_FILE).is_file() or any((p / LOCK_FILE).is_file() for p in path.glob("*")):
        return [path]
    return [root for root in (path / DEFAULT_NAME, user_cache_dir(path)) if root.is_dir()]


def _describe(folder: Path) -> str:
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "incomplete: a build was interrupted or is running"
    settings = manifest["settings"]
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(manifest_path.stat().st_mtime))
    parts = [
        f"{len(manifest['cases'])} cases",
        *([f"{len(manifest['skipped'])} skipped"] if manifest.get("skipped") else []),
        f"normalisation {settings['normalisation']}",
        "cropped to the brain" if settings["crop_to_brain"] else "whole volumes",
        *([f"domain {manifest['domain']}"] if manifest.get("domain") else []),
        f"last built {built}",
        f"from {manifest['data_dir']}",
    ]
    return ", ".join(parts)


def list_caches(path) -> list[str]:
    """Lines describing every cache under `path` (a data folder or a cache root)."""
    lines = []
    for root in _roots(Path(path).expanduser().absolute()):
        lines.append(f"{root}:")
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("cases", "tmp")):
            lines.append(f"  {folder.name:<24} {_size(_disk_bytes(folder)):>9}  {_describe(folder)}")
        if (root / "cases").is_dir():
            lines.append(f"  {'cases/':<24} {_size(_disk_bytes(root / 'cases')):>9}  the older layout, unused now")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="data folders or cache roots (--cache_dir)")
    args = parser.parse_args(argv)
    found = False
    for path in args.paths:
        if not Path(path).is_dir():
            print(f"error: {path}: no such folder", file=sys.stderr)
            return 1
        lines = list_caches(path)
        found |= bool(lines)
        print("\n".join(lines) if lines else f"{path}: no caches")
    if found:
        print("remove a cache with `rm -r <root>/<name>` when no run is using it (a run that needs it rebuilds it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
