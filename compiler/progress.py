"""What a long command shows on stderr while it works: stage lines (compile) and a bar
(verify, search).

Hand-written rather than tqdm or rich: on a terminal both draw a bar as this does, but when
stderr is a file or a pipe (CI logs, `2> log`) tqdm writes every update into one line
separated by carriage returns and rich shows nothing until the end, where `Bar` writes a
plain line every 10 % and at least every EVERY seconds while it moves.
"""

from __future__ import annotations

import sys
import time

import click


class Stages:
    """Stage lines on stderr, each with the time the previous stage took."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last: tuple[str, float] | None = None

    def __call__(self, stage: str) -> None:
        self.finish()
        self.last = (stage, time.perf_counter())
        if not self.quiet:
            click.echo(f"  {stage} ...", err=True, nl=False)

    def finish(self) -> None:
        if self.last and not self.quiet:
            click.echo(f" {time.perf_counter() - self.last[1]:.1f}s", err=True)
        self.last = None


EVERY = 10.0  # seconds: the longest a Bar stays silent on a file or pipe while it moves


class Bar:
    """A progress bar on stderr (process 0): one line, redrawn; lines when not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.stream = enabled, sys.stderr
        self.tty = self.stream.isatty()
        self.label, self.total, self.done, self.start, self.last = "", 1, 0, 0.0, -1
        self.written = 0.0  # when the last line went out (not a terminal)

    def begin(self, label: str, total: int) -> None:
        self.end()
        self.label, self.total, self.done, self.start = label, max(total, 1), 0, time.time()
        self.last, self.written = -1, 0.0
        self._draw()

    def tick(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self._draw(note)

    def _draw(self, note: str = "") -> None:
        if not self.enabled:
            return
        fraction = self.done / self.total
        elapsed = time.time() - self.start
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        bar = "#" * int(24 * fraction) + "." * (24 - int(24 * fraction))
        text = (f"  {self.label:<22} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s"
                + (f" (eta {eta:.0f}s)" if 0 < fraction < 1 else "")
                + (f"  {note}" if note else ""))
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(110))
            self.stream.flush()
        elif int(10 * fraction) != self.last or time.time() - self.written >= EVERY:
            self.last, self.written = int(10 * fraction), time.time()  # a line every 10 %
            self.stream.write(text + "\n")
            self.stream.flush()

    def end(self) -> None:
        if self.enabled and self.tty and self.label:
            self.stream.write("\n")
            self.stream.flush()
        self.label = ""
