"""Shared fixtures: tiny SD1.5/SDXL models saved once per session in diffusers layout."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DeepSpeed JIT-builds its ops (a comm op, cpu_adam) once; keep them across test sessions (and Ray
# workers), one folder per environment: ops built against another venv's torch would be rebuilt, and
# two checkouts building into one folder wait on each other's lock.
_ENV_KEY = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "tpo_ray" / "torch_extensions" / _ENV_KEY))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
# MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into this process's environment; a `tpo-ray`
# subprocess (or a Ray cluster) started by a later test would inherit an earlier test's store and read
# it as the user's choice (`tracking.with_environment_uri`). Each test starts without it.
_MLFLOW_URI = os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_uri():
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dirs(model_cache: Path) -> dict[str, Path]:
    from tpo_ray.models.tiny import save_tiny_model

    return {family: save_tiny_model(model_cache / f"tiny-{family}", family) for family in ("sd15", "sdxl")}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on 127.0.0.1; s3fs and pyarrow talk to it over HTTP."""
    from moto.server import ThreadedMotoServer

    from tests.helpers.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield endpoint
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket per test; yields its s3:// URI."""
    import uuid

    import boto3

    name = f"tpo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


# --------------------------------------------------------------------- a test run leaves no files
# Tests write under tmp_path; anything new in the checkout (an `mlruns/` of MLflow artifacts, a
# stray output folder), ignored by git or not, fails the session.
_REPO = Path(__file__).resolve().parents[1]
_EXPECTED_LEFTOVERS = (".pytest_cache/", ".ruff_cache/", ".hypothesis/", "__pycache__/", ".torch_extensions/")


def _checkout_entries() -> set[str] | None:
    import subprocess

    if not (_REPO / ".git").exists():
        return None
    out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=_REPO, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if not line.endswith(_EXPECTED_LEFTOVERS)}


def pytest_sessionstart(session) -> None:
    session.config._checkout_before = _checkout_entries()


def pytest_sessionfinish(session, exitstatus) -> None:
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_entries()
    if before is None or after is None or getattr(session.config, "workerinput", None) is not None:
        return
    new = sorted(after - before)
    if new:
        session.config.get_terminal_writer().line(
            "the test run left files in the checkout (tests must write under tmp_path):\n  " + "\n  ".join(new),
            red=True)
        session.exitstatus = 1
