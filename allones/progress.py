"""Progress of a long command, on stderr (stdout keeps the results, so a pipe gets only them):
a rich bar on a terminal, plain lines otherwise (a log, `nohup`, a CI job), at most one every
PLAIN_EVERY seconds and none for a run shorter than that."""

from __future__ import annotations

import sys
import time

PLAIN_EVERY = 5.0     # seconds between plain lines: a log that grows, not one that floods


class Progress:
    """`with Progress("fleets", total=40) as p: p(done)`, or p(done, total) where the total
    becomes known late. `in_bytes=True` shows sizes (a file being read)."""

    def __init__(self, what: str, total: int | None = None, in_bytes: bool = False, stream=None):
        self.what, self.total, self.in_bytes = what, total, in_bytes
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.bar, self.start, self.last = 0, None, 0.0, 0.0

    def __enter__(self):
        self.start = self.last = time.monotonic()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress as Bar,
                                       TimeElapsedColumn)
            self.bar = Bar("[progress.description]{task.description}", BarColumn(),
                           DownloadColumn() if self.in_bytes else MofNCompleteColumn(), TimeElapsedColumn(),
                           console=Console(file=self.stream), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.what, total=self.total)
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=self.total)
        elif time.monotonic() - self.last >= PLAIN_EVERY:
            self.last = time.monotonic()
            self._line()

    def _line(self, end: str = "") -> None:
        count = (f"{self.done / 2**20:,.0f}" + (f"/{self.total / 2**20:,.0f} MiB" if self.total else " MiB")
                 if self.in_bytes else f"{self.done:,}" + (f"/{self.total:,}" if self.total else ""))
        print(f"{self.what}: {count}, {time.monotonic() - self.start:.0f} s{end}", file=self.stream,
              flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif self.last > self.start and exc[0] is None:   # lines were printed: say it ended
            self._line(", done")
        return False
