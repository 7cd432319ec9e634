"""The scan's progress display: one line that updates in place on a terminal, plain lines otherwise.

It writes to stderr, so ``--json`` on stdout stays clean. ``status`` is the transient line (dropped when
the output is not a terminal: a log file does not need 3,000 "unit 17..." lines); ``note`` is a line that
stays (what was found, which settings answered).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None, quiet: bool = False) -> None:
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.quiet = quiet
        self.started = time.monotonic()
        self._shown = 0               # width of the transient line on screen

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status(self, text: str) -> None:
        """The transient line: ``[ 12.3s] text``, rewritten in place (terminal only)."""
        if self.quiet or not self.tty:
            return
        line = f"[{self.elapsed():5.1f}s] {text}"
        self.out.write("\r" + line + " " * max(0, self._shown - len(line)))
        self.out.flush()
        self._shown = len(line)

    def note(self, text: str) -> None:
        """A line that stays, printed above the transient one."""
        if self.quiet:
            return
        self._clear()
        self.out.write(f"[{self.elapsed():5.1f}s] {text}\n")
        self.out.flush()

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.tty and self._shown:
            self.out.write("\r" + " " * self._shown + "\r")
            self._shown = 0


__all__ = ["Progress"]
