"""Training reports on the driver: progress on the console and metrics into MLflow, from one place.

Ray Train V2 calls `UserCallback.after_report` on its controller actor, not on the driver, so the
callback puts rank 0's report on a Ray queue and a driver thread drains it into a `Progress` (a live
bar on a terminal, a line every 30 s in logs) and into MLflow. Logging metrics from the driver, not
from rank 0, means rank 0 may run on any node: a sqlite store or a server reachable only from the
driver still gets every metric. The workers' own log lines stay in the log file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray.train

from tpo_ray.progress import Progress

log = logging.getLogger(__name__)

SHOWN = (("train/loss", "loss", "{:.4f}"), ("val/model_acc", "caption acc", "{:.3f}"),
         ("val/implicit_acc", "implicit reward acc", "{:.3f}"), ("perf/examples_per_s", "ex/s", "{:.1f}"))


def status_text(metrics: dict[str, Any]) -> str:
    """`loss 0.6812 caption acc 0.632 ...` from whichever of the shown keys a report holds."""
    return " ".join(f"{label} {fmt.format(metrics[key])}" for key, label, fmt in SHOWN if key in metrics)


class ReportRelay(ray.train.UserCallback):
    """Runs on the Train controller: forwards rank 0's metrics of every report to the driver's queue."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        try:
            self.queue.put_nowait(dict(metrics[0]))
        except Exception as err:  # a full or gone queue costs a progress update, never the run
            log.debug("progress relay dropped a report: %s", err)


@contextmanager
def training_progress(total_steps: int, description: str,
                      on_report: Callable[[dict[str, Any]], None] = lambda metrics: None) -> Iterator[ReportRelay]:
    """Yield the callback for `RunConfig(callbacks=[...])`; show reports (and hand each to `on_report`,
    e.g. MLflow logging on the driver) until the block ends."""
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    progress = Progress(total_steps, "steps", description)
    stop = threading.Event()

    def show(metrics: dict[str, Any]) -> None:
        progress.update(int(metrics.get("step", progress.done)), status_text(metrics))
        on_report(metrics)

    def drain() -> None:
        while not stop.is_set():
            try:
                show(queue.get(timeout=0.5))
            except Empty:
                continue

    thread = threading.Thread(target=drain, name="train-progress", daemon=True)
    thread.start()
    try:
        yield ReportRelay(queue)
    finally:
        stop.set()
        thread.join()
        while not queue.empty():
            show(queue.get_nowait())
        progress.close()
        queue.shutdown()
