"""An eval folder has one writer at a time: a second one (thread or process) is refused naming the holder;
a lock left by a dead holder is taken over with a warning; nested blocks of one thread pass through."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tpo_ray.eval.lock import LOCK_FILE, EvalLockedError, eval_lock


def test_a_second_thread_is_refused_naming_the_holder_and_gets_it_after_release(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with eval_lock(str(tmp_path), "score"):
                pass
        except BaseException as e:  # noqa: BLE001 - handed to the main thread's assert
            errors.append(e)

    with eval_lock(str(tmp_path), "sample"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (record["pid"], record["host"], record["stage"]) == (os.getpid(), socket.gethostname(), "sample")
        t = threading.Thread(target=second)
        t.start()
        t.join()
        with eval_lock(str(tmp_path), "sample"):  # nested in the holding thread: passes through
            pass
    assert len(errors) == 1 and isinstance(errors[0], EvalLockedError)
    message = str(errors[0])
    assert message.startswith(f"eval folder {tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()} "
                              "(eval sample since ")
    assert "wait for it to end or stop it" in message
    assert (tmp_path / LOCK_FILE).read_text() == ""
    t = threading.Thread(target=second)
    t.start()
    t.join()
    assert len(errors) == 1  # released: the second writer got it


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with eval_lock(str(tmp_path), "sample"):
            raise ZeroDivisionError
    with eval_lock(str(tmp_path), "sample"):
        pass


HOLD = """
import sys, time
from tpo_ray.eval.lock import eval_lock
with eval_lock(sys.argv[1], "sample"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_another_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path: Path, caplog) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EvalLockedError, match=f"in use by pid {holder.pid} on {socket.gethostname()} "
                                                  r"\(eval sample since "):
            with eval_lock(str(tmp_path), "report"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no finally runs: its record stays in the lock file
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="tpo_ray.eval.lock"):
        with eval_lock(str(tmp_path), "report"):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"taking over the lock of {tmp_path}, left by pid {holder.pid}" in warnings[0]
    assert "no longer running" in warnings[0]


def test_object_storage_is_not_locked_but_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tpo_ray.eval.lock"):
        with eval_lock("s3://bucket/eval", "sample"):
            with eval_lock("s3://bucket/eval", "sample"):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "s3://bucket/eval is on object storage, which has no locks" in warnings[0]
