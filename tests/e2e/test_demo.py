"""`tpo-ray demo` as a new user runs it: default relative output, a fresh directory, a fresh process.

It is also the chain on the world: the shipped base model, SFT, TDPO, sampling held-out scene prompts and the
verifier, with fixed seeds; the base model's samples must be right well above chance.

Then the TDPO stage is rerun from another directory with another spelling of the same output
folder: `train` resumes the demo's run (no second run) and `export` finds its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow

RAY_CHATTER = ("streaming_executor", "RayTrainWorker", "TrainController", "core_worker.cc", "Reporting training result",
               "Started a local Ray instance", "Loading weights")


def tpo_ray(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "tpo_ray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def latest_state(run_dir: Path) -> dict:
    latest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    return json.loads((latest / "train_state.json").read_text())


def test_demo_with_default_relative_output_then_stages_rerun_from_elsewhere(tmp_path: Path) -> None:
    import mlflow

    clone = tmp_path / "clone"  # stands for the root of a fresh clone: `make demo` runs there with OUT=demo-output
    clone.mkdir()
    demo = tpo_ray(["demo", "train.max_steps=6", "data.synthetic.num_rows=48", "eval.max_prompts=24"], cwd=clone)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = clone / "demo-output"

    # A clean console: stage lines and a summary; Ray, worker and library chatter went to the log file.
    console = demo.stdout + demo.stderr
    assert not [c for c in RAY_CHATTER if c in console], console
    assert len(console.splitlines()) < 65, console  # stage lines, the summary table, the verifier table
    for line in ("  negatives", "48 triplets for 48/48 captions, 0 quarantined", "  train SFT", "step 40",
                 "  train TDPO", "step 6", "TDPO caption accuracy (held-out)", "  tune", "2 trials; best beta",
                 "best of the sweep: tpo-ray train --config demo-output/tune/", "  eval ", "caption acc (held-out): base ",
                 "TDPO caption acc by principle (SFT): ", "scene win rate of tdpo over sft", "  report ",
                 "verifier all correct: base ", "verifier accuracy on 24 images of held-out scene prompts per model",
                 "report:       demo-output/eval/report/index.html", "demo finished in",
                 "outputs under demo-output/", "full log:     demo-output/logs/demo.log",
                 f"mlflow ui --backend-store-uri sqlite:///{out.resolve()}/mlflow.db"):
        assert line in demo.stdout, line
    log = (out / "logs" / "demo.log").read_text()
    assert "RayTrainWorker" in log and "streaming_executor" in log

    # Everything stays under the output folder: no ./mlruns next to it.
    assert sorted(p.name for p in clone.iterdir()) == ["demo-output"]
    assert list((out / "mlartifacts").rglob("unet_trainable.safetensors"))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tpo_ray").experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name.split("-")[0] for r in top) == ["negatives", "report", "sft", "tdpo", "tune"]
    report_run = next(r for r in top if r.info.run_name == "report")
    assert "report/index.html" in [a.path for a in client.list_artifacts(report_run.info.run_id, "report")]

    # The report opens in a real browser with every image loaded and a row per model.
    from tests.helpers.browser import rendered

    seen = rendered(out / "eval" / "report" / "index.html", size="1400,900")
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["tables"]["implicit"] == 3 and seen["tables"]["winrates"] == 3  # base, sft, tdpo
    assert seen["tables"]["scene"] == 3 and seen["tables"]["winrates-by-category"] >= 2
    header = seen["boxes"]["summary"]  # prompt set, counts, sampling settings, scorers: above the fold
    assert 0 <= header["top"] and header["bottom"] <= 900, header
    page = (out / "eval" / "report" / "index.html").read_text()
    implicit_table = page[page.index('id="implicit"'):].split("</table>")[0]
    assert implicit_table.count("[") >= 6, implicit_table  # an interval on each accuracy of each model

    # The world: the base model draws the held-out prompts' settings and colors far above chance (background
    # 1/4, time 1/2, color 1/8).
    scene = json.loads((out / "eval" / "scene.json").read_text())
    base = scene["models"]["base"]["attributes"]
    assert scene["models"]["base"]["n"] == 24
    assert base["background"]["accuracy"] >= 0.6 and base["time"]["accuracy"] >= 0.8, base
    assert base["color"]["accuracy"] >= 0.4, base
    verdicts = [v for v in scene["verdicts"] if v["model"] == "base"]
    assert len(verdicts) == 24 and all(set(v["read"]) == set(base) - {"all"} for v in verdicts)
    sweep = next(r for r in top if r.info.run_name.startswith("tune"))
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]) == 2
    tdpo_run = next(r for r in runs if r.info.run_name.startswith("tdpo"))
    assert "train/implicit_acc" in tdpo_run.data.metrics and "train/z0" not in tdpo_run.data.metrics
    sft_run = next(r for r in runs if r.info.run_name.startswith("sft"))
    assert "train/loss" in sft_run.data.metrics and "train/implicit_acc" not in sft_run.data.metrics

    assert pq.read_table(out / "data" / "captions.parquet").num_rows == 48
    triplets = pq.read_table(out / "negatives" / "triplets").to_pylist()
    assert len(triplets) == 48 and all(t["negative"] != t["caption"] for t in triplets)
    for folder in ("export", "export-sft"):
        assert (out / folder / "model_index.json").is_file() and (out / folder / "unet").is_dir()
    assert len(list((out / "cache").glob("*/manifest.json"))) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6
    (tdpo_dir,) = (out / "checkpoints").glob("tdpo-*")
    assert latest_state(tdpo_dir)["step"] == 6

    # Another directory, another spelling of the same output folder: the same run resumes to step 8.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stage_config = os.path.relpath(out / "configs" / "tdpo.yaml", elsewhere)
    spelled = "../clone/./demo-output/../demo-output/"
    train = tpo_ray(["train", "--config", stage_config, f"output_dir={spelled}", "train.max_steps=8"], cwd=elsewhere)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert f"train: {tdpo_dir.name} step 8" in train.stdout
    assert [p.name for p in (out / "checkpoints").glob("tdpo-*")] == [tdpo_dir.name]  # no second run
    assert latest_state(tdpo_dir)["step"] == 8
    assert "resumed at step 6" in (out / "logs" / "train.log").read_text()
    assert sorted(p.name for p in elsewhere.iterdir()) == []

    # The absolute spelling from a third directory finds that checkpoint for export.
    export = tpo_ray(["export", "--config", str(out / "configs" / "tdpo.yaml"), f"output_dir={out.resolve()}",
                      f"export.output={tmp_path / 'exported'}"], cwd=tmp_path)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    newest = sorted(p for p in tdpo_dir.glob("checkpoint_*") if p.is_dir())[-1]
    assert f"from {newest.relative_to(tmp_path)}" in export.stdout
    assert (tmp_path / "exported" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
