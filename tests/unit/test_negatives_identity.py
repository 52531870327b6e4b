"""One negatives job per output folder, but a job that finished no shard does not block the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo_ray.negatives.job import NegativesJobError, _check_identity
from tpo_ray.negatives.layout import OutputLayout


def identity(settings: str) -> dict:
    return {"input": "/data/captions.parquet", "input_fingerprint": "f0", "num_rows": 10, "num_shards": 1,
            "settings_hash": settings}


def test_a_job_with_no_finished_shard_is_replaced_by_the_corrected_command(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    _check_identity(layout, identity("editor=hf model=/missing"))  # this job then failed in its actor
    layout.write_json(layout.rows(0).replace(".rows.parquet", ".read.json"), {"stale": True})
    _check_identity(layout, identity("editor=hf model=/models/qwen"))
    assert layout.read_json(layout.job)["settings_hash"] == "editor=hf model=/models/qwen"
    assert not (tmp_path / "out" / "_work").exists()  # the failed job's scratch cannot leak into the new one


def test_a_job_with_finished_shards_is_protected(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    _check_identity(layout, identity("a"))
    layout.write_json(layout.done(0), {"rows_in": 10})
    with pytest.raises(NegativesJobError, match="different settings_hash"):
        _check_identity(layout, identity("b"))
    assert layout.read_json(layout.job)["settings_hash"] == "a"


def test_an_output_of_an_older_version_continues_when_path_and_settings_match(tmp_path: Path) -> None:
    """Outputs written before content fingerprints recorded the input's path: same path, rows, shards
    and settings continue (and are upgraded); another path is still refused."""
    layout = OutputLayout(str(tmp_path / "out"))
    old = {k: v for k, v in identity("a").items() if k != "input_fingerprint"}
    layout.write_json(layout.job, old)
    layout.write_json(layout.done(0), {"rows_in": 10})
    _check_identity(layout, identity("a"))
    assert layout.read_json(layout.job)["input_fingerprint"] == "f0"
    layout.write_json(layout.job, {**old, "input": "/data/other.parquet"})
    with pytest.raises(NegativesJobError, match="different input content"):
        _check_identity(layout, identity("a"))


def test_the_lexicon_version_is_part_of_the_identity(monkeypatch) -> None:
    """Negatives from two word lists never share an output: the rules editor (and every LLM editor's
    fallback) would otherwise mix them."""
    from tpo_ray.config import config_from_dict
    from tpo_ray.negatives import job
    from types import SimpleNamespace

    cfg = config_from_dict({"negatives": {"input": "/data/captions.parquet"}}, "test")
    plan = SimpleNamespace(fingerprint="f0", num_rows=10, shards=[object()])
    before = job.job_identity(cfg, plan)
    monkeypatch.setattr(job, "RULES_MODEL", "lexicon-v999")
    after = job.job_identity(cfg, plan)
    assert before["settings"]["rules_model"].startswith("lexicon-v") and before["settings_hash"] != after["settings_hash"]
