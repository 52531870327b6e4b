"""A real `ray start --head` cluster and `ray job submit` of a jobs/ entrypoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.ports import free_port
from tpo_ray.data.synthetic import synthetic_captions, synthetic_table

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def node_ports() -> list[str]:
    """Free ports for a node's agents: two nodes on one machine (or two test clusters) must not share
    the defaults, or a node's dashboard agent fails to start and job submission waits for it forever."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


def node_log(temp_dir: Path) -> Path:
    """Where `ray start`'s own output goes: beside the node's temp dir, which Ray fills itself."""
    return temp_dir.with_name(temp_dir.name + ".log")


def start_node(bin_dir: str, env: dict, temp_dir: Path, *args: str) -> subprocess.Popen:
    """`ray start --block` in its own process group, its output kept in the node's temp dir's parent
    so that a node that does not come up can say why."""
    with node_log(temp_dir).open("w") as log:
        return subprocess.Popen(
            [str(Path(bin_dir) / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir",
             str(temp_dir), "--disable-usage-stats", *node_ports(), *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM to the node's process group, then SIGKILL to whatever is left after five seconds: a
    terminated `ray start --block` waits up to a minute for its autoscaler monitor. (Ray workers and job
    drivers run in process groups of their own; they exit when their raylet dies.)"""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)
    node_log(temp_dir).unlink(missing_ok=True)


def node_failure(proc: subprocess.Popen, temp_dir: Path) -> str:
    """What a node that did not come up left behind: its exit status, its `ray start` output and the
    ends of its GCS, raylet and dashboard logs."""
    parts = [f"ray start exit status: {proc.poll()}", "ray start output:\n"
             + node_log(temp_dir).read_text(errors="replace")[-3000:]]
    logs = temp_dir / "session_latest" / "logs"
    for name in ("gcs_server.out", "raylet.out", "dashboard.log", "dashboard_agent.log"):
        if (logs / name).is_file():
            parts.append(f"{name}:\n" + (logs / name).read_text(errors="replace")[-2000:])
    return "\n".join(parts)


def wait_until_up(proc: subprocess.Popen, temp_dir: Path, probe: list[str], env: dict,
                  ready: Callable[[subprocess.CompletedProcess], bool], what: str) -> None:
    """Run `probe` until `ready` says the node is up, for three minutes, each call at most 30 s, while
    `ray start` lives. A node that does not come up, or any error or interrupt meanwhile, stops the node
    before raising (it runs in its own session, where pytest cannot reach it); the RuntimeError says
    what the probe last answered and what the node left behind."""
    answer = ""
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
            except subprocess.TimeoutExpired:
                answer = "no answer within 30 s"
                continue
            if ready(done):
                return
            answer = (done.stdout + done.stderr)[-1500:]
            time.sleep(1)
        failure = node_failure(proc, temp_dir)
    except BaseException:
        stop_node(proc, temp_dir)
        raise
    stop_node(proc, temp_dir)
    raise RuntimeError(f"{what}; `{' '.join(probe[1:3])}` last said:\n{answer}\n{failure}")


def start_head(bin_dir: str, env: dict, client_env: dict) -> tuple[subprocess.Popen, Path, str, int]:
    """A head on fresh ports, up once `ray job list` answers through its dashboard."""
    port, dash = free_port(), free_port()
    temp_dir = Path("/tmp") / f"rayh{port}"  # short: Ray's socket paths have a length limit
    proc = start_node(bin_dir, env, temp_dir, "--head", "--num-cpus", "2", "--port", str(port), "--dashboard-host",
                      "127.0.0.1", "--dashboard-port", str(dash))
    address = f"http://127.0.0.1:{dash}"
    wait_until_up(proc, temp_dir, [str(Path(bin_dir) / "ray"), "job", "list", "--address", address], client_env,
                  lambda listed: listed.returncode == 0, "ray head did not come up")
    return proc, temp_dir, address, port


@pytest.fixture
def ray_head(tmp_path: Path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # the job's `python` is the venv's
    client_env = {**env, "RAY_AUTH_MODE": "token"}
    try:
        proc, temp_dir, address, port = start_head(bin_dir, env, client_env)
    except RuntimeError as first:
        # Once more, on other ports: a head start fails now and then on its own (a dashboard agent that
        # dies at start takes the raylet with it, ray-project/ray#42514; a port free_port handed out
        # can be taken by one of Ray's randomly chosen ports first). A warning, so that a head that
        # needs a second start is in the session's summary even when the test passes.
        warnings.warn(f"the first ray head start failed, starting another: {first}", stacklevel=1)
        proc, temp_dir, address, port = start_head(bin_dir, env, client_env)
    yield address, client_env, bin_dir, port
    stop_node(proc, temp_dir)


def test_submitted_negatives_job_runs_on_the_cluster(ray_head, tmp_path: Path) -> None:
    address, env, bin_dir, _ = ray_head
    source = tmp_path / "captions.parquet"
    pq.write_table(pa.Table.from_pylist(list(synthetic_captions(100))), source)
    out = tmp_path / "neg"
    result = subprocess.run(
        [str(Path(bin_dir) / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT / "jobs"),
         "--", "python", "negatives.py", "--config", "configs/cpu_smoke.yaml", f"output_dir={tmp_path}",
         f"negatives.input={source}", f"negatives.output={out}", "tracking.enabled=false"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "negatives: 100 triplets for 100/100 captions" in result.stdout
    assert pq.read_table(out / "triplets").num_rows == 100


@pytest.fixture
def second_node(ray_head):
    """A second `ray start` joining the head: two nodes on one machine, as on a real cluster."""
    address, env, bin_dir, port = ray_head
    # Its own temp dir, as a node on another machine has its own disk: two nodes sharing one would
    # share one unpacked job working_dir, which this node's runtime-env agent deletes (garbage
    # collection) once its own tasks are done, while the driver on the head still runs in it.
    temp_dir = Path("/tmp") / f"rayn{port}"
    proc = start_node(bin_dir, env, temp_dir, "--address", f"127.0.0.1:{port}", "--num-cpus", "1")
    wait_until_up(proc, temp_dir, [str(Path(bin_dir) / "ray"), "status", "--address", f"127.0.0.1:{port}"], env,
                  lambda status: status.stdout.count("node_") >= 2, "the second node did not join")
    yield ray_head
    stop_node(proc, temp_dir)


def submit_job(cluster, script: str, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` of a jobs/ entrypoint, retried while the job agents register (a little after a
    node shows in `ray status`)."""
    address, env, bin_dir, _ = cluster
    for _ in range(30):
        result = subprocess.run(
            [str(Path(bin_dir) / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT / "jobs"),
             "--", "python", script, *args], env=env, capture_output=True, text=True, timeout=1200)
        if "No available agent to submit job" not in result.stderr:
            return result
        time.sleep(2)
    return result


def test_two_nodes_refuse_local_paths_unless_the_filesystem_is_shared(second_node, tmp_path: Path) -> None:
    source = tmp_path / "captions.parquet"
    pq.write_table(pa.Table.from_pylist(list(synthetic_captions(20))), source)

    def submit(*extra: str) -> subprocess.CompletedProcess:
        return submit_job(second_node, "negatives.py", "--config", "configs/cpu_smoke.yaml", f"output_dir={tmp_path}",
                          f"negatives.input={source}", f"negatives.output={tmp_path / 'neg'}",
                          "tracking.enabled=false", *extra)

    refused = submit()
    assert refused.returncode != 0
    assert (f"the Ray cluster has 2 nodes but negatives.input={source}, negatives.output={tmp_path / 'neg'} are "
            "local paths") in refused.stdout + refused.stderr
    assert not (tmp_path / "neg" / "triplets").exists()  # refused before any work
    shared = submit("shared_filesystem=true")  # one machine: the filesystem is indeed shared
    assert shared.returncode == 0, shared.stdout[-3000:] + shared.stderr[-3000:]
    assert pq.read_table(tmp_path / "neg" / "triplets").num_rows == 20


def test_the_pipeline_job_on_two_nodes_runs_every_stage_then_a_resubmission_skips_them(second_node,
                                                                                       tmp_path: Path) -> None:
    """negatives -> cache -> SFT -> export -> cache -> TDPO -> export -> a 2-trial sweep, submitted with
    `ray job submit` to a token-authenticated head plus a second node; then the same job again."""
    source = tmp_path / "captions.parquet"

    pq.write_table(synthetic_table(32, 64), source)

    from tpo_ray.models.tiny import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")

    def submit() -> subprocess.CompletedProcess:
        return submit_job(second_node, "pipeline.py", "--config", "configs/cpu_smoke.yaml",
                          f"output_dir={tmp_path / 'out'}", f"data.captions={source}", "shared_filesystem=true",
                          f"model.cache_dir={tmp_path / 'models'}", "data.holdout_fraction=0.25",
                          "eval.scorers=[clip]", f"eval.scorer_weights.clip={clip}")

    first = submit()
    logs = first.stdout[-15000:] + first.stderr[-3000:]
    assert first.returncode == 0 and "succeeded" in first.stdout, logs
    for line in ("negatives  ", "train SFT", "export (SFT)", "train TDPO", "export (TDPO)", "tune  ", "eval  ",
                 "report  "):
        assert line in first.stdout, f"{line!r} missing: {logs}"
    out = tmp_path / "out"
    assert (out / "export" / "model_index.json").is_file() and (out / "tune" / "best.yaml").is_file()
    summary = json.loads((out / "eval" / "implicit" / "summary.json").read_text())
    assert list(summary["figures"]) == ["base", "sft", "tdpo"] and summary["reference"] == "sft"
    winrates = json.loads((out / "eval" / "winrates.json").read_text())
    assert winrates["baseline"] == "sft" and set(winrates["models"]) == {"base", "tdpo"}
    page = (out / "eval" / "report" / "index.html").read_text()
    assert page.count('<img class="sample"') == 3 * 4 and "Training curves" in page  # 3 models x 4 prompts
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_experiments()])
    stages = {r.data.tags.get("tpo_ray.stage") for r in runs}
    assert {"sft", "tdpo", "tune"} <= stages, stages

    again = submit()  # every stage finds its output: caches reused, runs finished, exports in place
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert again.stdout.count("already exported") == 2, again.stdout[-6000:]
    log = (out / "logs" / "pipeline.log").read_text()
    assert log.count("already reached step") >= 2 and log.count("cache: reusing") >= 2, log[-6000:]
    assert "already holds these models' figures" in log and "0 images sampled, 12 found" in log, log[-6000:]
