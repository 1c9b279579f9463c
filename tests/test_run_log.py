"""RunLog: metrics.jsonl lines, TensorBoard events read back from the raw TFRecord framing, the training curve PNG,
resuming in the same workdir."""

import json
import struct
import subprocess
import sys
from types import SimpleNamespace

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
import tensorboardX.event_file_writer
from tensorboardX.proto import event_pb2

from sam_jax.training import run_log
from sam_jax.training.run_log import RunLog, plot_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir):
    """Every Event of every event file in `logdir` (files in name order), checking the TFRecord framing:
    uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked CRC-32C of the data."""
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    events = []
    for path in files:
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            header = raw[at : at + 8]
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", raw[at + 8 : at + 12])
            assert length_crc == masked_crc(header), f"{path.name}: bad length CRC at byte {at}"
            data = raw[at + 12 : at + 12 + length]
            assert len(data) == length, f"{path.name}: truncated record at byte {at}"
            (data_crc,) = struct.unpack("<I", raw[at + 12 + length : at + 16 + length])
            assert data_crc == masked_crc(data), f"{path.name}: bad data CRC at byte {at}"
            events.append(event_pb2.Event.FromString(data))
            at += 16 + length
    return events


def scalars(events):
    """(tag, step) → value of every scalar summary, later events overriding earlier ones."""
    return {(v.tag, e.step): v.simple_value for e in events if e.HasField("summary") for v in e.summary.value}


def records(first, last, val_every=2):
    out = []
    for step in range(first, last + 1):
        r = {
            "step": step,
            "epoch": step / 4,
            "loss": 1.0 / step + 0.1,
            "grad_norm": 0.3 * step,
            "dice": 0.1 * step,
            "slices_per_s": 12.5 + step,
        }
        if step % val_every == 0:
            r["val_dice"] = 0.05 * step + 0.01
        out.append(r)
    return out


def expected_scalars(recs):
    tags = {
        "epoch": "train/epoch",
        "loss": "train/loss",
        "grad_norm": "train/grad_norm",
        "dice": "train/dice",
        "slices_per_s": "train/slices_per_s",
        "val_dice": "val/dice",
    }
    return {(tags[k], r["step"]): float(np.float32(v)) for r in recs for k, v in r.items() if k != "step"}


@pytest.fixture
def curve_steps(monkeypatch):
    """The x data of each axes' lines at every savefig: what the curve shows."""
    drawn = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        drawn.append([[list(line.get_xdata()) for line in ax.lines] for ax in fig.axes])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return drawn


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 100


def test_writes_jsonl_tensorboard_and_curve(tmp_path, curve_steps):
    recs = records(1, 6)
    with RunLog(tmp_path) as log:
        for n, r in enumerate(recs, 1):
            log.write(r["step"], r)
            assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == n  # on disk at once

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == recs

    events = read_events(tmp_path / "tensorboard")
    assert scalars(events) == expected_scalars(recs)
    assert {v.tag for e in events for v in e.summary.value} == {
        "train/epoch",
        "train/loss",
        "train/grad_norm",
        "train/dice",
        "train/slices_per_s",
        "val/dice",
    }

    assert_png(tmp_path / "training_curve.png")
    assert not list(tmp_path.glob("*.partial"))
    loss_steps, dice_steps = curve_steps[-1]
    assert loss_steps == [[1, 2, 3, 4, 5, 6]] and dice_steps == [[2, 4, 6]]


def test_the_tensorboard_log_does_not_load_torch(tmp_path):
    """tensorboardX imports torch where it is installed (as in this test environment), which cost every training
    run 1.3–1.9 s of start-up; the run log writes its events without it, and torch still imports afterwards."""
    pytest.importorskip("torch")
    script = (
        "import sys; from sam_jax.training.run_log import RunLog\n"
        f"with RunLog({str(tmp_path)!r}) as log: log.write(1, {{'loss': 0.5}})\n"
        "print('torch' in sys.modules); import torch"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
    assert scalars(read_events(tmp_path / "tensorboard")) == {("train/loss", 1): 0.5}


def test_resume_appends_and_curve_covers_the_whole_run(tmp_path, curve_steps, monkeypatch):
    # both runs in the same second: tensorboardX would give their event files the same name
    monkeypatch.setattr(tensorboardX.event_file_writer, "time", SimpleNamespace(time=lambda: 1.8e9))
    first, second = records(1, 4), records(5, 8)
    with RunLog(tmp_path) as log:
        for r in first:
            log.write(r["step"], r)
    with RunLog(tmp_path, resumed_at=4) as log:
        for r in second:
            log.write(r["step"], r)

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == first + second
    assert scalars(read_events(tmp_path / "tensorboard")) == expected_scalars(first + second)
    assert_png(tmp_path / "training_curve.png")
    loss_steps, dice_steps = curve_steps[-1]
    assert loss_steps == [list(range(1, 9))] and dice_steps == [[2, 4, 6, 8]]


def test_resume_from_an_earlier_checkpoint_supersedes_the_tail(tmp_path, curve_steps):
    """A crash after step 5 with the last checkpoint at step 2: the resumed run logs 3.. again, and metrics.jsonl
    holds each step once."""
    crashed, resumed = records(1, 5), records(3, 7, val_every=3)
    with RunLog(tmp_path) as log:
        for r in crashed:
            log.write(r["step"], r)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # the crash cut a line short
    with RunLog(tmp_path, resumed_at=2) as log:
        for r in resumed:
            log.write(r["step"], r)

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == crashed[:2] + resumed
    loss_steps, dice_steps = curve_steps[-1]
    assert loss_steps == [list(range(1, 8))] and dice_steps == [[2, 3, 6]]
    events = read_events(tmp_path / "tensorboard")
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts[-1] == 3  # TensorBoard hides the crashed run's steps ≥ 3
    assert scalars(events) == expected_scalars(crashed[:2] + resumed) | {
        k: v for k, v in expected_scalars(crashed).items() if k not in expected_scalars(resumed)
    }


def test_no_records_no_png(tmp_path):
    RunLog(tmp_path).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "training_curve.png").exists()
    assert plot_curve(tmp_path / "metrics.jsonl") is None
    assert plot_curve(tmp_path / "missing" / "metrics.jsonl") is None


def test_a_curve_that_cannot_be_drawn_is_only_a_warning(tmp_path, monkeypatch):
    def broken(*_):
        raise RuntimeError("no fonts")

    warnings = []
    monkeypatch.setattr(run_log, "plot_curve", broken)
    monkeypatch.setattr(run_log.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    recs = records(1, 2)
    with RunLog(tmp_path) as log:
        for r in recs:
            log.write(r["step"], r)
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == recs
    assert len(warnings) == 1 and "no fonts" in warnings[0] and "training_curve.png" in warnings[0]


def test_redraw_from_an_existing_metrics_file(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 4)))
    assert plot_curve(path, tmp_path / "redrawn.png") == tmp_path / "redrawn.png"
    assert_png(tmp_path / "redrawn.png")


def test_step_disagreeing_with_the_record_is_refused(tmp_path):
    with RunLog(tmp_path) as log, pytest.raises(ValueError, match="record step 2 != step 3"):
        log.write(3, {"step": 2, "loss": 0.5})


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
