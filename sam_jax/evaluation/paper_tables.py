"""The paper's Tables 1–5, row by row: which of our runs stands for each published row (matched by its run spec and
training settings, never by its name), the published paper-protocol Dice (%) beside ours, and ours − published.

A run is described by a `Profile` read from its run directory (config.json: the run spec plus the training domain and
`init_adapter`; else the spec in its adapter's header), or, for zero-shot SAM, from the name `eval.main` gives it
(`sam_<size>_zero_shot_<layout>[_<input size>]`). Each paper row has a predicate over profiles; every matching run
gets its own line (a run evaluated with both `--select final` and `best` appears once, as `best`: what the paper
reported). A row no run matches is shown with "–"; a published value not found in any source is "n/a" (docs/
reference.md §7 lists what was found and where). Deviations from the paper's setting (SAM size, input size, LoRA
shape, random base) are named beside the run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Callable

from sam_jax.adaptation.modalities import LAYOUTS, MODALITIES
from sam_jax.data.domains import PAPER_COLUMNS
from sam_jax.errors import SamJaxError

MISSING, NOT_FOUND = "–", "n/a"  # no run of ours; no published value found
SOURCE = "docs/reference.md §7"
PAPER_LORA = (4, 1.0, ("q", "v", "lin1", "lin2"))  # rank, alpha, targets (docs/reference.md §4)


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a paper row needs to know about one evaluated model."""

    run: str  # identity: the run directory, or the zero-shot model's name
    zero_shot: bool
    modalities: tuple
    trainable: str
    lora_rank: int
    cross_slice: bool
    domain: str | None  # training domain (None: zero-shot, or unknown)
    init_adapter: str
    notes: tuple = ()  # where it departs from the paper's setting


@dataclasses.dataclass(frozen=True)
class PaperRow:
    label: str
    match: Callable[[Profile], bool] | None  # None: a method we do not run (other authors')
    published: dict  # column → value (%), or a string such as "<10"; a column absent: not found


@dataclasses.dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    rows: tuple


def _lora(layout: str, domain: str) -> Callable[[Profile], bool]:
    def match(p: Profile) -> bool:
        return (
            not p.zero_shot
            and p.trainable == "lora"
            and p.lora_rank > 0
            and not p.cross_slice
            and not p.init_adapter
            and p.modalities == LAYOUTS[layout]
            and p.domain == domain
        )

    return match


def _trained(trainable: str, two_step: bool) -> Callable[[Profile], bool]:
    def match(p: Profile) -> bool:
        return (
            not p.zero_shot
            and p.trainable == trainable
            and not p.cross_slice
            and bool(p.init_adapter) == two_step
            and p.modalities == LAYOUTS["all4"]
            and p.domain == "GLI"
        )

    return match


def _zero_shot(p: Profile) -> bool:
    return p.zero_shot


_LAYOUT_LABELS = {
    "t1n_x3": "T1 ×3",
    "t1c_x3": "T1Gd ×3",
    "t2w_x3": "T2 ×3",
    "t2f_x3": "FLAIR ×3",
    "t1n_t2w_t2f": "T1/T2/FLAIR stacked",
    "all4": "4 channels",
}
_PUBLISHED_GLI = {"VD1": 61.9, "VD2": 65.7, "D3": 50.7, "D4": 56.2}  # LoRA, 4 channels, trained on GLI
_PUBLISHED_MEN = {"VD1": 58.4, "VD2": 75.3, "D3": 65.7, "D4": 52.4}  # LoRA, 4 channels, trained on MEN


def _lora_rows(domain: str, four_channels: dict) -> tuple:
    return tuple(
        PaperRow(f"LoRA, {label}", _lora(layout, domain), four_channels if layout == "all4" else {})
        for layout, label in _LAYOUT_LABELS.items()
    )


