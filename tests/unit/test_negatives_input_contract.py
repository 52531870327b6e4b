"""The negatives job's input contract: formats detected by content, a declared schema unioned over the
whole input, identity by content, and row counts tallied independently (issue: nothing lost, nothing stale).

The per-shard work runs here without Ray: `shard_requests` reads and checks a shard, `finalize_shard`
with no editor answers makes every negative with the rules fallback, exactly as the job's driver does.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.config import NegativesConfig
from tpo_ray.data.sources import SourceError, list_input_files, plan_source, read_shard, sniff_format
from tpo_ray.negatives.editors.rules_stage import RULES_MODEL
from tpo_ray.negatives.job import NegativesJobError, _check_identity, job_identity
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.shards import ShardCountError, finalize_shard, shard_requests

NCFG = NegativesConfig()


def rows(n: int, **extra_at: dict) -> list[dict]:
    out = [{"id": f"r{i}", "caption": f"a red dog on a green field number {i}", "width": 64} for i in range(n)]
    for index, extra in extra_at.items():
        out[int(index.removeprefix("at"))].update(extra)
    return out


def write_jsonl(path: Path, records: list[dict], sep: str = "\n") -> Path:
    path.write_bytes((sep.join(json.dumps(r) for r in records) + sep).encode())
    return path


def run_shards(source: Path, out: Path, shard_size: int = 100) -> tuple[OutputLayout, list[dict]]:
    """Every shard through read -> checks -> rules fallback -> triplets, as the job does per shard."""
    plan = plan_source(str(source), shard_size)
    layout = OutputLayout(str(out))
    stats = []
    for spec in plan.shards:
        item = {"spec": spec.to_dict(), "duplicates": sorted(plan.duplicate_rows)}
        shard_requests(item, cfg=NCFG.model_dump(mode="json"), root=layout.root, attempts=1, chooses_principle=False,
                       columns=plan.columns)
        stats.append(finalize_shard(spec.index, None, NCFG, layout, "rules", RULES_MODEL, plan.columns))
    return layout, stats


def table(path: str) -> pa.Table:
    return pq.read_table(path)


# ------------------------------------------------------------------------ 1. declared schema
def test_a_column_absent_from_the_first_rows_is_kept_and_a_mistyped_value_is_quarantined(tmp_path: Path) -> None:
    records = rows(40, **{f"at{i}": {"source": f"site-{i}"} for i in (10, 20, 30, 39)})
    del records[0]["width"]  # the first row lacks a column the others have
    records[5]["width"] = "64px"  # one row disagrees with the column's type
    records[7]["meta"] = {"tags": ["a", "b"]}  # nested values are carried as JSON text
    records[8]["width"] = 2**70  # beyond int64: quarantined with the column named, not a failed shard
    layout, stats = run_shards(write_jsonl(tmp_path / "in.jsonl", records), tmp_path / "out")
    triplets = table(layout.triplets(0))
    assert triplets.schema.field("width").type == pa.int64() and triplets.schema.field("source").type == pa.string()
    by_id = {r["id"]: r for r in triplets.to_pylist()}
    assert sorted(r["source"] for r in by_id.values() if r["source"]) == ["site-10", "site-20", "site-30", "site-39"]
    assert by_id["r0"]["width"] is None and by_id["r1"]["width"] == 64
    assert json.loads(by_id["r7"]["meta"]) == {"tags": ["a", "b"]}
    quarantine = table(layout.quarantine_input(0)).to_pylist()
    assert [(q["id"], q["reason"]) for q in quarantine] == [("r5", "wrong_type:width"), ("r8", "wrong_type:width")]
    assert stats[0]["rows_in"] == 40 == stats[0]["rows_accepted"] + stats[0]["rows_quarantined"]
    assert "r5" not in by_id and "r8" not in by_id and len(by_id) == stats[0]["rows_accepted"]


# ------------------------------------------------------------- 3. counted rows, formats by content
@pytest.mark.parametrize("sep", ["\r", "\r\n", "\n"])
def test_records_separated_by_cr_crlf_or_lf_plan_and_read_alike(tmp_path: Path, sep: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", rows(50), sep)
    plan = plan_source(str(path), shard_size=7)
    read = [r for s in plan.shards for r in read_shard(s)]
    assert plan.num_rows == 50 and [r["id"] for r in read] == [f"r{i}" for i in range(50)]
    assert [s.num_rows for s in plan.shards] == [7] * 7 + [1]


def test_formats_are_detected_by_content_not_by_name(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows(3)), tmp_path / "captions.pq")
    fmt, _ = list_input_files(str(tmp_path / "captions.pq"))
    assert fmt == "parquet" and plan_source(str(tmp_path / "captions.pq"), 10).num_rows == 3
    (tmp_path / "array.jsonl").write_text(json.dumps(rows(3)))
    with pytest.raises(SourceError, match="array.jsonl is a JSON array"):
        plan_source(str(tmp_path / "array.jsonl"), 10)
    (tmp_path / "table.csv").write_text("id,caption\nr0,a red dog\n")
    with pytest.raises(SourceError, match="table.csv is not parquet or JSONL"):
        plan_source(str(tmp_path / "table.csv"), 10)
    with pytest.raises(SourceError, match="negatives.format=jsonl but the file's content is parquet"):
        plan_source(str(tmp_path / "captions.pq"), 10, "jsonl")
    assert [sniff_format(b) for b in (b"PAR1xx", b"\x1f\x8b\x08", b"\xef\xbb\xbf {", b"", b"  \n")] == \
        ["parquet", "gzip", "jsonl", "empty", "empty"]


def test_no_file_in_an_input_folder_is_skipped_without_a_word(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(3))
    (folder / "_SUCCESS").write_text("")  # bookkeeping and hidden files are not data
    (folder / ".DS_Store").write_bytes(b"\0\0")
    (folder / "README.md").write_text("# captions\n")  # dataset cards are not data (named in a warning)
    (folder / "LICENSE").write_text("CC-BY 4.0\n")
    assert plan_source(str(folder), 10).num_rows == 3
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps(rows(1)[0]) + "\n")
    (folder / "c.csv").write_text("id,caption\n")
    with pytest.raises(SourceError, match=r"b.jsonl.gz is gzip-compressed.*c.csv is not parquet or JSONL"):
        plan_source(str(folder), 10)


def test_a_required_column_missing_from_the_whole_input_fails_fast(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), tmp_path / "in.parquet")
    with pytest.raises(SourceError, match="has no 'caption' column \\(columns: id, text\\)"):
        plan_source(str(tmp_path / "in.parquet"), 10)
    write_jsonl(tmp_path / "in.jsonl", [{"caption": "a dog"}, {"caption": "a cat"}])
    with pytest.raises(SourceError, match="has no 'id' column"):
        plan_source(str(tmp_path / "in.jsonl"), 10)


def test_counts_are_tallied_independently_and_must_add_up(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", rows(10))
    plan = plan_source(str(path), 10)
    with path.open("a") as f:  # the input grows after planning: the shard read no longer matches
        f.write(json.dumps(rows(11)[10]) + "\n")
    layout = OutputLayout(str(tmp_path / "out"))
    spec = plan.shards[0]
    grown = {"spec": {**spec.to_dict(), "stop": path.stat().st_size}, "duplicates": []}
    with pytest.raises(ShardCountError, match="read 11 rows .* where planning counted 10"):
        shard_requests(grown, cfg=NCFG.model_dump(mode="json"), root=layout.root, attempts=1,
                       chooses_principle=False, columns=plan.columns)
    shard_requests({"spec": spec.to_dict(), "duplicates": []}, cfg=NCFG.model_dump(mode="json"), root=layout.root,
                   attempts=1, chooses_principle=False, columns=plan.columns)
    manifest = layout.read_json(layout.read_manifest(0))
    layout.write_json(layout.read_manifest(0), {**manifest, "rows_in": 11, "rows_read": 11})  # a row went missing
    with pytest.raises(ShardCountError, match="rows do not add up: planned 11, read 11, accepted 10 \\+ quarantined 0"):
        finalize_shard(0, None, NCFG, layout, "rules", RULES_MODEL, plan.columns)
    assert layout.read_json(layout.done(0)) is None  # the shard is not marked done: a rerun redoes it


# --------------------------------------------------------------------- 4. triplets fed back in
def test_a_triplets_output_fed_back_in_is_refused_by_name(tmp_path: Path) -> None:
    layout, _ = run_shards(write_jsonl(tmp_path / "in.jsonl", rows(5)), tmp_path / "out")
    with pytest.raises(SourceError, match="already has columns attempt, editor, editor_model, edits, .*looks like a negatives output"):
        plan_source(str(tmp_path / "out" / "triplets"), 10)


# ----------------------------------------------------------------------- 2. identity by content
def test_identity_is_the_inputs_content_not_its_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpo_ray.config import load_config

    path = write_jsonl(tmp_path / "in.jsonl", rows(10))
    monkeypatch.chdir(tmp_path)

    def identity(source: str) -> dict:
        cfg = load_config(None, [f"negatives.input={source}", "tracking.enabled=false"])
        return job_identity(cfg, plan_source(source, 4))

    relative, absolute = identity("in.jsonl"), identity(str(path))
    assert relative == absolute
    layout = OutputLayout(str(tmp_path / "out"))
    _check_identity(layout, relative)
    layout.write_json(layout.done(0), {"rows_in": 4})
    _check_identity(layout, absolute)  # the same file spelled another way continues the job
    before = path.stat()
    changed = rows(10)
    changed[3]["caption"] = "a red cat on a green field number 3"  # same size, same rows, other content
    write_jsonl(path, changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with the old timestamp
    assert path.stat().st_size == before.st_size
    with pytest.raises(NegativesJobError, match="different input content .* 1 finished shards would be stale"):
        _check_identity(layout, identity("in.jsonl"))
