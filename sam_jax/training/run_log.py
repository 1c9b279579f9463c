"""The run's logs, in the forms people already read. `RunLog(workdir)` writes, per logged step:

- `workdir/metrics.jsonl`: the record as one JSON line (appended and flushed at once: a crash loses nothing, a
  resumed run appends to the same file);
- `workdir/tensorboard/`: every numeric value as a TensorBoard scalar; `tensorboard --logdir WORKDIR/tensorboard`
  shows them. Tags: `val_<name>` → `val/<name>`, a key holding `/` as is, any other key → `train/<key>`; from
  the training loop: train/loss and train/grad_norm (the step's metrics), train/epoch, train/slices_per_s,
  val/dice;
- on `close()`, `workdir/training_curve.png`: loss (and validation Dice, when logged) against step, drawn from the
  whole metrics.jsonl (`plot_curve` redraws it from any metrics.jsonl).

A resumed run logs from its checkpoint's step again: the records it supersedes (those after the checkpoint's step) are
removed from metrics.jsonl and hidden from TensorBoard (`purge_step`), so each step is recorded once.
"""

from __future__ import annotations

import json
import numbers
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import logging  # noqa: E402

from sam_jax.outputs import write_atomic  # noqa: E402

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CURVE = "training_curve.png"


def _summary_writer():
    """tensorboardX's SummaryWriter class, imported without torch: tensorboardX imports torch where it is installed
    only to accept its tensors, 1.3–1.9 s of every run's start-up (we log floats)."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX takes as "no torch"
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter


def tag(key: str) -> str:
    """The TensorBoard tag of a record key."""
    if "/" in key:
        return key
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"


def read_records(metrics_path) -> list[dict]:
    """The records of a metrics.jsonl as the run stands: a record whose step is not past the one before it starts a
    resumed run, which supersedes the earlier records of its step and later. Unreadable lines are skipped."""
    kept = []
    for n, line in enumerate(Path(metrics_path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError):
            logging.warning("%s line %d is not a record; skipped", metrics_path, n)
            continue
        while kept and kept[-1]["step"] >= step:
            kept.pop()
        kept.append(record)
    return kept


def plot_curve(metrics_path, png_path=None) -> Path | None:
    """Draw loss (and validation Dice, when present) against step from a metrics.jsonl into `png_path` (default:
    training_curve.png beside it). Returns the PNG's path, or None (and writes nothing) when there is no loss yet."""
    metrics_path = Path(metrics_path)
    png_path = Path(png_path) if png_path else metrics_path.with_name(CURVE)
    records = read_records(metrics_path) if metrics_path.exists() else []
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    dice = [(r["step"], r["val_dice"]) for r in records if r.get("val_dice") is not None]
    if not loss:
        return None
    fig, axes = plt.subplots(2 if dice else 1, 1, figsize=(7, 6 if dice else 3.5), sharex=True, squeeze=False)
    axes[0, 0].plot(*zip(*loss), lw=1)
    axes[0, 0].set_ylabel("training loss")
    if dice:
        axes[1, 0].plot(*zip(*dice), marker="o", ms=3, color="tab:green")
        axes[1, 0].set_ylabel("validation Dice")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"training curve of {metrics_path.parent.name}: steps {loss[0][0]}–{loss[-1][0]}")
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
    partial = png_path.with_name(png_path.name + ".partial")  # never leave a half-written PNG in place
    try:
        fig.savefig(partial, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    partial.replace(png_path)
    return png_path


class RunLog:
    """metrics.jsonl + TensorBoard for each `write`, and the training curve on `close` (see the module)."""

    def __init__(self, workdir, resumed_at: int = 0):
        """`resumed_at`: the step the run goes on from; metrics.jsonl keeps the records up to it, once each."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / METRICS
        if path.exists():  # drops what the run will log again, and a line a crash cut short
            kept = [r for r in read_records(path) if r["step"] <= resumed_at]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a")
        self._writer = None  # made at the first write, which tells the step a resumed run restarts at

    def write(self, step: int, record: dict) -> None:
        if record.get("step", step) != step:
            raise ValueError(f"record step {record['step']} != step {step}")
        record = {"step": step, **record}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is None:
            # tensorboardX names event files by the second and opens them "wb": a unique suffix keeps an earlier
            # run's file from being overwritten, in the order TensorBoard reads the files in.
            self._writer = _summary_writer()(
                str(self.workdir / TENSORBOARD), purge_step=step, flush_secs=10, filename_suffix=f".{time.time_ns()}"
            )
        for key, value in record.items():
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(tag(key), float(value), step)

    def close(self) -> None:
        """Close both logs and draw the curve; a curve that cannot be drawn is a warning, never an error."""
        if self._file.closed:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        try:
            plot_curve(self.workdir / METRICS)
        except Exception as e:  # noqa: BLE001 — the run's results matter more than its picture
            logging.warning("could not draw %s: %s: %s", self.workdir / CURVE, type(e).__name__, e)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
