"""Score a model on a list of cases, case by case: each case's encoder embeddings are computed once and shared by
the protocols (`paper`, `volumetric`, `interactive`, and on request `box`); each case's row is appended to the CSV
as soon as it is done, and a case that cannot be read or scored is recorded as failed with its reason while the
others go on. The volumetric protocol scores the mask `eval.predict` writes: one ground-truth prompt per
26-connected tumour component (a click, or a box for a run trained with boxes), propagated slice by slice
(`sam_jax.evaluation.prediction`); the interactive one runs on the tumour slices and reports per-slice NoC and
Dice-after-k averaged over the volume's tumour slices; the box one decodes each tumour slice from its ground-truth
box, tight and jittered (`sam_jax.evaluation.box_protocol`).

Several processes share the cases (process p of n scores cases p, p + n, …; clicks depend on the case alone), each
writing its own rows (`process_csv`); `merge_process_csvs` joins them into the one cases.csv a single process
writes, in the same case order."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from sam_jax.data import DataError, load_case, save_prediction
from sam_jax.data.brats import empty_segmentation
from sam_jax.evaluation import figures
from sam_jax.evaluation.box_protocol import box_scores
from sam_jax.evaluation.errors import EmptyGroundTruth, EvaluationError
from sam_jax.evaluation.interactive import ritm_dice_curves
from sam_jax.evaluation.paper_protocol import case_rng, run_paper_protocol
from sam_jax.evaluation.prediction import predict_volume
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.evaluation.volumetric import volumetric_scores
from sam_jax.metrics import NOC_MAX_CLICKS, MetricInputError, clicks_to_reach
from sam_jax.outputs import check_output_dir, write_atomic
from sam_jax.progress import progress_bar

PROTOCOLS = ("paper", "volumetric", "interactive", "box")
DEFAULT_PROTOCOLS = PROTOCOLS[:3]  # the paper's; box on request
CASES_CSV = "cases.csv"
SCORE_COLUMNS = {
    "paper": ("paper_dice", "tumour_slice_dice"),
    "volumetric": ("dice_3d", "hd95", "lesion_dice", "lesion_hd95", "lesions_tp", "lesions_fn", "lesions_fp"),
    "interactive": ("noc85", "noc90"),
    "box": ("box_dice", "box_jitter_dice"),
}


def interactive_scores(segmenter, embeddings, tumour, max_clicks: int, feed_back_mask: bool) -> dict:
    has_tumour = np.flatnonzero(tumour.any(axis=(1, 2)))
    if has_tumour.size == 0:
        return {}
    curves = ritm_dice_curves(segmenter, embeddings[has_tumour], tumour[has_tumour], max_clicks, feed_back_mask)
    scores = {f"noc{p}": float(np.mean([clicks_to_reach(c, p / 100, max_clicks) for c in curves])) for p in (85, 90)}
    scores.update({f"dice_after_{k + 1}": float(v) for k, v in enumerate(curves.mean(axis=0))})
    return scores


def score_case(segmenter, trained, case_files, protocols, seed: int, max_clicks: int):
    """(row of scores, the case, its native-grid prediction or None without the volumetric protocol)."""
    case = load_case(case_files)
    if empty_segmentation(case):
        raise EmptyGroundTruth(
            f"{case_files.seg}: the segmentation is empty (no tumour voxel): no click to prompt "
            "with; left out of the means"
        )
    volume = prepare_volume(case, trained.spec)
    truth = volume.native_tumour()
    embeddings = segmenter.encode(volume.slices)
    row, prediction = {}, None
    if "paper" in protocols:
        row.update(run_paper_protocol(segmenter, embeddings, volume.tumour, case_rng(seed, case.case_id)))
    if "volumetric" in protocols:
        prediction, _ = predict_volume(segmenter, volume, embeddings=embeddings, prompt=trained.spec.prompt)
        spacing = case.spacing
        row.update(volumetric_scores(prediction, truth, spacing, case_files.domain))
    if "interactive" in protocols:
        row.update(
            interactive_scores(
                segmenter, embeddings, volume.tumour, max_clicks, trained.training.get("prompt_rounds", 1) > 1
            )
        )
    if "box" in protocols:
        row.update(box_scores(segmenter, embeddings, volume.tumour, case_rng(seed, case.case_id)))
    return row, case, prediction


def columns(protocols, max_clicks: int) -> list[str]:
    out = ["case", "domain", "status", "error", "seconds"]
    for p in protocols:
        out += SCORE_COLUMNS[p]
    if "interactive" in protocols:
        out += [f"dice_after_{k}" for k in range(1, max_clicks + 1)]
    return out


def check_protocols(protocols) -> None:
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise EvaluationError(f"--protocols: unknown {unknown}; expected some of {', '.join(PROTOCOLS)}")
    if not protocols:
        raise EvaluationError(f"--protocols: none given; expected some of {', '.join(PROTOCOLS)}")


def evaluate_cases(
    segmenter,
    trained,
    cases,
    out_dir,
    *,
    protocols=DEFAULT_PROTOCOLS,
    seed: int = 0,
    max_clicks: int = NOC_MAX_CLICKS,
    save_predictions: bool = False,
    overlays: int = 0,
    csv_name: str = CASES_CSV,
) -> list[dict]:
    """Rows, one per CaseFiles of `cases`, also written to `out_dir/<csv_name>` (cases.csv) as they come. With the
    volumetric protocol, `save_predictions` writes `predictions/<case>.nii.gz` in each case's geometry and `overlays`
    writes PNGs of the first that many scored cases to `overlays/`."""
    check_protocols(protocols)
    out_dir = check_output_dir(out_dir, "evaluation output folder")
    names = columns(protocols, max_clicks)
    rows = []
    with open(out_dir / csv_name, "w", newline="") as f:
        writer = csv.DictWriter(f, names, restval="")
        writer.writeheader()
        for case_files in progress_bar(cases, desc="cases", unit="case"):
            tick = time.perf_counter()
            row = {"case": case_files.case_id, "domain": case_files.domain}
            try:
                scores, case, prediction = score_case(segmenter, trained, case_files, protocols, seed, max_clicks)
                row.update(scores, status="ok")
                if prediction is not None:
                    _write_outputs(
                        out_dir, case, prediction, save_predictions, overlays > sum(r["status"] == "ok" for r in rows)
                    )
            except EmptyGroundTruth as e:
                row.update(status="empty_ground_truth", error=str(e))
            except (DataError, EvaluationError, MetricInputError, OSError) as e:
                row.update(status="failed", error=str(e).replace("\n", " | "))
            row["seconds"] = round(time.perf_counter() - tick, 2)
            writer.writerow(row)
            f.flush()
            rows.append(row)
    return rows


def process_csv(index: int, count: int) -> str:
    """The file of one process's rows, beside cases.csv until they are merged."""
    return f"cases.process_{index}-of-{count}.csv"


