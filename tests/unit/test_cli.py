"""The `tpo-ray` command line: one-line errors, exit codes, and the demo end to end."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from tpo_ray.cli import app

runner = CliRunner()


def test_show_config_applies_overrides() -> None:
    result = runner.invoke(app, ["show-config", "train.loss.beta=2000", "train.loss.tau=0.001"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["train"]["loss"] == {"name": "tdpo", "beta": 2000.0, "tau": 0.001, "clip": "loser_cap"}


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  loss:\n    beta: -5\n")
    result = runner.invoke(app, ["show-config", "--config", str(cfg)])
    assert result.exit_code == 2
    assert f"{cfg}: train.loss.beta: Input should be greater than 0" in result.output
    assert "Traceback" not in result.output


def test_demo_runs_and_reports_metrics(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--output", str(out), "train.max_steps=6", "data.synthetic.num_rows=16"])
    assert result.exit_code == 0, result.output
    assert "TDPO steps 6: loss 0.6931" in result.output
    assert pq.read_table(out / "data" / "captions.parquet").num_rows == 16
    triplets = pq.read_table(out / "negatives" / "triplets" / "part-00000.parquet").to_pylist()
    assert len(triplets) == 16 and all(t["negative"] != t["caption"] for t in triplets)
    assert (out / "models" / "tiny-sd15" / "model_index.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6
