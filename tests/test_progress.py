"""Progress bars: a handful of lines in a log file or a pipe, one live line on a terminal."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 300 steps of 10 ms: tqdm's default (a refresh each 0.1 s) would write about 30 statuses.
SCRIPT = """
import time
from sam_jax.progress import progress_bar
bar = progress_bar(total=300, desc="work", unit="step")
for i in range(300):
    time.sleep(0.01)
    bar.update(1)
    bar.set_postfix(loss=f"{i:.4f}", refresh=False)
bar.close()
"""


def _run(stderr):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        stderr=stderr,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )


def test_off_a_terminal_the_bar_prints_a_line_each_tenth_of_the_way(tmp_path):
    log = tmp_path / "stderr.log"
    with open(log, "w") as f:
        _run(f)
    text = log.read_text()
    statuses = [s for s in re.split(r"[\r\n]", text) if "work" in s]
    assert "\r" not in text and len(statuses) == len(text.splitlines())  # each status on its own line
    # The first (0/300), one per 30 steps (30/300 … 300/300), and the last again when the bar closes.
    assert [re.search(r"(\d+)/300", s).group(1) for s in statuses] == [str(n) for n in range(0, 301, 30)] + ["300"]
    assert "loss=299.0000" in statuses[-1]


def test_on_a_terminal_the_bar_redraws_one_line():
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns
    with os.fdopen(primary, "rb", buffering=0) as terminal:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            cwd=ROOT,
            stderr=secondary,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = terminal.read(4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 0
    text = output.decode()
    assert text.count("\r") >= 3 and text.count("\n") <= 1, repr(text[-300:])  # statuses overwrite one line
    assert "300/300" in text