TABLES = (
    PaperTable(
        "table1",
        "Table 1: zero-shot SAM and LoRA by input layout, trained on GLI",
        (PaperRow("SAM zero-shot (any 3-channel layout)", _zero_shot, {c: "<10" for c in PAPER_COLUMNS}),)
        + _lora_rows("GLI", _PUBLISHED_GLI),
    ),
    PaperTable("table2", "Table 2: LoRA by input layout, trained on MEN", _lora_rows("MEN", _PUBLISHED_MEN)),
    PaperTable(
        "table3",
        "Table 3: two-step training (patch embedding, then LoRA), 4 channels, trained on GLI",
        (
            PaperRow("Step 1 alone: patch embedding", _trained("patch_embed_only", False), {}),
            PaperRow(
                "Two-step: patch embedding, then LoRA",
                _trained("lora_frozen_patch", True),
                {"VD1": 30.4, "VD2": 32.8, "D3": 19.4, "D4": 26.8},
            ),
        ),
    ),
    PaperTable(
        "table4",
        "Table 4: full fine-tuning, 4 channels, trained on GLI",
        (PaperRow("Full fine-tuning", _trained("full", False), {"VD1": 17.2, "VD2": 14.9, "D3": 12.0, "D4": 11.7}),),
    ),
    PaperTable(
        "table5",
        "Table 5: comparison with other methods (trained on GLI)",
        (
            PaperRow("SAM-Med2D", None, {"VD1": 47.2, "VD2": 74.7, "D3": 52.8, "D4": 42.3}),
            PaperRow("Ranem et al.", None, {}),
            PaperRow("Ours: LoRA, 4 channels", _lora("all4", "GLI"), _PUBLISHED_GLI),
        ),
    ),
)


# ---- Profiles: what each evaluated model is ----


def _selection(summary: dict) -> str:
    folder = Path(summary.get("summary_path", "")).parent.name
    return "best" if folder.endswith("_best") or str(summary.get("model", "")).endswith("_best") else "final"


def _run_dir(summary: dict) -> Path | None:
    """The training run an evaluation scored: its recorded --checkpoint, else <run>/eval/<domain>/summary.json."""
    candidates = [Path(summary["checkpoint"])] if summary.get("checkpoint") else []
    if summary.get("summary_path"):
        candidates.append(Path(summary["summary_path"]).parent.parent.parent)
    for folder in candidates:
        if (folder / "config.json").is_file() or (folder / "adapter.safetensors").is_file():
            return folder
    return None


def _zero_shot_profile(name: str) -> Profile | None:
    """From `sam_<size>_zero_shot_<layout>[_<input size>]` (trained.load_zero_shot's name)."""
    found = re.fullmatch(r"sam_(.+?)_zero_shot_(.+?)(?:_(\d+))?", name)
    if not found:
        return None
    model_type, layout, size = found.groups()
    if layout in LAYOUTS:
        modalities = LAYOUTS[layout]
    elif all(m in MODALITIES for m in layout.split("_")):
        modalities = tuple(layout.split("_"))
    else:
        return None
    notes = tuple(n for n in (model_type if model_type != "vit_b" else "", f"{size} px" if size else "") if n)
    return Profile(name, True, modalities, "none", 0, False, None, "", notes)


def _trained_profile(run_dir: Path) -> Profile:
    from sam_jax.evaluation.trained import read_run

    spec, raw = read_run(run_dir)  # an adapter alone has no training settings (domain, init_adapter)
    notes = []
    if spec.model_type != "vit_b":
        notes.append(spec.model_type)
    if spec.image_size != 1024:
        notes.append(f"{spec.image_size} px")
    if spec.lora_rank and (spec.lora_rank, spec.lora_alpha, tuple(spec.lora_targets)) != PAPER_LORA:
        notes.append(f"LoRA r{spec.lora_rank} α{spec.lora_alpha:g} on {','.join(spec.lora_targets)}")
    if spec.base_sha256.startswith("random-init"):
        notes.append("random init")
    return Profile(
        str(run_dir.resolve()),
        False,
        tuple(spec.modalities),
        spec.trainable,
        spec.lora_rank,
        spec.cross_slice,
        raw.get("domain"),
        raw.get("init_adapter", ""),
        tuple(notes),
    )


