"""The paper's Tables 1–5, row by row: which of our runs stands for each published row (matched by its run spec and
training settings, never by its name), the published paper-protocol Dice (%) beside ours, and ours − published.

A run is described by a `Profile` read from its run directory (config.json: the run spec plus the training domain and
`init_adapter`; else the spec in its adapter's header), or, for zero-shot SAM, from the name `eval.main` gives it
(`trained.zero_shot_name`). Each paper row has a predicate over profiles; every matching run gets its own line (a run
evaluated with both `--select final` and `best` appears once, as `best`: what the paper reported). Every published
value is the paper's, at its precision; a row no run matches is shown with "–", a cell the paper leaves empty with
"n/a". Deviations from the paper's setting (SAM size, input size, LoRA shape, random base, the zero-shot input) are
named beside the run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Callable

from sam_jax.adaptation.modalities import LAYOUTS
from sam_jax.data.domains import PAPER_COLUMNS
from sam_jax.errors import SamJaxError
from sam_jax.evaluation.trained import parse_zero_shot_name, read_run

MISSING, NOT_PUBLISHED = "–", "n/a"  # no run of ours; the paper prints no value ("-", or a row it does not have)
SOURCE = "the paper's Tables 1–5 (docs/paper_notes.md)"
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
    published: dict  # column → value (%); a column absent: the paper prints none


@dataclasses.dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    rows: tuple
    digits: int = 2  # as the paper prints it (Table 5 rounds to one decimal)


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


def _zero_shot(layout: str) -> Callable[[Profile], bool]:
    def match(p: Profile) -> bool:
        return p.zero_shot and p.modalities == LAYOUTS[layout]

    return match


def _values(*published) -> dict:
    """VD1, VD2, D3, D4 in the paper's order."""
    return dict(zip(PAPER_COLUMNS, published))


# The 3-channel layouts of Tables 1 and 2, in the paper's order, with its labels.
_LAYOUTS = (
    ("t1n_x3", "T1"),
    ("t1c_x3", "T1Gd"),
    ("t2w_x3", "T2"),
    ("t2f_x3", "T2-FLAIR"),
    ("t1n_t2w_t2f", "[T1, T2, T2-FLAIR]"),
)
# Published Dice (%), transcribed from the paper. Table 1: zero-shot, then LoRA (trained on TD1, §4.3), per layout.
_TABLE1 = {
    "t1n_x3": ((4.33, 1.55, 3.43, 7.59), (58.45, 74.16, 65.68, 52.34)),
    "t1c_x3": ((6.51, 2.39, 4.24, 6.51), (58.54, 74.71, 65.59, 52.61)),
    "t2w_x3": ((4.51, 2.87, 1.76, 7.75), (58.19, 74.51, 65.36, 52.46)),
    "t2f_x3": ((3.85, 2.19, 3.08, 7.85), (59.64, 74.72, 65.46, 52.73)),
    "t1n_t2w_t2f": ((5.14, 2.91, 2.99, 6.03), (57.87, 74.44, 65.37, 52.67)),
}
# Table 2's ×3 and stacked rows: Table 1's LoRA rows but for T1's D3 (65.62, not 65.68; docs/paper_notes.md).
_TABLE2 = {
    "t1n_x3": (58.45, 74.16, 65.62, 52.34),
    "t1c_x3": (58.54, 74.71, 65.59, 52.61),
    "t2w_x3": (58.19, 74.51, 65.36, 52.46),
    "t2f_x3": (59.64, 74.72, 65.46, 52.73),
    "t1n_t2w_t2f": (57.87, 74.44, 65.37, 52.67),
}
_OURS_TD1 = (61.85, 65.68, 50.65, 56.20)  # LoRA, 4 channels, trained on TD1 (Tables 2, 3, 4)
_OURS_TD2 = (58.38, 75.27, 65.62, 52.35)  # trained on TD2 (Table 2)
_OURS_GLI, _OURS_MEN = _lora("all4", "GLI"), _lora("all4", "MEN")


def _table1_rows() -> tuple:
    rows = []
    for layout, label in _LAYOUTS:
        zero_shot, lora = _TABLE1[layout]
        rows.append(PaperRow(f"Zero-shot, {label}", _zero_shot(layout), _values(*zero_shot)))
        rows.append(PaperRow(f"LoRA, {label}", _lora(layout, "GLI"), _values(*lora)))
    return tuple(rows)


