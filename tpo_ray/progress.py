"""Progress output: a live bar on a terminal, a throughput line every `interval_s` elsewhere (job logs, CI).

The bar draws on `tpo_ray.console.terminal()`, so it stays visible when a quiet session sends
everything else to the log file. Lines are log records marked for the console.
"""

from __future__ import annotations

import logging
import time

from tpo_ray.console import CONSOLE, terminal

log = logging.getLogger(__name__)


class Progress:
    """Counts units (captions, steps) and reports rate plus a free status text (loss, accuracy)."""

    def __init__(self, total: int, unit: str, description: str, interval_s: float = 30.0) -> None:
        self.total, self.unit, self.description = total, unit, description
        self.done = 0
        self.status = ""
        self.start = time.perf_counter()
        self.interval_s = interval_s
        self._last_log = self.start
        self._bar = None
        stream = terminal()
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[status]}"), console=Console(file=stream),
                                     transient=True)
            self._task = self._bar.add_task(description, total=total, rate="", status="")
            self._bar.start()

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, n: int, status: str | None = None) -> None:
        self.update(self.done + n, status)

    def update(self, done: int, status: str | None = None) -> None:
        """Set the absolute count (e.g. the step a training run reached) and the status text."""
        self.done = done
        if status is not None:
            self.status = status
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{self.rate:,.1f} {self.unit}/s", status=self.status)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info("  %s: %d/%d %s (%.0f%%), %.1f %s/s %s", self.description, self.done, self.total, self.unit,
                     100 * self.done / max(self.total, 1), self.rate, self.unit, self.status, extra=CONSOLE)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        log.info("%s: %d %s in %.1f s (%.1f %s/s) %s", self.description, self.done, self.unit,
                 time.perf_counter() - self.start, self.rate, self.unit, self.status)
