"""Zero-shot LiteMedSAM on real BraTS cases, one row per modality layout, with boxes and with clicks: the part of the
real-glioma study (issue 25) that needs no training, so runs on two CPU cores.

    python benchmarks/real_zero_shot.py --data_dir ../shared/data/brats2018 \
        --sam_weights lite_medsam.safetensors --root /tmp/real_zero_shot --every 4

Each layout is `python -m eval.main --flagfile=train/lite_medsam/zero_shot_<layout>.flags` on every case
(`--split=all --protocols=paper,box`), its output in `<root>/<layout>`; a layout whose summary.json exists is not
scored again, so the same command resumes. `--every N` scores copies of the cases cut to every Nth axial slice
(nibabel's `img.slicer[:, :, ::N]`, written once to `<root>/data_every<N>`): the encoder costs about a second a
slice here, so all slices of 12 cases take 5 × 30 minutes. Figures per layout: the mean and standard deviation over
cases of the paper protocol's Dice (one seeded click per slice, empty slices included), the tumour-slice Dice (the
same clicks, tumour slices only), and the box protocol's Dice from each tumour slice's tight and jittered box; they
are written to `benchmarks/results/real_zero_shot_<date>.{json,md}` with the command and each run's wall time.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("t2f_x3", "t1n_t2w_t2f", "t2w_x3", "t1c_x3", "t1n_x3")  # the zero-shot flagfiles of train/lite_medsam
METRICS = {  # cases.csv column → what the table calls it
    "box_dice": "box, tight",
    "box_jitter_dice": "box, jittered",
    "paper_dice": "click, paper protocol",
    "tumour_slice_dice": "click, tumour slices",
}


def sliced_copies(data_dir: Path, out: Path, every: int) -> Path:
    """Every case folder of `data_dir` with each NIfTI cut to every `every`th axial slice, under `out` (made once)."""
    import nibabel as nib

    if (out / ".complete").exists():
        return out
    cases = sorted(p for p in data_dir.iterdir() if p.is_dir() and any(p.glob("*.nii*")))
    if not cases:
        raise SystemExit(f"--data_dir {data_dir}: no case folders with NIfTI files")
    for case in cases:
        (out / case.name).mkdir(parents=True, exist_ok=True)
        for image in case.glob("*.nii*"):
            nib.save(nib.load(image).slicer[:, :, ::every], out / case.name / image.name)
    (out / ".complete").touch()
    return out


def score(layout: str, data_dir: Path, weights: str, out: Path) -> float | None:
    """eval.main for one layout into `out`; its wall time, or None when it was done already."""
    if (out / "summary.json").exists():
        return None
    command = [
        sys.executable, "-m", "eval.main", f"--flagfile=train/lite_medsam/zero_shot_{layout}.flags",
        f"--sam_weights={weights}", f"--data_dir={data_dir}", "--domain=GLI", "--split=all",
        "--protocols=paper,box", "--overlays=0", f"--output_dir={out}",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{layout}: eval.main exited {done.returncode}")
    return time.perf_counter() - start


def layout_row(out: Path) -> dict:
    """Mean and sd over the scored cases of each metric, and the per-case values."""
    with open(out / "cases.csv", newline="") as f:
        cases = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    row = {"cases": len(cases), "per_case": {r["case"]: {m: float(r[m]) for m in METRICS} for r in cases}}
    for metric in METRICS:
        values = [100 * float(r[metric]) for r in cases]
        row[metric] = dict(mean=statistics.fmean(values), sd=statistics.stdev(values) if len(values) > 1 else 0.0)
    return row


def paired(rows: dict, reference: str) -> dict:
    """Each other layout against `reference` on the same cases, per metric: the mean of the per-case differences
    (Dice × 100), their sd, and on how many cases the layout scored higher."""
    out = {}
    for layout, row in rows.items():
        if layout == reference:
            continue
        common = sorted(set(row["per_case"]) & set(rows[reference]["per_case"]))
        out[layout] = {}
        for metric in METRICS:
            diffs = [100 * (row["per_case"][c][metric] - rows[reference]["per_case"][c][metric]) for c in common]
            out[layout][metric] = dict(
                mean=statistics.fmean(diffs),
                sd=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                higher=sum(d > 0 for d in diffs),
                cases=len(diffs),
            )
    return out


def markdown(report: dict) -> str:
    lines = [
        f"Zero-shot LiteMedSAM on {report['cases']} real BraTS cases: `{report['command']}`, {report['date']}. "
        "Dice × 100, mean ± sd over cases.",
        "",
        "| layout | " + " | ".join(METRICS.values()) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for layout, row in report["layouts"].items():
        cells = [f"{row[m]['mean']:.1f} ± {row[m]['sd']:.1f}" for m in METRICS]
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    if report["paired"]:
        lines += [
            "",
            f"Against {report['reference']} on the same cases: mean difference ± sd (cases higher of those scored).",
            "",
            "| layout | " + " | ".join(METRICS.values()) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for layout, row in report["paired"].items():
            cells = [
                f"{row[m]['mean']:+.1f} ± {row[m]['sd']:.1f} ({row[m]['higher']}/{row[m]['cases']})" for m in METRICS
            ]
            lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder of real BraTS case folders")
    parser.add_argument("--sam_weights", required=True, help="LiteMedSAM converted by convert/sam_weights.py")
    parser.add_argument("--root", required=True, help="where each layout's evaluation goes (resumable)")
    parser.add_argument("--every", type=int, default=1, help="score every Nth axial slice (1: all)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated zero-shot layouts")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/real_zero_shot_<date>)")
    args = parser.parse_args(argv)
    layouts = args.layouts.split(",")
    if unknown := sorted(set(layouts) - set(LAYOUTS)):
        parser.error(f"--layouts: unknown {', '.join(unknown)}; expected some of {', '.join(LAYOUTS)}")
    if args.every < 1:
        parser.error(f"--every {args.every}: must be at least 1")
    if not Path(args.sam_weights).is_file():
        parser.error(f"--sam_weights {args.sam_weights}: no such file")
    root, data_dir = Path(args.root), Path(args.data_dir)
    if not data_dir.is_dir():
        parser.error(f"--data_dir {data_dir}: no such folder")
    if args.every > 1:
        data_dir = sliced_copies(data_dir, root / f"data_every{args.every}", args.every)
    seconds = {layout: score(layout, data_dir, args.sam_weights, root / layout) for layout in layouts}
    rows = {layout: layout_row(root / layout) for layout in layouts}
    date = datetime.date.today().isoformat()
    flags = f"--data_dir {args.data_dir} --sam_weights {args.sam_weights} --root {args.root} --every {args.every}"
    report = dict(
        command=f"python benchmarks/real_zero_shot.py {flags}",
        date=date,
        cases=rows[layouts[0]]["cases"],
        seconds={k: v for k, v in seconds.items() if v is not None},
        layouts=rows,
        reference=layouts[0],
        paired=paired(rows, layouts[0]),
    )
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"real_zero_shot_{date}.json")
    output.write_text(json.dumps(report, indent=1))
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
