"""Kill the negatives job mid-run (SIGKILL to its whole process group), rerun the same command, and
get exactly the rows of an uninterrupted run: no duplicate, no missing row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.data.synthetic import synthetic_captions

pytestmark = pytest.mark.slow

SHARDS = 40


def command(source: Path, out: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "tpo_ray.cli", "negatives", "--input", str(source), "--output", str(out),
            "negatives.shard_size=500", "negatives.negatives_per_caption=2", "tracking.enabled=false",
            f"output_dir={workdir}"]


def env() -> dict[str, str]:
    return {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def rows(folder: Path) -> list[tuple]:
    table = pq.read_table(folder)
    keys = ["id", "negative_index", "caption", "negative", "principle", "editor", "seed", "attempt"]
    return sorted(tuple(r[k] for k in keys) for r in table.to_pylist())


def test_killed_job_resumes_to_identical_output(tmp_path: Path) -> None:
    source = tmp_path / "captions.parquet"
    pq.write_table(pa.Table.from_pylist(list(synthetic_captions(SHARDS * 500, seed=3))), source)

    reference = tmp_path / "reference"
    subprocess.run(command(source, reference, tmp_path), env=env(), check=True, capture_output=True, timeout=600)

    out = tmp_path / "resumed"
    proc = subprocess.Popen(command(source, out, tmp_path), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    progress = out / "_progress"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and len(list(progress.glob("shard-*.json"))) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    done_at_kill = len(list(progress.glob("shard-*.json")))
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert 3 <= done_at_kill < SHARDS

    rerun = subprocess.run(command(source, out, tmp_path), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_skipped"] >= done_at_kill
    assert stats["rows_in"] == SHARDS * 500 == stats["rows_accepted"] + stats["rows_quarantined"]

    resumed, expected = rows(out / "triplets"), rows(reference / "triplets")
    assert len(resumed) == len(set(resumed)) == len(expected)
    assert resumed == expected
    assert not list((out / "triplets").glob("*.tmp-*")) and not list((out / "_work").glob("*"))
