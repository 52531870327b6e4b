"""Read the next step's batches on a background thread while the current step computes.

Reading a cache block (a parquet row group, from disk or `s3://`) and decoding its fp16 tensors
costs as much as a small model's step on CPU; done inline it stalls every step. One thread, one
step ahead: the source is read in the same order as without prefetching (the source objects are not
thread-safe and are only ever touched by that thread), so results are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class StepPrefetcher(Generic[T]):
    """`get(step)` for consecutive steps first..last; `load(step + 1)` runs while the caller uses step."""

    def __init__(self, load: Callable[[int], T], first: int, last: int) -> None:
        self._load, self._last = load, last
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpo-prefetch")
        self._next: tuple[int, Future[T]] | None = self._submit(first)

    def _submit(self, step: int) -> tuple[int, Future[T]] | None:
        return (step, self._pool.submit(self._load, step)) if step <= self._last else None

    def get(self, step: int) -> T:
        if self._next is None or self._next[0] != step:
            raise RuntimeError(f"prefetcher asked for step {step}, expected "
                               f"{None if self._next is None else self._next[0]}")
        future = self._next[1]
        value = future.result()  # re-raises a read error on the training thread
        self._next = self._submit(step + 1)
        return value

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StepPrefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