TABLES = (
    PaperTable(
        "table1",
        "Table 1: zero-shot SAM vs LoRA by 3-channel input layout (LoRA trained on TD1)",
        _table1_rows(),
    ),
    PaperTable(
        "table2",
        "Table 2: LoRA by input layout (×3: one modality repeated; trained on TD1) and ours, 4 channels",
        tuple(
            PaperRow(label + (" ×3" if layout.endswith("_x3") else ""), _lora(layout, "GLI"), _values(*_TABLE2[layout]))
            for layout, label in _LAYOUTS
        )
        + (
            PaperRow("Ours(TD1)", _OURS_GLI, _values(*_OURS_TD1)),
            PaperRow("Ours(TD2)", _OURS_MEN, _values(*_OURS_TD2)),
        ),
    ),
    PaperTable(
        "table3",
        "Table 3: 1-step vs 2-step adaptation (patch embedding, then LoRA), 4 channels, trained on TD1",
        (
            PaperRow("Step 1 alone: patch embedding (not in the paper)", _trained("patch_embed_only", False), {}),
            PaperRow("2 Step", _trained("lora_frozen_patch", True), _values(30.36, 32.77, 19.36, 26.84)),
            PaperRow("Ours (TD1)", _OURS_GLI, _values(*_OURS_TD1)),
        ),
    ),
    PaperTable(
        "table4",
        "Table 4: full fine-tuning vs LoRA, 4 channels, trained on TD1",
        (
            PaperRow("SAM FT", _trained("full", False), _values(17.19, 14.92, 11.96, 11.71)),
            PaperRow("Ours", _OURS_GLI, _values(*_OURS_TD1)),
        ),
    ),
    PaperTable(
        "table5",
        "Table 5: comparison with other SAM methods",
        (
            PaperRow("SAM-Med2D", None, _values(47.2, 74.7, 52.8, 42.3)),
            PaperRow("Ranem et al.", None, _values(61.9)),
            PaperRow("Ours(TD1)", _OURS_GLI, _values(61.9, 65.7, 50.7, 56.2)),
            PaperRow("Ours(TD2)", _OURS_MEN, _values(58.4, 75.3, 65.7, 52.4)),
        ),
        digits=1,
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
    """From the name `trained.zero_shot_name` gives a zero-shot model."""
    found = parse_zero_shot_name(name)
    if found is None:
        return None
    notes = (
        found["model_type"] if found["model_type"] != "vit_b" else "",
        f"{found['image_size']} px" if found["image_size"] != 1024 else "",
        _INPUT_NOTES[found["zero_shot_input"]],
    )
    return Profile(name, True, found["modalities"], "none", 0, False, None, "", tuple(n for n in notes if n))


_INPUT_NOTES = {"sam_rgb": "", "raw_crop": "raw crop", "original_code": "original code"}


def _trained_profile(run_dir: Path) -> Profile:
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


def _triple(ours, published, digits: int) -> tuple[str, str, str]:
    """(ours, published, ours − published) cells, at the paper's precision."""
    ours_cell = MISSING if ours is None else f"{ours:.{digits}f}"
    pub_cell = NOT_PUBLISHED if published is None else f"{published:.{digits}f}"
    if ours is None:
        diff = MISSING
    elif published is None:
        diff = NOT_PUBLISHED
    else:
        diff = f"{round(ours, digits) - published:+.{digits}f}"
    return ours_cell, pub_cell, diff


def table_lines(table: PaperTable, models: list[Entry]) -> list[list[str]]:
    """Rows of cells: paper row, our run, then (ours, published, Δ) per column; one line per matching run."""
    lines = []
    for row in table.rows:
        matched = [m for m in models if row.match is not None and row.match(m.profile)]
        for m in matched or [None]:
            cells = [row.label, MISSING if m is None else m.label]
            for c in PAPER_COLUMNS:
                cells += _triple(None if m is None else m.values.get(c), row.published.get(c), table.digits)
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
        f"Paper-protocol Dice (%); Δ = ours − paper. Published: {SOURCE}; {NOT_PUBLISHED}: the paper prints "
        f"no value; {MISSING}: no run of ours matches.",
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
