"""Progress bars that suit where they are shown: tqdm's live bar on a terminal; off one (a log file, a pipe) a line
of its own each tenth of the way, so a log holds about a dozen progress lines, not one per step."""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

LINES_OFF_TERMINAL = 10  # progress lines between the first and the last when the stream is not a terminal
SECONDS_OFF_TERMINAL = 60  # between lines off a terminal when the total is unknown


class _LinePerStatus:
    """tqdm redraws one line with '\\r'; in a file each status gets a line of its own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(iterable=None, *, total: int | None = None, file=None, **kwargs) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand up to `total`) on `file` (default stderr); `kwargs` go to
    tqdm (desc, unit, initial, disable...). Pass `refresh=False` to `set_postfix`: a refresh per step would print
    a line per step."""
    file = sys.stderr if file is None else file
    if getattr(file, "isatty", lambda: False)():
        return tqdm(iterable, total=total, file=file, dynamic_ncols=True, **kwargs)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    remaining = total - kwargs.get("initial", 0) if total else 0
    # miniters alone decides (mininterval 0); an infinite maxinterval keeps tqdm's monitor thread from resetting it.
    rare = (
        dict(miniters=math.ceil(remaining / LINES_OFF_TERMINAL), mininterval=0)
        if remaining > 0
        else dict(mininterval=SECONDS_OFF_TERMINAL)
    )
    return tqdm(iterable, total=total, file=_LinePerStatus(file), maxinterval=math.inf, **rare, **kwargs)
