"""Progress lines for the slow stages before a run's first step: reading, building the tokenizer, tokenizing.

The data path reports ``(stage, done, total)`` through the progress callbacks it already has;
:class:`StageProgress` turns those into lines for a terminal or a log, so a 300 MB corpus never
sits silent for a minute. A stage that ends within :attr:`StageProgress.quiet_s` prints nothing
(a small corpus stays as quiet as before); a longer one prints its share, the amount and the
throughput every :attr:`StageProgress.every_s` (one line rewritten in place on a terminal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

MB = 1_000_000

# stage name → (what the person reads, unit of done/total, divisor for the unit)
_STAGES: dict[str, tuple[str, str, float]] = {
    "reading": ("reading the corpus", "MB", MB),
    "tokenizer": ("building the tokenizer", "M characters", MB),
    "tokenizing": ("tokenizing", "M characters", MB),
}


class StageProgress:
    """``progress(stage, done, total)`` that prints rate-limited progress lines to ``stream``."""

    def __init__(self, stream: TextIO, quiet_s: float = 1.0, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.quiet_s = quiet_s
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 5.0)
        self.clock = clock
        self._stage: str | None = None
        self._started = 0.0
        self._last = 0.0
        self._printed = False
        self._open_line = False  # a terminal line rewritten in place, not yet ended

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage:
            self._end_line()
            self._stage, self._started, self._last, self._printed = stage, now, now, False
        finished = total > 0 and done >= total
        elapsed = now - self._started
        if elapsed < self.quiet_s:
            return
        if not finished and self._printed and now - self._last < self.every_s:
            return
        self._last = now
        self._write(self.line(stage, done, total, elapsed), final=finished)

    @staticmethod
    def line(stage: str, done: int, total: int, elapsed: float) -> str:
        """``"tokenizing: 42% (126.0 of 300.0 M characters, 31.5 M characters/s)"``."""
        label, unit, scale = _STAGES.get(stage, (stage, "", 1.0))
        share = f"{100 * done / total:.0f}%" if total > 0 else "..."
        if not unit or total <= 1:  # a stage that only reports "done" (a tokenizer that loads a file)
            return f"{label}: {share}"
        rate = done / scale / elapsed if elapsed > 0 else 0.0
        return f"{label}: {share} ({done / scale:.1f} of {total / scale:.1f} {unit}, {rate:.1f} {unit}/s)"

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open_line = not final
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self._printed = True
        self.stream.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def close(self) -> None:
        """End a line left open on a terminal (after a failure or a cancel)."""
        self._end_line()
