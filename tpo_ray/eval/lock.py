"""One writer per eval folder: `eval_lock(directory, stage)` holds `<eval.output>` while a stage writes it.

Sampling, scoring and the report all write under one eval folder (its sample index, score shards,
report). Two of them at once on the same folder duplicate index rows or mix two runs' images, so each
stage's `run_*` enters `eval_lock` first: a second writer fails at once with an `EvalLockedError`
naming the holder (pid, host, stage, since when) and what to do. Like the training lock
(`tpo_ray.runs.lock_run`) it is an exclusive, non-blocking `flock` on a file in the folder, which the
kernel drops however the holder ends; a holder that died leaves its description in the file, and the
next writer takes the lock over with a warning naming it. The lock is re-entrant within one thread
(the pipeline may hold it around stages that take it again) and refuses other threads and processes.
Object storage has no locks: there a warning says so and the block runs unguarded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tpo_ray.data.io import is_uri

log = logging.getLogger(__name__)

LOCK_FILE = ".tpo_ray.eval.lock"

_held = threading.local()  # folder -> depth of the calling thread's nested eval_lock blocks


class EvalLockedError(RuntimeError):
    """Another process (or thread) is writing this eval folder."""


def _describe(text: str) -> str:
    """A holder's lock-file record in words: `pid 12 on host-a (eval sample since 2025-01-01 10:00:00)`."""
    try:
        h = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["since"])))
        return f"pid {h['pid']} on {h['host']} (eval {h['stage']} since {since})"
    except (ValueError, KeyError, TypeError):
        return text.strip() or "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _left_behind(text: str) -> str:
    """Why a record found in a lock file we could lock is stale, for the take-over warning."""
    try:
        h = json.loads(text)
        if h.get("host") == socket.gethostname() and not _pid_alive(int(h["pid"])):
            return "that process is no longer running"
    except (ValueError, KeyError, TypeError):
        pass
    return "it holds the lock no more"


@contextmanager
def eval_lock(directory: str, stage: str) -> Iterator[None]:
    """Hold the eval folder `directory` for the block (`stage`: sample, score, report, ... for messages).

    Raises `EvalLockedError` at once when another process or thread holds it. Nested blocks of the same
    thread on the same folder pass through (the outer one holds the lock).
    """
    if is_uri(directory):
        log.warning("eval %s: %s is on object storage, which has no locks: nothing stops a second eval from "
                    "writing the same folder at the same time", stage, directory)
        yield
        return
    import fcntl

    folder = Path(directory)
    key = str(folder.resolve())
    depth = getattr(_held, "folders", None)
    if depth is None:
        depth = _held.folders = {}
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise EvalLockedError(
                f"eval folder {folder} is in use by {_describe(fh.read())}: another eval is writing there; wait "
                "for it to end or stop it, or give this one another eval.output") from None
        fh.seek(0)
        previous = fh.read()
        if previous.strip():
            log.warning("eval %s: taking over the lock of %s, left by %s: %s", stage, folder, _describe(previous),
                        _left_behind(previous))
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage, "since": time.time()}))
        fh.flush()
        depth[key] = 1
        try:
            yield
        finally:
            depth.pop(key, None)
            fh.truncate(0)  # released: a record left in the file means its holder died
