"""Tables in the paper's layout (rows models, columns VD1 VD2 D3 D4) from evaluation summaries, with the paper's
published rows (paper protocol Dice, docs/reference.md §7) printed beside ours; markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sam_jax.evaluation.cases import COLUMNS

# Published paper-protocol Dice (%) by column; zero-shot SAM is only reported as "< 10".
PUBLISHED = {
    "paper: SAM zero-shot": {"VD1": "<10", "VD2": "<10", "D3": "<10", "D4": "<10"},
    "paper: full fine-tuning": {"VD1": 17.2, "VD2": 14.9, "D3": 12.0, "D4": 11.7},
    "paper: two-step (patch embed, then LoRA)": {"VD1": 30.4, "VD2": 32.8, "D3": 19.4, "D4": 26.8},
    "paper: SAM-Med2D": {"VD1": 47.2, "VD2": 74.7, "D3": 52.8, "D4": 42.3},
    "paper: LoRA 4-ch, trained on GLI": {"VD1": 61.9, "VD2": 65.7, "D3": 50.7, "D4": 56.2},
    "paper: LoRA 4-ch, trained on MEN": {"VD1": 58.4, "VD2": 75.3, "D3": 65.7, "D4": 52.4},
}
# (metric key in a summary, title, multiply by) per table.
TABLES = {
    "paper_dice": ("Dice, paper protocol (%)", 100),
    "tumour_slice_dice": ("Dice over tumour slices, one click, logit 0 (%)", 100),
    "dice_3d": ("Whole-tumour 3-D Dice, native grid (%)", 100),
    "hd95": ("Whole-tumour HD95 (mm)", 1),
    "lesion_dice": ("BraTS 2023 lesion-wise Dice (%)", 100),
    "lesion_hd95": ("BraTS 2023 lesion-wise HD95 (mm)", 1),
    "dice_after_1": ("Interactive: Dice after 1 RITM click (%)", 100),
    "noc85": ("Interactive: NoC@85", 1),
    "noc90": ("Interactive: NoC@90", 1),
}
ORDER = tuple(COLUMNS.values())


def load_summaries(run_dirs) -> list[dict]:
    """Every summary.json under the given folders (searched recursively)."""
    found = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        found += [json.loads(p.read_text()) for p in sorted([path] if path.is_file() else path.rglob("summary.json"))]
    return found


def grid(summaries, metric: str) -> dict[str, dict[str, float]]:
    """{model: {column: value}} for one metric; the scale of TABLES applied."""
    scale = TABLES[metric][1]
    rows: dict[str, dict] = {}
    for s in summaries:
        value = s.get("means", {}).get(metric)
        if value is not None:
            rows.setdefault(s["model"], {})[s["column"]] = value * scale
    return rows


def _cell(value) -> str:
    return "" if value is None else value if isinstance(value, str) else f"{value:.1f}"


def markdown(title: str, rows: dict, published: dict | None = None) -> str:
    lines = [f"### {title}", "", "| model | " + " | ".join(ORDER) + " |", "|---" * (len(ORDER) + 1) + "|"]
    for name, values in list(rows.items()) + list((published or {}).items()):
        lines.append(f"| {name} | " + " | ".join(_cell(values.get(c)) for c in ORDER) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: dict, published: dict | None = None) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", *ORDER])
    for name, values in list(rows.items()) + list((published or {}).items()):
        writer.writerow([name, *(_cell(values.get(c)) for c in ORDER)])
    return out.getvalue()


def write_tables(summaries, out_dir) -> str:
    """One markdown section and one CSV per metric present; the paper's rows go with the paper-protocol table.
    Returns the whole markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for metric, (title, _) in TABLES.items():
        rows = grid(summaries, metric)
        if not rows:
            continue
        published = PUBLISHED if metric == "paper_dice" else None
        sections.append(markdown(title, rows, published))
        (out_dir / f"{metric}.csv").write_text(csv_text(rows, published))
    text = "\n".join(sections)
    (out_dir / "tables.md").write_text(text)
    return text
