"""Where models disagree (the paper's Fig. 7): read several evaluation folders of one domain (`eval.main` output:
cases.csv, summary.json, predictions/<case>.nii.gz with --save_predictions), rank the cases every model scored and
has a saved mask for by the spread of a per-case score across the models (max − min; ties by case id), and draw the
first N side by side (`figures.comparison`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from sam_jax.data import find_cases, load_case
from sam_jax.evaluation import figures
from sam_jax.evaluation.errors import EvaluationError


@dataclasses.dataclass
class EvalRun:
    """One evaluation folder: the model's name, its domain and data, and its per-case rows."""

    folder: Path
    name: str
    domain: str
    data_dir: str
    rows: dict  # case id → cases.csv row

    def prediction(self, case_id: str) -> Path:
        return self.folder / "predictions" / f"{case_id}.nii.gz"

    def score(self, case_id: str, metric: str) -> float | None:
        row = self.rows.get(case_id)
        if row is None or row.get("status") != "ok":
            return None
        try:
            value = float(row.get(metric) or "nan")
        except ValueError:
            return None
        return value if math.isfinite(value) else None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:
        raise EvaluationError(f"{path}: not valid JSON ({e})") from None


def read_eval_run(folder) -> EvalRun:
    """An `eval.main` output folder; the data directory is the one it scored (summary.json, else its run's
    config.json)."""
    folder = Path(folder)
    table = folder / "cases.csv"
    if not table.is_file():
        raise EvaluationError(f"{folder}: no cases.csv; expected an eval.main output folder (<workdir>/eval/<domain>)")
    summary = _json(folder / "summary.json")
    config = _json(folder.parent.parent / "config.json")
    with open(table, newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    domains = {r.get("domain") for r in rows.values()} - {None, ""}
    domain = summary.get("domain") or (domains.pop() if len(domains) == 1 else "")
    name = summary.get("model") or folder.parent.parent.name or folder.name
    return EvalRun(folder, name, domain, summary.get("data_dir") or config.get("data_dir", ""), rows)


def rank_cases(runs: list[EvalRun], metric: str) -> list[tuple[str, float, dict]]:
    """(case, spread, {model: score}) for the cases every run scored and saved a mask for, largest spread first."""
    for run in runs:
        columns = next(iter(run.rows.values()), {}).keys()
        if run.rows and metric not in columns:
            raise EvaluationError(
                f"{run.folder / 'cases.csv'} has no {metric} column; it has "
                f"{', '.join(c for c in columns if c not in ('case', 'domain', 'status', 'error'))}"
            )
    ranked = []
    for case_id in sorted(set.intersection(*(set(r.rows) for r in runs))):
        scores = {run.name: run.score(case_id, metric) for run in runs}
        if None in scores.values() or not all(run.prediction(case_id).is_file() for run in runs):
            continue
        ranked.append((case_id, max(scores.values()) - min(scores.values()), scores))
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked


def _mask(path: Path, case) -> np.ndarray:
    """A saved prediction (on the case file's grid) as a mask on the case's LPS grid."""
    try:
        mask = np.asarray(nib.load(str(path)).dataobj) > 0
    except Exception as e:  # nibabel raises several types for a damaged file
        raise EvaluationError(f"{path}: unreadable prediction ({e})") from None
    shape = case.to_file_grid(case.images[next(iter(case.images))]).shape
    if mask.shape != shape:
        raise EvaluationError(f"{path}: prediction shape {mask.shape} differs from the case's {shape}")
    return case.from_file_grid(mask)


def compare(
    run_folders, out_dir, *, domain: str = "", cases: int = 4, metric: str = "dice_3d", data_dir: str = ""
) -> list[tuple[str, float, dict, Path]]:
    """Draw the `cases` cases the runs disagree on most to out_dir/<case>.png; returns (case, spread, scores, png)."""
    runs = [read_eval_run(f) for f in run_folders]
    if len(runs) < 2:
        raise EvaluationError(f"give at least two evaluation folders to compare (got {len(runs)})")
    names = [r.name for r in runs]
    for run in runs:  # two folders of one model (final and best, two domains): tell them apart by folder
        if names.count(run.name) > 1:
            run.name = f"{run.name} [{run.folder.name}]"
    domains = {r.domain for r in runs} - {""}
    if domain and domains - {domain}:
        raise EvaluationError(f"--domain {domain}, but the folders scored {', '.join(sorted(domains))}")
    if not domain and len(domains) != 1:
        raise EvaluationError(f"the folders scored {', '.join(sorted(domains)) or 'no known domain'}; pass --domain")
    domain = domain or domains.pop()
    ranked = rank_cases(runs, metric)
    if not ranked:
        raise EvaluationError(
            f"no case was scored ({metric}) by every run with its mask saved in predictions/; "
            f"evaluate with eval.main --save_predictions"
        )
    data_dirs = [data_dir] if data_dir else list(dict.fromkeys(r.data_dir for r in runs if r.data_dir))
    if not data_dirs:
        raise EvaluationError("no data directory recorded in the folders' summary.json or config.json; pass --data_dir")
    files = {}
    for folder in reversed(data_dirs):  # the first recorded wins
        files.update({c.case_id: c for c in find_cases(folder, domain)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for case_id, spread, scores in ranked[:cases]:
        if case_id not in files:
            raise EvaluationError(f"case {case_id} not found under {', '.join(data_dirs)}; pass --data_dir")
        case = load_case(files[case_id])
        truth = case.whole_tumour if case.seg is not None else None
        masks = {run.name: _mask(run.prediction(case_id), case) for run in runs}
        path = out_dir / f"{case_id}.png"
        figures.comparison(case.images, truth, masks, scores, path, title=f"{case_id}  ({metric})")
        drawn.append((case_id, spread, scores, path))
    return drawn
