"""Chaos: the stage commands on a hostile input set, as a new user would run them.

Malformed lines, CR separators, mixed types, missing columns, corrupt/empty/truncated/SVG images,
duplicate ids, an unreadable format and an input rewritten in place. For each stage, rows in =
accepted + quarantined, where the test counts each side itself from the files the stage wrote
(not from the stage's own totals), and nothing stale survives a rewrite.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tpo_ray.data.synthetic import synthetic_captions, synthetic_table

pytestmark = pytest.mark.slow

BAD_IMAGES = {3: b"not an image", 5: b"", 9: b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'}


def tpo(workdir: Path, models: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tpo_ray.cli", *args, f"output_dir={workdir}", "tracking.enabled=false",
           f"model.cache_dir={models}", "train.loss.name=tdpo"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=workdir)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()[:70]


def hostile_parquet(path: Path, seed: int) -> list[dict]:
    rows = synthetic_table(24, 64, seed).to_pylist()
    for index, data in {**BAD_IMAGES, 7: truncated_png()}.items():
        rows[index]["image"] = data
    rows[11]["caption"] = ""  # quarantined by negatives
    rows[13]["id"] = rows[12]["id"]  # duplicate id: quarantined by negatives
    for i, row in enumerate(rows):
        row["source"] = "web" if i == 2 else None  # a column only one row has a value in
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def read_rows(folder: Path) -> list[dict]:
    files = sorted(folder.rglob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def negatives_counted(out: Path) -> tuple[set[str], int]:
    """(accepted ids, quarantined rows), counted from the output files."""
    accepted = {r["id"] for r in read_rows(out / "triplets")}
    quarantined = [r for r in read_rows(out / "quarantine") if r["stage"] in ("input", "edit")]
    return accepted, len(quarantined)


def test_stage_commands_on_hostile_input(tmp_path: Path, model_cache: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()

    # ---- negatives on JSONL: malformed lines, CR separators, mixed types, nested and missing values
    good = list(synthetic_captions(20, seed=4))
    records = [json.dumps({**r, "width": 64}) for r in good]
    records[4] = json.dumps({**good[4], "width": "64px"})  # mistyped: quarantined, not a crash
    records[6] = json.dumps({**good[6], "meta": {"tags": ["x"]}})
    records += ["{broken json", json.dumps({"id": "nocap"}), json.dumps({"id": "intcap", "caption": 7}), "[1, 2]"]
    (data / "captions.jsonl").write_bytes(("\n".join(records[:10]) + "\r" + "\r\n".join(records[10:]) + "\n").encode())
    ok(tpo(tmp_path, model_cache, "negatives", "--input", "data/captions.jsonl", "--output", "neg-jsonl"))
    stats = json.loads((tmp_path / "neg-jsonl" / "stats.json").read_text())
    accepted, quarantined = negatives_counted(tmp_path / "neg-jsonl")
    assert stats["rows_in"] == len(records) == len(accepted) + quarantined
    assert (stats["rows_accepted"], stats["rows_quarantined"]) == (len(accepted), quarantined)
    reasons = {r["reason"] for r in read_rows(tmp_path / "neg-jsonl" / "quarantine")}
    assert {"wrong_type:width", "unreadable_row", "missing_caption", "non_string_caption"} <= reasons
    triplets = pq.read_table(tmp_path / "neg-jsonl" / "triplets")
    assert {"width", "meta"} <= set(triplets.column_names)

    # ---- an unreadable format fails at once, in one line naming the file
    (data / "captions.csv").write_text("id,caption\nr0,a red dog\n")
    refused = tpo(tmp_path, model_cache, "negatives", "--input", "data/captions.csv", "--output", "neg-csv")
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "captions.csv is not parquet or JSONL" in said
    assert "Traceback" not in said and not (tmp_path / "neg-csv" / "triplets").exists()

    # ---- negatives then cache on parquet with corrupt images, a duplicate id and a sparse column
    source = data / "images.parquet"
    hostile_parquet(source, seed=1)
    ok(tpo(tmp_path, model_cache, "negatives", "--input", "data/images.parquet", "--output", "neg"))
    accepted, quarantined = negatives_counted(tmp_path / "neg")
    assert len(accepted) + quarantined == 24 and quarantined >= 2
    sparse = pq.read_table(tmp_path / "neg" / "triplets").column("source").to_pylist()
    assert sparse.count("web") == int(pq.read_table(source).column("id")[2].as_py() in accepted)
    cache_args = ("cache", "cache.input=neg/triplets", "cache.output=cache")
    ok(tpo(tmp_path, model_cache, *cache_args))
    [first] = [p for p in (tmp_path / "cache").iterdir() if (p / "manifest.json").exists()]
    manifest = json.loads((first / "manifest.json").read_text())
    cached = len(read_rows(first / "split=train")) + len(read_rows(first / "split=val"))
    cache_quarantine = read_rows(first / "quarantine")
    triplet_rows = len(read_rows(tmp_path / "neg" / "triplets"))
    assert manifest["rows_in"] == triplet_rows == cached + len(cache_quarantine)
    bad_ids = {r["id"] for r in cache_quarantine}
    expected_bad = {pq.read_table(source).column("id")[i].as_py() for i in (*BAD_IMAGES, 7)} & accepted
    assert bad_ids == expected_bad and all(r["stage"] == "cache" for r in cache_quarantine)

    # ---- the input rewritten in place: refused on the old output, regenerated, then a new cache
    rewritten = hostile_parquet(source, seed=2)
    stale = tpo(tmp_path, model_cache, "negatives", "--input", str(source), "--output", "neg")
    assert stale.returncode == 2 and "different input content" in stale.stdout + stale.stderr, stale.stdout[-2000:]
    shutil.rmtree(tmp_path / "neg")
    ok(tpo(tmp_path, model_cache, "negatives", "--input", "data/images.parquet", "--output", "neg"))
    captions = {r["caption"] for r in read_rows(tmp_path / "neg" / "triplets")}
    assert captions <= {r["caption"] for r in rewritten}
    rebuilt = ok(tpo(tmp_path, model_cache, *cache_args))
    assert "reused" not in rebuilt.stdout
    [second] = [p for p in (tmp_path / "cache").iterdir() if (p / "manifest.json").exists() and p != first]
    new_cache_captions = {r["caption"] for r in read_rows(second / "split=train") + read_rows(second / "split=val")}
    assert new_cache_captions and new_cache_captions <= captions
