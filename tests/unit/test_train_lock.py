"""A run folder is locked while a run writes to it: a second start fails at once, naming the holder;
the lock goes with its holder, however the holder ends."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tpo_ray.config import load_config
from tpo_ray.runs import LOCK_FILE, RunIdentity, RunLockedError, lock_run, run_identity


def make_run(tmp_path: Path) -> RunIdentity:
    return RunIdentity(name="tdpo-test", storage_path=str(tmp_path), run_dir=str(tmp_path / "tdpo-test"))


def test_a_second_lock_in_the_same_process_is_refused_then_granted_after_release(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with lock_run(run):
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        assert (Path(run.run_dir) / LOCK_FILE).read_text() == holder
        with pytest.raises(RunLockedError) as err:
            with lock_run(run):
                pass
        assert str(err.value).startswith(f"run folder {run.run_dir} is in use by {holder}: ")
    with lock_run(run):  # released on exit
        pass


def test_the_lock_is_released_when_the_run_raises(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with lock_run(run):
            raise ZeroDivisionError("the run failed")
    with lock_run(run):
        pass


HOLD = """
import sys, time
from tpo_ray.runs import RunIdentity, lock_run
run = RunIdentity(name="tdpo-test", storage_path=sys.argv[1], run_dir=sys.argv[1] + "/tdpo-test")
with lock_run(run):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_another_process_holding_the_lock_is_named_and_a_killed_holder_blocks_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} on {socket.gethostname()}"):
            with lock_run(run):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no finally runs in the holder: the lock file stays behind
        holder.wait()
    assert (Path(run.run_dir) / LOCK_FILE).read_text() == f"pid {holder.pid} on {socket.gethostname()}"
    with lock_run(run):  # the kernel dropped the dead holder's lock
        assert (Path(run.run_dir) / LOCK_FILE).read_text() == f"pid {os.getpid()} on {socket.gethostname()}"


def test_object_storage_runs_are_not_locked_but_warned_about(caplog) -> None:
    run = RunIdentity(name="tdpo-test", storage_path="s3://bucket/ckpt", run_dir="s3://bucket/ckpt/tdpo-test")
    with caplog.at_level(logging.WARNING, logger="tpo_ray.runs"):
        with lock_run(run):
            with lock_run(run):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "s3://bucket/ckpt/tdpo-test is on object storage, which has no locks" in warnings[0]


def test_train_refuses_a_run_folder_in_use_before_any_work(tmp_path: Path) -> None:
    """The lock comes first: without it this config would fail on its missing cache instead."""
    from tpo_ray.train.driver import run_train

    cfg = load_config(None, [f"output_dir={tmp_path}", "model.pretrained=tiny:sd15"])
    run = run_identity(cfg)
    with lock_run(run):
        with pytest.raises(RunLockedError, match=f"run folder {run.run_dir} is in use by pid {os.getpid()}"):
            run_train(cfg)
