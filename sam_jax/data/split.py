"""The train/val split: by patient (all time points of one subject on the same side), a fixed share of patients to
validation chosen by a seeded permutation, saved as `split.json` in the cache directory and reused by training and
evaluation (the paper's split was unseeded and never saved)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from sam_jax.data.errors import SplitMismatchError

SPLIT_FILE = "split.json"


def make_split(patient_of: dict[str, str], seed: int = 0, val_fraction: float = 0.2) -> dict:
    """{'seed', 'val_fraction', 'train', 'val'} for cases mapped to their patient ids; lists are sorted."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = sorted(set(patient_of.values()))
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for i in order[: int(round(val_fraction * len(patients)))]}
    return dict(
        seed=seed,
        val_fraction=val_fraction,
        train=sorted(c for c, p in patient_of.items() if p not in val_patients),
        val=sorted(c for c, p in patient_of.items() if p in val_patients),
    )


def load_split(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / SPLIT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SplitMismatchError(f"{path}: no split file (build_cache writes it)") from None
    except ValueError as error:
        raise SplitMismatchError(f"{path}: not valid JSON ({error})") from None


def ensure_split(cache_dir: str | Path, patient_of: dict[str, str], seed: int = 0, val_fraction: float = 0.2) -> dict:
    """The saved split, written first if there is none. A saved split for another set of cases or another seed is
    an error rather than silently redrawn, since a new draw would leak validation patients into training."""
    path = Path(cache_dir) / SPLIT_FILE
    if not path.exists():
        split = make_split(patient_of, seed, val_fraction)
        temporary = path.with_name(f".{SPLIT_FILE}.{uuid.uuid4().hex}")
        temporary.write_text(json.dumps(split, indent=1))
        os.replace(temporary, path)
        return split
    split = load_split(cache_dir)
    if set(split["train"]) | set(split["val"]) != set(patient_of):
        raise SplitMismatchError(
            f"{path}: the saved split lists other cases than {len(patient_of)} found now; "
            "delete it to draw a new split (and retrain)"
        )
    if split["seed"] != seed or split["val_fraction"] != val_fraction:
        raise SplitMismatchError(
            f"{path}: saved with seed {split['seed']} and val_fraction {split['val_fraction']}, "
            f"asked for {seed} and {val_fraction}"
        )
    return split