def merge_process_csvs(out_dir, case_ids, count: int) -> list[dict]:
    """Join the `count` processes' row files into out_dir/cases.csv, rows in `case_ids`' order (that of a single
    process), and remove them. Returns the rows as `evaluate_cases` does (values read back from the text, which holds
    them exactly; columns a case has no value for left out)."""
    out_dir = Path(out_dir)
    parts = [out_dir / process_csv(i, count) for i in range(count)]
    rows, names = {}, None
    for part in parts:
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            names = names or reader.fieldnames
            rows.update((r["case"], r) for r in reader)
    if missing := [c for c in case_ids if c not in rows]:
        raise EvaluationError(f"{out_dir}: no row for cases {missing[:5]} in the processes' files")
    with open(out_dir / CASES_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, names)
        writer.writeheader()
        writer.writerows(rows[c] for c in case_ids)
    for part in parts:
        part.unlink()
    return [{k: _number(v) for k, v in rows[c].items() if v != ""} for c in case_ids]


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _write_outputs(out_dir: Path, case, prediction, save_prediction_file: bool, overlay: bool) -> None:
    if save_prediction_file:
        (out_dir / "predictions").mkdir(exist_ok=True)
        save_prediction(case, prediction, out_dir / "predictions" / f"{case.case_id}.nii.gz")
    if overlay:
        (out_dir / "overlays").mkdir(exist_ok=True)
        figures.overlay(
            case.images, case.whole_tumour, prediction, out_dir / "overlays" / f"{case.case_id}.png", title=case.case_id
        )


def summarise(rows, protocols, **about) -> dict:
    """Means over the cases that were scored (NaN-free), with the failed cases and why, and the cases left out for
    an empty ground truth."""
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = [c for p in protocols for c in SCORE_COLUMNS[p]]
    means = {}
    for m in metrics + sorted(
        {k for r in ok for k in r if k.startswith("dice_after_")}, key=lambda k: int(k.rsplit("_", 1)[1])
    ):
        values = [float(r[m]) for r in ok if m in r and np.isfinite(float(r[m]))]
        means[m] = float(np.mean(values)) if values else None
    return {
        **about,
        "protocols": list(protocols),
        "cases": len(rows),
        "scored": len(ok),
        "failed": {r["case"]: r["error"] for r in rows if r["status"] == "failed"},
        "empty_ground_truth": [r["case"] for r in rows if r["status"] == "empty_ground_truth"],
        "means": means,
    }


def write_summary(summary: dict, out_dir) -> Path:
    return write_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=2))
