"""`tpo-ray tune` as a user runs it: a 4-trial sweep on a local Ray cluster, killed mid-run and resumed.

The grid crosses `train.lr` (a normal value and 1e30) with `train.max_consecutive_nonfinite` (1 and
100), so in one sweep: two trials train normally; one (lr 1e30, abort after 1 non-finite step)
diverges before its first report and must be marked as such while the sweep goes on; one (lr 1e30,
keeps skipping) reports a held-out accuracy of 0 at the first rung after two normal trials did, so
ASHA must stop it there. Trials run one at a time, in grid order (the first key varies fastest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table

pytestmark = pytest.mark.slow

MAX_STEPS = 8
CONFIG = {
    "data": {"synthetic": {"num_rows": 48}, "holdout_fraction": 0.34},
    "model": {"pretrained": "tiny:sd15"},
    "train": {"loss": {"name": "tdpo", "beta": 1000.0}, "lr": 3.0e-4, "max_steps": MAX_STEPS, "batch_size": 2,
              "log_every_steps": 2, "checkpoint_every_steps": 4, "eval_max_pairs": 16,
              "scaling": {"num_workers": 1}},
    "eval": {"timesteps": [300, 700], "noise_draws": 1},
    "tune": {"search": "grid", "grace_period": 2, "max_concurrent_trials": 1,
             "search_space": {"train.max_consecutive_nonfinite": [1, 100], "train.lr": [3.0e-4, 1.0e30]}},
}


def tpo_ray(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "tpo_ray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def finished_trial_runs(out: Path) -> list[Path]:
    return [p.parent.parent for p in out.glob("tune/*/runs/trial-*/checkpoint_*/train_state.json")
            if json.loads(p.read_text())["step"] == MAX_STEPS]


def test_sweep_asha_divergence_mlflow_kill_and_resume_then_train_the_best(tmp_path: Path) -> None:
    import mlflow

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"output_dir": "out", **CONFIG}))
    out = tmp_path / "out"
    write_parquet_atomic(synthetic_table(48, 64), out / "data" / "captions.parquet")
    negatives = tpo_ray(["negatives", "--config", "sweep.yaml"], cwd=tmp_path)
    assert negatives.returncode == 0, negatives.stdout + negatives.stderr

    # Start the sweep, kill its driver (and the local cluster it started) once the first trial has finished.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen([sys.executable, "-m", "tpo_ray.cli", "tune", "--config", "sweep.yaml"], cwd=tmp_path,
                             env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not finished_trial_runs(out) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert finished_trial_runs(out), "no trial finished before the deadline"
    time.sleep(3)  # let Tune record the finished trial
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (done_run,) = finished_trial_runs(out)
    done_checkpoints = sorted(p.name for p in done_run.glob("checkpoint_*") if p.is_dir())

    # The same command resumes the sweep.
    second = tpo_ray(["tune", "--config", "sweep.yaml"], cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "(resumed)" in second.stdout, second.stdout
    (sweep_dir,) = [p for p in (out / "tune").iterdir() if p.is_dir()]
    trials = {(t["params"]["train.lr"], t["params"]["train.max_consecutive_nonfinite"]): t
              for t in json.loads((sweep_dir / "trials.json").read_text())}
    assert len(trials) == 4, trials
    assert trials[(3.0e-4, 1)]["status"] == trials[(3.0e-4, 100)]["status"] == "finished"
    diverged = trials[(1.0e30, 1)]
    assert diverged["status"] == "diverged" and "non-finite" in diverged["reason"], diverged
    stopped = trials[(1.0e30, 100)]
    assert stopped["status"] == "stopped early" and stopped["last_step"] == 2 and stopped["best"] == 0.0, stopped
    # The trial that had finished before the kill was not trained again.
    assert sorted(p.name for p in done_run.glob("checkpoint_*") if p.is_dir()) == done_checkpoints
    for line in ("| diverged |", "| stopped early | asha at step 2 |", "train it: tpo-ray train --config"):
        assert line in second.stdout, second.stdout

    # MLflow: one parent run for the sweep, one child run per trial, each with its params; metrics
    # for every trial that reported; the stopped and diverged runs are closed with their outcome.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tpo_ray").experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("tpo_ray.sweep_parent")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_trial = {r.data.tags["tpo_ray.trial_id"]: r for r in children}
    assert len(children) == len(by_trial) == 4, [r.data.tags for r in children]
    assert {t["trial_id"] for t in trials.values()} == set(by_trial)
    for trial in trials.values():
        run = by_trial[trial["trial_id"]]
        assert float(run.data.params["train.lr"]) == trial["params"]["train.lr"]
        assert run.data.tags["tpo_ray.trial_status"] == trial["status"]
        assert run.info.status != "RUNNING"
        if trial["status"] != "diverged":
            assert "val/implicit_acc" in run.data.metrics and "train/loss" in run.data.metrics
        if trial["status"] == "finished":  # ran to its end (not torn down by a STOP at its last report)
            assert run.info.status == "FINISHED" and "tpo_ray.checkpoint" in run.data.tags
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/summary.csv",
                                                                                    "sweep/summary.md"}
    best = max((t for t in trials.values() if t["best"] is not None), key=lambda t: t["best"])
    assert parent.data.tags["tpo_ray.best_trial"] == best["trial_id"]

    # best.yaml trains as is.
    best_yaml = out / "tune" / "best.yaml"
    assert yaml.safe_load(best_yaml.read_text())["train"]["lr"] == best["params"]["train.lr"]
    train = tpo_ray(["train", "--config", str(best_yaml.relative_to(tmp_path))], cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert f"step {MAX_STEPS}" in train.stdout
