"""The benchmark scripts run end to end and print what docs/performance.md quotes (not timed here:
a benchmark prints figures, a test only checks that it can)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ratio(output: str, name: str) -> float:
    found = re.search(rf"^ratio {re.escape(name)} = ([0-9.]+)$", output, re.M)
    assert found, output
    return float(found.group(1))


@pytest.mark.parametrize("model", ["sd15", "sdxl"])  # SDXL: two text encoders, pooled embeddings, time ids
def test_train_step_prints_three_variants_and_the_ratio_last(model: str) -> None:
    out = run("train_step.py", "--quick", "--model", model, "--steps", "1", "--warmup", "0")
    assert out.startswith(f"# python benchmarks/train_step.py --quick --model {model}")
    assert f"model: {model} channels/8" in out
    for variant in ("(a) naive", "(b) tpo_ray step, defaults", "(c) tpo_ray step, precomputed reference"):
        assert re.search(rf"^{re.escape(variant)}.* ms/step .* pairs/s$", out, re.M), out
    assert out.strip().splitlines()[-1].startswith("ratio (c)/(a) = ")
    assert ratio(out, "(c)/(a)") > 0 and ratio(out, "(b)/(a)") > 0


def test_sweep_cost_runs_every_trial_and_prints_the_ratio_last() -> None:
    out = run("sweep_cost.py", "--quick", "--trials", "2", "--steps", "1", "--examples", "2", "--batch", "1")
    assert "sweep: 2 trials x 1 steps x 1 pairs over 2 examples" in out
    assert out.strip().splitlines()[-1].startswith("ratio shared cache + precomputed reference / naive = ")
    assert ratio(out, "shared cache + precomputed reference / naive") > 0


def test_gpu_check_runs_every_backend_and_reference_at_smoke_size_on_cpu(tmp_path: Path) -> None:
    """The GPU check is ready the moment a GPU is lent: here its every path runs at a reduced size."""
    import json

    out = run("gpu_check.py", "--cpu-smoke", "--output", str(tmp_path / "gpu_check.json"))
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(r["family"], r["backend"], r["reference"]): r for r in result["training"]}
    assert set(rows) == {(f, b, r) for f in ("sd15", "sdxl") for b in ("ddp", "zero2", "zero3")
                         for r in ("online", "precomputed")}
    assert all(r["pairs_per_s"] > 0 and r["loss_finite"] for r in rows.values())
    assert {r["family"] for r in result["sampling"]} == {"sd15", "sdxl"}
    assert all(r["images_per_s"] > 0 for r in result["sampling"])
    assert result["negatives"] == {"skipped": "no CUDA device: vLLM needs one", "model_built": True}
    assert re.search(r"^sdxl 64²\s+zero3\s+precomputed\s+[0-9.]+", out, re.M), out
