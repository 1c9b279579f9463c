"""The train/val split: by patient (all time points of one subject on the same side), drawn within each domain as the
paper splits each dataset 80/20 (TD1/VD1, TD2/VD2). Each domain holds out `val_fraction` of its own patients (the
counts rounded by largest remainder so that they add up to the pooled count; ties broken by a seeded draw), chosen
by a seeded permutation of that domain's patients alone. Saved as `split.json` in the cache directory, with how it
was drawn, and reused by training and evaluation (the paper's split was unseeded and never saved)."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

import numpy as np

from sam_jax.data.errors import SplitMismatchError

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
PER_DOMAIN = "per_domain"  # how a split is drawn (`drawn` in split.json); one saved before it has no `drawn`


def _held_out_counts(sizes: dict[str, int], seed: int, val_fraction: float) -> dict[str, int]:
    """Validation patients per domain: `val_fraction` of each, by largest remainder to the rounded total."""
    exact = {d: val_fraction * n for d, n in sizes.items()}
    counts = {d: math.floor(x) for d, x in exact.items()}
    rank = dict(zip(sorted(sizes), np.random.default_rng(seed).permutation(len(sizes))))
    by_remainder = sorted(sizes, key=lambda d: (counts[d] - exact[d], rank[d]))
    for d in by_remainder[: int(round(sum(exact.values()))) - sum(counts.values())]:
        counts[d] += 1
    return counts


def make_split(patient_of: dict[str, str], domain_of: dict[str, str], seed: int = 0, val_fraction: float = 0.2) -> dict:
    """{'seed', 'val_fraction', 'drawn', 'train', 'val'} for cases mapped to their patient ids and domains; the
    validation patients are drawn within each domain; lists are sorted."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = {d: sorted({p for c, p in patient_of.items() if domain_of[c] == d}) for d in set(domain_of.values())}
    counts = _held_out_counts({d: len(ps) for d, ps in patients.items()}, seed, val_fraction)
    val_patients = set()
    for domain, ps in patients.items():
        order = np.random.default_rng(seed).permutation(len(ps))  # one domain alone: the pooled draw
        val_patients |= {ps[i] for i in order[: counts[domain]]}
    return dict(
        seed=seed,
        val_fraction=val_fraction,
        drawn=PER_DOMAIN,
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


def ensure_split(
    cache_dir: str | Path,
    patient_of: dict[str, str],
    domain_of: dict[str, str],
    seed: int = 0,
    val_fraction: float = 0.2,
) -> dict:
    """The saved split, written first if there is none. A saved split for another set of cases or another seed is
    an error rather than silently redrawn, since a new draw would leak validation patients into training. One drawn
    over the pooled patients (saved before splits were drawn per domain) is kept, with a warning: the runs trained on
    it are scored on it."""
    path = Path(cache_dir) / SPLIT_FILE
    if not path.exists():
        split = make_split(patient_of, domain_of, seed, val_fraction)
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
    if split.get("drawn") != PER_DOMAIN:
        log.warning(
            "%s: drawn over all domains' patients pooled, not per domain as the paper splits each dataset; kept "
            "(runs trained on it are scored on it); delete it to draw a per-domain split (and retrain)",
            path,
        )
    return split
