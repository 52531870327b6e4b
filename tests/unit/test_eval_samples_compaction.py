"""Compacting the sample index keeps one row per image this config compares and loses no row of an
image it does not compare (another config's current row may be any of them)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.eval.sample_job import INDEX_SCHEMA, compact_index, read_index


def row(model: str, prompt_id: str, stamp: str, sha: str) -> dict:
    return {"model": model, "prompt_id": prompt_id, "prompt": "a red circle", "category": "color", "k": 0, "seed": 7,
            "path": f"/x/{model}/{prompt_id}_0.png", "model_stamp": stamp, "settings": '{"steps": 2}',
            "image_sha256": sha}


def test_stale_rows_of_compared_images_go_and_every_row_of_other_images_stays(tmp_path: Path) -> None:
    ours_old, ours_now = row("tdpo", "p-1", "old", "a"), row("tdpo", "p-1", "new", "b")
    theirs_a, theirs_b = row("other", "p-1", "s1", "c"), row("other", "p-1", "s2", "d")  # another config's
    for i, rows in enumerate([[ours_old, theirs_a], [ours_now, theirs_b, theirs_b]]):
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA),
                             tmp_path / "samples" / "index" / f"block-{i}.parquet")
    wanted = [{k: ours_now[k] for k in ("model", "prompt_id", "k", "model_stamp", "settings", "prompt", "seed")}]
    assert compact_index(str(tmp_path), wanted) == 2  # ours' stale row, and an exact duplicate of theirs
    left = read_index(str(tmp_path))
    assert sorted((r["model"], r["model_stamp"]) for r in left) == [("other", "s1"), ("other", "s2"), ("tdpo", "new")]
    assert len(list((tmp_path / "samples" / "index").glob("*.parquet"))) == 1
