"""Tables in the paper's layout (rows models, columns VD1 VD2 D3 D4, then any other domain scored, e.g. MET) from
evaluation summaries, one per metric; markdown and CSV. The paper's own Tables 1–5, our runs beside the published
values, are `paper_tables`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sam_jax.data.domains import COLUMNS, PAPER_COLUMNS

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


def _order(*row_sets) -> list[str]:
    """The paper's columns, then the registry's other columns that hold a value."""
    present = {c for rows in row_sets for values in (rows or {}).values() for c in values}
    return [c for c in COLUMNS.values() if c in PAPER_COLUMNS or c in present]


def load_summaries(run_dirs) -> list[dict]:
    """Every summary.json under the given folders (searched recursively), each with `summary_path` (where it was
    read: the run it scored is found from it)."""
    found = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        for p in sorted([path] if path.is_file() else path.rglob("summary.json")):
            found.append({**json.loads(p.read_text()), "summary_path": str(p)})
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
    order = _order(rows, published)
    lines = [f"### {title}", "", "| model | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    for name, values in list(rows.items()) + list((published or {}).items()):
        lines.append(f"| {name} | " + " | ".join(_cell(values.get(c)) for c in order) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: dict, published: dict | None = None) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    order = _order(rows, published)
    writer.writerow(["model", *order])
    for name, values in list(rows.items()) + list((published or {}).items()):
        writer.writerow([name, *(_cell(values.get(c)) for c in order)])
    return out.getvalue()


def write_tables(summaries, out_dir, preface: str = "") -> str:
    """One markdown section and one CSV per metric present, after `preface` (the paper's tables) in
    out_dir/tables.md. Returns the whole markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for metric, (title, _) in TABLES.items():
        rows = grid(summaries, metric)
        if not rows:
            continue
        sections.append(markdown(title, rows))
        (out_dir / f"{metric}.csv").write_text(csv_text(rows))
    text = "\n".join(([preface] if preface else []) + sections)
    (out_dir / "tables.md").write_text(text)
    return text
