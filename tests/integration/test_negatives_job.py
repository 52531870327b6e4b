"""The negatives job on a real local Ray cluster: quarantine, formats, S3, resume, LLM editors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.openai_server import ChatServer
from tests.helpers.scripted_llm import captions, fault_for, scripted
from tpo_ray.config import load_config
from tpo_ray.data.io import filesystem_for, write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_captions, synthetic_table
from tpo_ray.negatives.editors.rules_stage import RULES_MODEL
from tpo_ray.negatives.job import NegativesJobError, run_negatives
from tpo_ray.negatives.validation import (
    CAPTION_TOO_LONG,
    DUPLICATE_ID,
    EMPTY_CAPTION,
    HTTP_ERROR,
    MISSING_CAPTION,
    MISSING_ID,
    NON_STRING_CAPTION,
    NO_EDITABLE_TERM,
    UNPARSABLE_JSON,
    UNREADABLE_ROW,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")


def cfg_for(tmp_path: Path, source: str, output: str | None = None, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path}", f"negatives.input={source}",
                              f"negatives.output={output or tmp_path / 'neg'}", "tracking.enabled=false", *overrides])


def read_dir(path: str) -> list[dict]:
    fs, p = filesystem_for(path)
    rows = []
    for f in sorted(fs.glob(p + "/*.parquet")):
        with fs.open(f, "rb") as fh:
            rows += pq.read_table(fh).to_pylist()
    return rows


def messy_jsonl(path: Path) -> Path:
    good = list(synthetic_captions(30, seed=5))
    lines = [json.dumps({**r, "image_uri": f"s3://imgs/{r['id']}.png"}) for r in good]
    lines += [
        "{this is not json",
        json.dumps({"caption": "a red dog"}),
        json.dumps({"id": "m1"}),
        json.dumps({"id": "m2", "caption": ""}),
        json.dumps({"id": "m3", "caption": 12345}),
        json.dumps({"id": "m4", "caption": "red " * 90}),
        json.dumps({"id": good[0]["id"], "caption": "a duplicate blue cat"}),
        json.dumps({"id": "m5", "caption": "the meaning of life"}),  # nothing the rules editor can swap
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_are_quarantined_with_reasons_and_every_row_is_accounted(tmp_path: Path) -> None:
    source = messy_jsonl(tmp_path / "captions.jsonl")
    result = run_negatives(cfg_for(tmp_path, str(source), None, "negatives.shard_size=7"))
    out = tmp_path / "neg"
    triplets, quarantine = read_dir(str(out / "triplets")), read_dir(str(out / "quarantine"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats == {**result.stats}
    assert stats["rows_in"] == 38 and stats["rows_accepted"] == 30 and stats["rows_quarantined"] == 8
    row_level = [q for q in quarantine if q["stage"] in ("input", "edit")]
    assert len({t["id"] for t in triplets}) + len(row_level) == stats["rows_in"]
    assert sorted(q["reason"] for q in row_level) == sorted([
        UNREADABLE_ROW, MISSING_ID, MISSING_CAPTION, EMPTY_CAPTION, NON_STRING_CAPTION, CAPTION_TOO_LONG,
        DUPLICATE_ID, NO_EDITABLE_TERM])
    assert next(q for q in row_level if q["reason"] == UNREADABLE_ROW)["raw"] == "{this is not json"
    assert next(q for q in row_level if q["reason"] == NON_STRING_CAPTION)["id"] == "m3"
    for t in triplets:
        assert t["negative"] != t["caption"] and t["image_uri"] == f"s3://imgs/{t['id']}.png"
        assert t["editor"] == "rules" and t["editor_model"] == RULES_MODEL and len(t["edits"]) == 1
        assert t["principle"] in ("content", "attribute", "spatial", "contextual")
    dup_id = json.loads(next(q for q in row_level if q["reason"] == DUPLICATE_ID)["raw"])["id"]
    assert [t["caption"] for t in triplets if t["id"] == dup_id] != ["a duplicate blue cat"]  # first one wins
    assert stats["rejected"][DUPLICATE_ID] == 1 and sum(stats["principles"].values()) == stats["triplets"]
    assert not list((out / "_work").glob("*"))
    # the quality report: rates a person reads at a glance, and 20 pairs to read
    assert stats["acceptance_rate"] == round(30 / 38, 4) and stats["num_edits"] == {"1": stats["triplets"]}
    assert sum(stats["principle_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert stats["rejection_rate"][NO_EDITABLE_TERM] > 0
    # every rules candidate that found a term is valid; the caption with none counts under "none"
    assert sum(stats["candidates_by_principle"].values()) == stats["candidates"]
    assert stats["acceptance_by_principle"] == {**{p: 1.0 for p in stats["principles"]}, "none": 0.0}
    assert stats["candidates_by_principle"]["none"] == 1
    sample = (out / "sample.md").read_text().splitlines()
    assert sample[2] == "| caption | negative | principle | edits |" and len(sample) == 4 + 20
    assert all(" -> " in line for line in sample[4:])


def test_parquet_with_images_n_negatives_and_principle_subset(tmp_path: Path) -> None:
    write_parquet_atomic(synthetic_table(20, 32), tmp_path / "in.parquet")
    result = run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.negatives_per_caption=3",
                                   "negatives.principles=[content,attribute,contextual]", "negatives.max_edits=2"))
    triplets = read_dir(str(tmp_path / "neg" / "triplets"))
    assert result.stats["rows_accepted"] == 20 and len(triplets) == 60
    assert {t["principle"] for t in triplets} <= {"content", "attribute", "contextual"}
    by_id: dict[str, set] = {}
    for t in triplets:
        by_id.setdefault(t["id"], set()).add(t["negative"])
        assert isinstance(t["image"], bytes) and t["width"] == 32 and 1 <= len(t["edits"]) <= 2
    assert all(len(v) == 3 for v in by_id.values())  # n distinct negatives per caption


def test_hf_datasets_folder_input(tmp_path: Path) -> None:
    import datasets

    rows = list(synthetic_captions(12))
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "hfds")
    result = run_negatives(cfg_for(tmp_path, str(tmp_path / "hfds")))
    assert result.stats["triplets"] == 12


def test_rerun_skips_done_shards_and_redoes_unfinished_ones(tmp_path: Path) -> None:
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(40))), tmp_path / "in.parquet")
    cfg = cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.shard_size=10")
    first = run_negatives(cfg)
    before = read_dir(str(tmp_path / "neg" / "triplets"))
    (tmp_path / "neg" / "_progress" / "shard-00002.json").unlink()  # as if killed before the marker
    (tmp_path / "neg" / "triplets" / "shard-00003.parquet").unlink()
    (tmp_path / "neg" / "_progress" / "shard-00003.json").unlink()
    second = run_negatives(cfg)
    assert second.shards_skipped == 2 and second.stats == {**first.stats, **{k: second.stats[k] for k in (
        "shards_skipped", "seconds_this_run", "captions_per_s_this_run")}}
    assert read_dir(str(tmp_path / "neg" / "triplets")) == before
    third = run_negatives(cfg)
    assert third.shards_skipped == 4


def test_changed_settings_on_the_same_output_are_refused(tmp_path: Path) -> None:
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(5))), tmp_path / "in.parquet")
    run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet")))
    with pytest.raises(NegativesJobError, match="different settings_hash"):
        run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.max_edits=2"))


def test_s3_in_and_out(tmp_path: Path, s3_bucket: str) -> None:
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(25))), f"{s3_bucket}/in/captions.parquet")
    out = f"{s3_bucket}/out/negatives"
    cfg = cfg_for(tmp_path, f"{s3_bucket}/in", out, "negatives.shard_size=10", "tracking.enabled=true")
    result = run_negatives(cfg)
    assert result.stats["triplets"] == 25 and result.shards_total == 3
    assert len(read_dir(f"{out}/triplets")) == 25
    fs, p = filesystem_for(f"{out}/stats.json")
    assert json.loads(fs.cat(p))["rows_in"] == 25
    # the quality report reaches MLflow from an s3:// output too: rates as metrics, both files as artifacts
    import mlflow

    from tpo_ray.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.output_dir))
    run = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    assert run.data.metrics["negatives/acceptance_rate"] == 1.0
    assert {f"negatives/acceptance_by_principle/{p}" for p in result.stats["principles"]} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"stats.json", "sample.md"}
    stats_copy = Path(client.download_artifacts(run.info.run_id, "stats.json", str(tmp_path)))
    assert json.loads(stats_copy.read_text()) == json.loads(fs.cat(p))
    assert run_negatives(cfg_for(tmp_path, f"{s3_bucket}/in", out, "negatives.shard_size=10")).shards_skipped == 3


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> str:
    from tpo_ray.models.tiny_llm import save_tiny_chat_model

    return str(save_tiny_chat_model(tmp_path_factory.mktemp("llm") / "tiny-chat"))


def test_hf_editor_garbage_is_rejected_and_falls_back_to_rules(tmp_path: Path, tiny_llm: str) -> None:
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(6))), tmp_path / "in.parquet")
    result = run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.editor=hf",
                                   f"negatives.llm.model={tiny_llm}", "negatives.llm.max_new_tokens=16",
                                   "negatives.retries=1", "negatives.llm.batch_size=4"))
    triplets = read_dir(str(tmp_path / "neg" / "triplets"))
    rejected = [q for q in read_dir(str(tmp_path / "neg" / "quarantine")) if q["stage"] == "editor_output"]
    assert result.stats["candidates"] == 12 and len(rejected) == 12
    assert {q["reason"] for q in rejected} <= {UNPARSABLE_JSON, "malformed_output"}
    assert all(isinstance(q["raw"], str) for q in rejected)
    assert len(triplets) == 6 and all(t["editor"] == "rules" and t["fallback"] for t in triplets)
    assert result.stats["fallbacks"] == 6 and result.stats["editors"] == {"rules": 6}
    # each candidate counts under the principle it was asked for; none passed validation
    assert sum(result.stats["candidates_by_principle"].values()) == 12
    assert set(result.stats["acceptance_by_principle"]) <= {"content", "attribute", "spatial", "contextual"}
    assert set(result.stats["acceptance_by_principle"].values()) == {0.0}
    # requests named a principle the caption has material for; nothing passed, so nothing was verified
    assert sum(result.stats["requested_by_principle"].values()) == 12 and result.stats["verify"] == {}
    mix = result.stats["principle_mix"]
    assert set(mix) == {"content", "attribute", "spatial", "contextual"}
    assert {p: m["requested"] for p, m in mix.items() if m["requested"]} == result.stats["requested_by_principle"]
    assert sum(m["accepted"] for m in mix.values()) == 6 and all(m["configured_share"] == 0.25 for m in mix.values())
    assert sum(m["realised_share"] for m in mix.values()) == pytest.approx(1.0, abs=1e-3)
    stats_file = json.loads((tmp_path / "neg" / "stats.json").read_text())
    assert stats_file["principle_mix"] == mix and "no_edit_by_principle" in stats_file


def test_openai_editor_against_a_local_server(tmp_path: Path, tiny_llm: str) -> None:

    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(4))), tmp_path / "in.parquet")
    with ChatServer(tiny_llm) as server:
        result = run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.editor=openai",
                                       f"negatives.llm.base_url={server.url}", "negatives.llm.model=tiny-chat",
                                       "negatives.llm.max_new_tokens=12", "negatives.retries=1"))
        assert server.requests == 8  # 4 captions x (1 + 1 retry), every one really generated
    assert result.stats["candidates"] == 8 and result.stats["triplets"] == 4
    rejected = [q for q in read_dir(str(tmp_path / "neg" / "quarantine")) if q["stage"] == "editor_output"]
    assert len(rejected) == 8 and all(q["raw"] is not None for q in rejected)


def test_vllm_processor_config_builds_without_vllm(tmp_path: Path) -> None:
    from tpo_ray.negatives.editors.ray_llm import vllm_processor_config

    cfg = load_config(None, ["negatives.editor=vllm", "negatives.llm.model=/models/qwen2.5-7b-instruct",
                             "negatives.llm.tensor_parallel_size=2", "negatives.llm.concurrency=4",
                             "negatives.llm.engine_kwargs={max_model_len: 2048}"])
    pc = vllm_processor_config(cfg.negatives)
    assert pc.model_source == "/models/qwen2.5-7b-instruct" and pc.concurrency == 4
    assert pc.engine_kwargs["enable_prefix_caching"] is True and pc.engine_kwargs["tensor_parallel_size"] == 2
    assert pc.engine_kwargs["max_model_len"] == 2048 and pc.should_continue_on_error is True


@pytest.mark.gpu
def test_vllm_editor_end_to_end_on_gpu(tmp_path: Path) -> None:
    import os

    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    model = os.environ.get("TPO_RAY_TEST_LLM")
    if not torch.cuda.is_available() or not model:
        pytest.skip("needs a CUDA GPU, vllm and TPO_RAY_TEST_LLM pointing at a local chat model")
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(64))), tmp_path / "in.parquet")
    result = run_negatives(cfg_for(tmp_path, str(tmp_path / "in.parquet"), None, "negatives.editor=vllm",
                                   f"negatives.llm.model={model}"))
    assert result.stats["rows_accepted"] == 64 and result.stats["editors"].get("vllm", 0) > 0


@pytest.mark.slow
def test_the_job_completes_against_an_endpoint_that_fails_in_every_way(tmp_path: Path) -> None:
    rows = captions(12)  # dog, duck, fox, wolf, bear: valid at once; deer: at the second ask; the rest fail
    source = tmp_path / "in.parquet"
    write_parquet_atomic(pa.Table.from_pylist(rows), source)
    asked: dict[str, int] = {}
    verified: list[str] = []

    def respond(body: dict):
        if "Second caption: " in body["messages"][-1]["content"]:  # the verification pass (negatives.llm.verify)
            verified.append(body["messages"][-1]["content"].split("Second caption: ", 1)[1].split("\n")[0])
            return json.dumps({"answer": "no"})
        caption = body["messages"][1]["content"].split("True caption: ", 1)[1]
        asked[fault_for(caption)] = asked.get(fault_for(caption), 0) + 1
        if fault_for(caption) == "deer" and asked["deer"] == 1:
            return "Sure! Here is the caption: a blue deer"
        return scripted(body)

    captions_by_animal = {fault_for(r["caption"]): r["id"] for r in rows}
    with ChatServer(respond=respond) as server:
        cfg = cfg_for(tmp_path, str(source), None, "negatives.editor=openai", "negatives.llm.model=m",
                      f"negatives.llm.base_url={server.url}", "negatives.retries=2",
                      "negatives.llm.max_request_retries=1", "negatives.shard_size=4", "negatives.llm.batch_size=4",
                      "negatives.principles=[attribute]")  # the scripted answers swap the colour
        result = run_negatives(cfg)
        assert all("response_format" in b for b in server.bodies)
    failing = ["cat", "horse", "bird", "cow", "goat", "sheep"]
    assert asked == {**{a: 1 for a in ("dog", "duck", "fox", "wolf", "bear")}, "deer": 2,
                     **{a: 3 for a in failing}, "bird": 6}  # three candidates, each 503 asked twice (one retry)
    stats = result.stats
    assert stats["rows_in"] == 12 == stats["rows_accepted"] and stats["rows_quarantined"] == 0
    assert stats["candidates"] == 5 + 2 + 3 * 6 and stats["editors"] == {"openai": 6, "rules": 6}
    assert stats["rejected"] == {HTTP_ERROR: 15, UNPARSABLE_JSON: 4}
    assert sum(stats["candidates_by_principle"].values()) == 25 and sum(stats["valid_by_principle"].values()) == 6
    # each of the 6 LLM negatives was put to the same endpoint once, in the pass after it was accepted
    assert sorted(verified) == sorted(f"a blue {a} on the grass" for a in ("dog", "duck", "fox", "wolf", "bear", "deer"))
    assert stats["verify"] == {"no": 6}
    triplets = {t["id"]: t for t in read_dir(str(tmp_path / "neg" / "triplets"))}
    assert triplets[captions_by_animal["deer"]]["attempt"] == 1
    assert all(triplets[captions_by_animal[a]]["fallback"] for a in failing)
    quarantine = read_dir(str(tmp_path / "neg" / "quarantine"))
    horse = [q for q in quarantine if q["id"] == captions_by_animal["horse"]]
    assert len(horse) == 3 and all(q["reason"] == HTTP_ERROR and "Internal Server Error" in q["raw"] for q in horse)
