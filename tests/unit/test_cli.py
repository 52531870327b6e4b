"""The `tpo-ray` command line: one-line errors, exit codes, and the demo end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_stage_help_documents_every_option() -> None:
    from tpo_ray.config import NegativesConfig

    result = runner.invoke(app, ["negatives", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in NegativesConfig.model_fields:
        assert f"negatives.{name}" in result.output, name
    train_help = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "sft, dpo, tdpo, kto, tkto, mapo, rpo" in train_help and "train.scaling.num_workers" in train_help


def test_every_job_entrypoint_runs_a_cli_stage() -> None:
    """`ray job submit ... python jobs/<stage>.py`: each entrypoint names a stage the CLI has."""
    import re

    jobs = sorted((Path(__file__).parents[2] / "jobs").glob("[!_]*.py"))
    stages = {re.search(r'main\("(\w+)"\)', p.read_text()).group(1) for p in jobs}
    assert stages >= {"negatives", "cache", "train", "tune", "export", "eval", "report", "pipeline", "reference"}
    import typer

    commands = typer.main.get_command(app).commands
    for stage in stages:  # a group (tpo-ray eval ...): every command in it takes a config
        group = getattr(commands[stage], "commands", None)
        calls = [[stage, sub, "--help"] for sub in group] if group else [[stage, "--help"]]
        for call in calls:
            result = runner.invoke(app, call)
            assert result.exit_code == 0 and "--config" in result.output, (call, result.output)


class TrainingFailedError(RuntimeError):
    """Stands for ray.train.TrainingFailedError: a worker's whole traceback in its text."""


@pytest.mark.parametrize(("raised", "code", "shown"), [
    (TrainingFailedError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent "
                         "call last):\n  File \"loop.py\", line 9\n\x1b[36mNonFiniteLossError: step 2: loss was "
                         "non-finite\x1b[0m"), 2, "error: NonFiniteLossError: step 2: loss was non-finite"),
    (OSError(28, "No space left on device"), 1, "error: OSError: [Errno 28] No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted: rerun the same command to resume"),
])
def test_failures_become_short_lines_with_the_log_and_a_way_on(raised, code, shown, capsys, tmp_path) -> None:
    import typer

    from tpo_ray.cli import run_reported

    def fail():
        raise raised

    with pytest.raises(typer.Exit) as exit_info:
        run_reported(False, fail, tmp_path / "train.log")
    err = capsys.readouterr().err
    assert exit_info.value.exit_code == code and err.startswith(shown), err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err
    if code != 130:
        assert "train.log" in err and "--debug shows the traceback" in err


def test_style_data_writes_triplets_and_pairs_and_names_a_missing_phrase(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "caption": "a fox", "style": "cartoon", "image": b"x",
                                          "styled_image": b"y"}]), rows)
    result = runner.invoke(app, ["style-data", "--input", str(rows), "--output", str(tmp_path / "t.parquet")])
    assert result.exit_code == 0 and "1 triplets rows" in result.output, result.output
    triplet = pq.read_table(tmp_path / "t.parquet").to_pylist()[0]
    assert triplet["caption"] == "a cartoon illustration, a fox" and triplet["negative"].endswith(", a fox")
    result = runner.invoke(app, ["style-data", "--input", str(rows), "--output", str(tmp_path / "p.parquet"),
                                 "--layout", "pairs", "--phrase", "a watercolor painting"])
    assert result.exit_code == 0, result.output
    pair = pq.read_table(tmp_path / "p.parquet").to_pylist()[0]
    assert (pair["jpg_0"], pair["jpg_1"], pair["caption"]) == (b"y", b"x", "a watercolor painting, a fox")
    missing = runner.invoke(app, ["style-data", "--input", str(rows), "--output", str(tmp_path / "q.parquet"),
                                  "--layout", "pairs"])
    assert missing.exit_code != 0 and "needs --phrase" in missing.output


def test_style_data_quarantines_rows_it_cannot_use_and_refuses_an_input_with_none_usable(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "caption": "a fox", "style": "cartoon", "image": b"x"},
                                         {"id": "b", "caption": "a cat", "style": "anime", "image": b"x"}]), rows)
    result = runner.invoke(app, ["style-data", "--input", str(rows), "--output", str(tmp_path / "t.parquet")])
    assert result.exit_code == 0 and "1 rows quarantined (unknown_style:anime 1)" in result.output, result.output
    assert [r["id"] for r in pq.read_table(tmp_path / "t.parquet").to_pylist()] == ["a"]
    (bad,) = pq.read_table(tmp_path / "t.quarantine.parquet").to_pylist()
    assert (bad["id"], bad["reason"]) == ("b", "unknown_style:anime") and '"caption": "a cat"' in bad["raw"]
    only_bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "b", "caption": "a cat", "style": "anime"}]), only_bad)
    refused = runner.invoke(app, ["style-data", "--input", str(only_bad), "--output", str(tmp_path / "u.parquet")])
    assert refused.exit_code != 0 and "no row of" in refused.output and "known styles" in refused.output
    assert not (tmp_path / "u.parquet").exists()


@pytest.mark.parametrize("own_output", [True, False])
def test_negatives_logs_under_its_own_output(own_output: bool, tmp_path: Path, monkeypatch) -> None:
    """`tpo-ray negatives --output DIR` keeps its log in DIR/logs/negatives.log (not in ./demo-output/logs);
    without --output it logs under output_dir like every stage. The job itself is replaced by a stand-in."""
    import contextlib
    from types import SimpleNamespace

    import tpo_ray.cli as cli
    from tpo_ray.console import log_file_for

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere" / "negatives"
    roots = []

    @contextlib.contextmanager
    def session(root: str, stage: str, verbose: bool, debug: bool):
        roots.append(root)
        yield log_file_for(root, stage)

    stats = {"triplets": 2, "rows_accepted": 2, "rows_in": 2, "rows_quarantined": 0, "fallbacks": 0}
    done = SimpleNamespace(stats=stats, shards_skipped=0, shards_total=1, seconds=0.1, output=str(out))
    monkeypatch.setattr(cli, "console_session", session)
    monkeypatch.setattr("tpo_ray.negatives.job.run_negatives", lambda cfg: done)
    args = ["negatives", "--input", str(tmp_path / "captions.jsonl")] + (["--output", str(out)] if own_output else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = out if own_output else tmp_path / "demo-output"
    assert roots == [str(expected)]
    assert f"full log: {(expected / 'logs' / 'negatives.log').relative_to(tmp_path)}" in result.output
