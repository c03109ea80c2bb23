"""Lines printed while a progress bar is on screen."""

from __future__ import annotations

import sys

__all__ = ["write_above_bars"]


def write_above_bars(text: str) -> None:
    """Print ``text`` on stdout above tqdm's progress bars, whole: the bars (on stderr) are cleared, the line
    written and flushed, and the bars redrawn. ``tqdm.write`` alone leaves the line in stdout's buffer when
    stdout is a pipe or a file, so it comes out later, in the middle of the bar's output (``2>&1 | tee``)."""
    from tqdm.auto import tqdm

    with tqdm.external_write_mode(file=sys.stdout):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