def profile(summary: dict) -> Profile:
    """What the summary's model is; raises SamJaxError (with why) when that cannot be told."""
    run_dir = _run_dir(summary)
    if run_dir is not None:
        return _trained_profile(run_dir)
    zero_shot = _zero_shot_profile(str(summary.get("model", "")))
    if zero_shot is None:
        raise SamJaxError("no run directory (config.json) found, and not a zero-shot model's name")
    return zero_shot


# ---- Tables ----


@dataclasses.dataclass
class Entry:
    """One of our models: its label, profile and paper-protocol Dice (%) by column."""

    label: str
    profile: Profile
    selection: str
    values: dict


def entries(summaries) -> tuple[list[Entry], dict[str, str]]:
    """Our models with their paper Dice by column (one selection per run: best when evaluated, else final), and the
    models that could not be profiled with why."""
    found: dict[tuple, Entry] = {}
    unknown = {}
    for s in summaries:
        value = s.get("means", {}).get("paper_dice")
        if value is None:
            continue
        try:
            p = profile(s)
        except SamJaxError as e:
            unknown[s.get("model", "?")] = str(e)
            continue
        selection = _selection(s)
        key = (p.run, selection)
        if key not in found:
            label = s.get("model") or Path(p.run).name
            found[key] = Entry(label + (f" ({', '.join(p.notes)})" if p.notes else ""), p, selection, {})
        found[key].values[s["column"]] = 100 * value
    chosen = [e for (run, sel), e in found.items() if sel == "best" or (run, "best") not in found]
    return sorted(chosen, key=lambda e: e.label), unknown


def _number(value) -> str:
    return f"{value:.1f}"


def _triple(ours, published) -> tuple[str, str, str]:
    """(ours, published, ours − published) cells."""
    ours_cell = MISSING if ours is None else _number(ours)
    if published is None:
        pub_cell = NOT_FOUND
    else:
        pub_cell = published if isinstance(published, str) else _number(published)
    if ours is None:
        diff = MISSING
    elif published is None or isinstance(published, str):
        diff = NOT_FOUND
    else:
        diff = f"{round(ours, 1) - published:+.1f}"
    return ours_cell, pub_cell, diff


def table_lines(table: PaperTable, models: list[Entry]) -> list[list[str]]:
    """Rows of cells: paper row, our run, then (ours, published, Δ) per column; one line per matching run."""
    lines = []
    for row in table.rows:
        matched = [m for m in models if row.match is not None and row.match(m.profile)]
        for m in matched or [None]:
            cells = [row.label, MISSING if m is None else m.label]
            for c in PAPER_COLUMNS:
                cells += _triple(None if m is None else m.values.get(c), row.published.get(c))
            lines.append(cells)
    return lines


def header(diff: str) -> list[str]:
    return ["paper row", "our run"] + [f"{c} {part}" for c in PAPER_COLUMNS for part in ("ours", "paper", diff)]


def markdown(table: PaperTable, models: list[Entry]) -> str:
    head = header("Δ")
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_lines(table, models)]
    lines += [
        "",
        f"Paper-protocol Dice (%); Δ = ours − paper. Published: {SOURCE}; {NOT_FOUND}: not found in a "
        f"source; {MISSING}: no run of ours matches.",
    ]
    return "\n".join(lines) + "\n"


def csv_text(table: PaperTable, models: list[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header("diff"))
    writer.writerows(table_lines(table, models))
    return out.getvalue()


def write_paper_tables(summaries, out_dir) -> str:
    """<out_dir>/paper_<table>.csv for each of Tables 1–5; returns their markdown, with the models no row matched
    and those that could not be profiled listed after them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models, unknown = entries(summaries)
    sections = []
    for table in TABLES:
        sections.append(markdown(table, models))
        (out_dir / f"paper_{table.key}.csv").write_text(csv_text(table, models))
    used = {m.label for t in TABLES for r in t.rows for m in models if r.match is not None and r.match(m.profile)}
    extra = [m.label for m in models if m.label not in used]
    if extra:
        sections.append("Runs that match no paper row: " + ", ".join(extra) + "\n")
    if unknown:
        sections.append(
            "Runs not placed (their settings could not be read): "
            + "; ".join(f"{name}: {why}" for name, why in sorted(unknown.items()))
            + "\n"
        )
    return "\n".join(sections)
