"""A cache is keyed by its input's content; consumers skip re-hashing when the files are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tpo_ray.cache.job as job
from tpo_ray.config import load_config


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(job, "model_identity", lambda cfg: {"source": "m", "family": "sd15", "fingerprint": "mf"})
    hashed: list[str] = []
    real = job.content_fingerprint
    monkeypatch.setattr(job, "content_fingerprint", lambda root, files: hashed.append(root) or real(root, files))
    source = tmp_path / "triplets" / "shard-00000.parquet"
    source.parent.mkdir()
    cfg = load_config(None, [f"output_dir={tmp_path}", f"cache.input={source.parent}", "tracking.enabled=false"])
    return cfg, source, hashed


def write(source: Path, negative: str) -> None:
    pq.write_table(pa.table({"id": ["a"], "caption": ["a red dog"], "negative": [negative]}), source)


def build(cfg) -> str:
    """What `run_cache` records for a finished cache (the encoding itself is not needed here)."""
    directory, fp, keyed = job.expected_cache(cfg)
    Path(directory).mkdir(parents=True)
    manifest = {"complete": True, "fingerprint": fp, "kind": "triplet", "model": keyed["model"],
                "resolution": keyed["resolution"], "center_crop": keyed["center_crop"], "source": keyed["input"],
                "input_fingerprint": keyed["input_fingerprint"], "input_stats": keyed["input_stats"], "built_at": 1.0}
    (Path(directory) / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_regenerated_negatives_get_a_new_cache_and_unchanged_ones_are_not_rehashed(setup) -> None:
    cfg, source, hashed = setup
    write(source, "a blue dog")
    first = build(cfg)
    assert len(hashed) == 1
    assert job.expected_cache(cfg)[0] == first and len(hashed) == 1  # same files: the recorded content holds
    write(source, "a pink dog")  # regenerated negatives, same size
    assert job.expected_cache(cfg)[0] != first and len(hashed) == 2


def test_a_deleted_input_uses_the_cache_built_from_it(setup, caplog: pytest.LogCaptureFixture) -> None:
    cfg, source, hashed = setup
    write(source, "a blue dog")
    first = build(cfg)
    source.unlink()
    with caplog.at_level("WARNING"):
        assert job.expected_cache(cfg)[0] == first
    assert "is gone; using the cache built from it" in caplog.text
    source.parent.rmdir()
    for manifest in Path(first).glob("manifest.json"):
        manifest.unlink()
    with pytest.raises(FileNotFoundError, match="does not exist; run the stage that writes it first"):
        job.expected_cache(cfg)
