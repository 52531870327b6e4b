"""Progress output: a live bar on a terminal, periodic throughput lines in job logs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    """Counts units (captions, steps) and reports rate; `interval_s` spaces the log lines."""

    def __init__(self, total: int, unit: str, description: str, interval_s: float = 10.0) -> None:
        self.total, self.unit, self.description = total, unit, description
        self.done = 0
        self.start = time.perf_counter()
        self.interval_s = interval_s
        self._last_log = self.start
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task(description, total=total, rate="")
            self._bar.start()

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate:,.0f} {self.unit}/s")
            return
        now = time.perf_counter()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info("%s: %d/%d %s (%.0f%%), %.0f %s/s", self.description, self.done, self.total, self.unit,
                     100 * self.done / max(self.total, 1), self.rate, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        log.info("%s: %d %s in %.1f s (%.0f %s/s)", self.description, self.done, self.unit,
                 time.perf_counter() - self.start, self.rate, self.unit)
