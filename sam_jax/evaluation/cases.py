"""Which cases a per-domain evaluation scores: a domain's held-out validation cases from the saved split (VD1 of a
GLI-trained model), all its cases (cross-domain D3, D4), or `auto`: validation cases when the model was trained on
that domain, all of them otherwise (the paper's cross-domain rule)."""

from __future__ import annotations

from pathlib import Path

from sam_jax.data.brats import find_cases
from sam_jax.data.cache import default_cache_dir
from sam_jax.data.domains import files_like
from sam_jax.data.split import ensure_split
from sam_jax.evaluation.errors import EvaluationError

SPLITS = ("val", "all", "auto")


def resolve_split(split: str, domain: str, trained_on: str | None) -> str:
    if split not in SPLITS:
        raise EvaluationError(f"--split {split}: expected one of {SPLITS}")
    if split != "auto":
        return split
    return "val" if trained_on in (domain, "ALL") else "all"


def select_cases(data_dir, domain: str, split: str, cache_dir=None):
    """CaseFiles of `domain` under `data_dir` in the given split ('val' or 'all'). The split is the one saved in the
    preprocessing cache at training time (drawn now, seed 0, if the cache has none)."""
    data_dir = Path(data_dir)
    every = find_cases(data_dir)
    if not every:
        raise EvaluationError(f"{data_dir}: no cases found ({files_like()})")
    chosen = [c for c in every if c.domain == domain]
    if split == "val":
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        patient_of, domain_of = ({c.case_id: c.patient_id for c in every}, {c.case_id: c.domain for c in every})
        held_out = set(ensure_split(cache_dir, patient_of, domain_of)["val"])
        chosen = [c for c in chosen if c.case_id in held_out]
    if not chosen:
        raise EvaluationError(f"{data_dir}: no {domain} cases in split {split!r}")
    return chosen
