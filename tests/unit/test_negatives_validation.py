"""Validation of input rows and editor answers, prompts, request building, selection, sources."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.config import LLMSettings
from tpo_ray.data import schema
from tpo_ray.data.sources import UNREADABLE, SourceError, list_input_files, plan_source, read_shard
from tpo_ray.negatives import validation as v
from tpo_ray.negatives.editors.requests import openai_request, openai_response, vllm_request, vllm_response
from tpo_ray.negatives.principles import TEMPLATE_VERSION, build_messages, system_prompt
from tpo_ray.negatives.selection import (
    DUPLICATE_NEGATIVE,
    Candidate,
    ValidationRules,
    select_negatives,
)
from tpo_ray.negatives.shards import stable_seed

CAPTION = "two small red circles on the left of a green field at night"
RULES = ValidationRules(("content", "attribute", "spatial", "contextual"), max_edits=1, max_tokens=77)


def answer(caption: str, principle: str = "attribute", edits=None) -> str:
    return json.dumps({"caption": caption, "principle": principle,
                       "edits": edits if edits is not None else [{"from": "red", "to": "blue"}]})


def check(raw, caption: str = CAPTION, rules: ValidationRules = RULES):
    return rules.check(caption, raw, v.approx_clip_tokens)[1]


def test_accepts_a_minimal_edit_and_tolerates_prose_around_json() -> None:
    good = answer(CAPTION.replace("red", "blue"))
    assert check(good) is None
    assert check(f"Sure! Here it is:\n```json\n{good}\n```") is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json at all", v.UNPARSABLE_JSON),
        ('{"caption": "x", ', v.UNPARSABLE_JSON),
        (None, v.UNPARSABLE_JSON),
        ('{"caption": 3, "principle": "attribute"}', v.MALFORMED_OUTPUT),
        ('{"caption": "a", "principle": "attribute", "edits": [{"from": 1}]}', v.MALFORMED_OUTPUT),
        (answer(CAPTION.upper() + "!"), v.IDENTICAL),
        (answer(CAPTION.replace("two small", "no small")), v.BARE_NEGATION),
        (answer(CAPTION.replace("circles", "circles without a border")), v.BARE_NEGATION),
        (answer(CAPTION.replace("are", "aren't") + " that aren't here"), v.BARE_NEGATION),
        (answer("at night on the left of a green field two small red circles"), v.PARAPHRASE),
        (answer(CAPTION.replace("red", "blue").replace("left", "right")), v.OVER_BUDGET),
        (answer(CAPTION.replace("red", "blue"), edits=[{"from": "a", "to": "b"}] * 2), v.OVER_BUDGET),
        (answer(CAPTION.replace("red", "blue " + "very " * 80)), v.OVER_BUDGET),
        (answer(CAPTION.replace("red", "blue"), principle="style"), v.WRONG_PRINCIPLE),
    ],
)
def test_each_rejection_reason(raw, reason: str) -> None:
    assert check(raw) == reason


def test_too_long_with_a_larger_budget() -> None:
    rules = ValidationRules(("attribute",), max_edits=3, max_tokens=20)
    assert check(answer(CAPTION.replace("red", "blue and " + "green " * 10)), rules=rules) == v.TOO_LONG


def test_principle_outside_the_requested_subset_is_rejected() -> None:
    rules = ValidationRules(("content", "attribute", "contextual"), 1, 77)  # "no spatial" ablation
    assert check(answer(CAPTION.replace("left", "right"), principle="spatial"), rules=rules) == v.WRONG_PRINCIPLE


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"caption": "a dog"}, v.MISSING_ID),
        ({"id": "  ", "caption": "a dog"}, v.MISSING_ID),
        ({"id": "a"}, v.MISSING_CAPTION),
        ({"id": "a", "caption": None}, v.MISSING_CAPTION),
        ({"id": "a", "caption": 42}, v.NON_STRING_CAPTION),
        ({"id": "a", "caption": "   "}, v.EMPTY_CAPTION),
        ({"id": "a", "caption": "word " * 100}, v.CAPTION_TOO_LONG),
        ({"id": 7, "caption": "a red dog"}, None),
    ],
)
def test_input_validation(row, reason) -> None:
    assert v.validate_input(row, 77, v.approx_clip_tokens) == reason


def test_clip_token_estimate_counts_words_and_punctuation() -> None:
    assert v.approx_clip_tokens("a red dog, running.") == 6 + 2


@pytest.mark.parametrize("text", ["🐶🐶🐶 a dog", "一只红色的狗在草地上奔跑", "Москва зимой", "naïve résumé", "!!!???",
                                  "🏳️\u200d🌈 flag", "a red dog, running."])
def test_clip_token_estimate_never_undercounts_emoji_cjk_or_punctuation(text: str) -> None:
    """Checked against the real SD1.5 CLIP tokenizer: an undercount would let a caption past 77 tokens."""
    real = v.tokenizer_counter(str(Path(__file__).parents[1] / "assets/sd-configs/sd15/tokenizer"))
    assert v.approx_clip_tokens(text) >= real(text)


def test_a_cjk_caption_over_the_limit_is_refused_without_a_tokenizer() -> None:
    caption = "一只红色的狗在草地上奔跑" * 3  # 36 characters, 90 real CLIP tokens; the old estimate said 3
    assert v.validate_input({"id": "x", "caption": caption}, 77, v.approx_clip_tokens) == v.CAPTION_TOO_LONG


def test_real_clip_tokenizer_counter(tmp_path: Path) -> None:
    from tpo_ray.models.tokenizer import build_byte_tokenizer

    build_byte_tokenizer().save_pretrained(tmp_path)
    count = v.tokenizer_counter(str(tmp_path))
    assert count("ab c") == 3 + 2  # byte vocabulary: one token per character


def test_prompt_is_versioned_and_shares_its_prefix() -> None:
    a = build_messages("a red dog", "attribute", 1)
    b = build_messages("two cats", "spatial", 1)
    assert a[0] == b[0] and a[0]["role"] == "system"  # identical system prompt: prefix caching applies
    assert TEMPLATE_VERSION == "edit_v2"
    for principle in ("content", "attribute", "spatial", "contextual"):
        assert f"- {principle}:" in a[0]["content"]
    assert "at most 2 small factual edit" in system_prompt(2)
    assert a[1]["content"].endswith("True caption: a red dog") and "Principle: attribute" in a[1]["content"]
    assert '"edits": [{"from"' in a[0]["content"]


def request_row() -> dict:
    return {schema.ID: "r1", schema.CAPTION: "a red dog", schema.SHARD: 0, schema.ROW: 3,
            schema.NEGATIVE_INDEX: 0, schema.ATTEMPT: 1, schema.REQUESTED_PRINCIPLE: "attribute", schema.SEED: 99}


def test_vllm_request_and_response() -> None:
    llm = LLMSettings(model="/models/qwen", temperature=0.5, max_new_tokens=64).model_dump()
    req = vllm_request(request_row(), llm=llm, max_edits=1)
    assert req["sampling_params"] == {"temperature": 0.5, "top_p": 0.95, "max_tokens": 64, "seed": 99}
    assert req["messages"][1]["content"].endswith("a red dog")
    out = vllm_response({**req, "generated_text": '{"caption": "a blue dog"}'})
    assert out[schema.RAW_OUTPUT] == '{"caption": "a blue dog"}' and "messages" not in out
    assert out[schema.ROW] == 3 and out[schema.EDITOR_REASON] is None


def test_openai_request_and_response_including_errors() -> None:
    llm = LLMSettings(model="served-name", base_url="http://h/v1").model_dump()
    req = openai_request(request_row(), llm=llm, max_edits=2)
    assert req["payload"]["model"] == "served-name" and req["payload"]["seed"] == 99
    assert "at most 2" in req["payload"]["messages"][0]["content"]
    ok = openai_response({**req, "http_response": {"choices": [{"message": {"content": "hi"}}]}})
    assert ok[schema.RAW_OUTPUT] == "hi"
    empty = openai_response({**req, "http_response": {"choices": []}})
    assert empty[schema.RAW_OUTPUT] is None and empty[schema.EDITOR_REASON] is None  # rejected as unparsable
    for broken in ({"error": "overloaded"}, None):  # error bodies keep what the endpoint said
        answer = openai_response({**req, "http_response": broken})
        assert answer[schema.EDITOR_REASON] == v.HTTP_ERROR and answer[schema.RAW_OUTPUT] == json.dumps(broken)


def cand(k: int, attempt: int, raw: str | None, caption: str = CAPTION) -> Candidate:
    proposal, reason = RULES.check(caption, raw, v.approx_clip_tokens)
    return Candidate(k, attempt, seed=10 * k + attempt, raw=raw, reason=reason, proposal=proposal)


def test_selection_takes_first_valid_attempt_and_keeps_rejections() -> None:
    cands = [cand(0, 1, answer(CAPTION.replace("red", "blue"))), cand(0, 0, "garbage"),
             cand(0, 2, answer(CAPTION.replace("red", "yellow"), edits=[{"from": "red", "to": "yellow"}]))]
    sel = select_negatives(CAPTION, cands, n=1, rules=RULES, count_tokens=v.approx_clip_tokens, fallback=None,
                           fallback_seed=lambda k, j: 0)
    assert [a.negative for a in sel.accepted] == [CAPTION.replace("red", "blue")]
    assert sel.accepted[0].attempt == 1 and not sel.accepted[0].fallback
    assert [c.reason for c in sel.rejected] == [v.UNPARSABLE_JSON]  # attempt 2 was valid, just not needed


def test_selection_falls_back_and_avoids_duplicate_negatives() -> None:
    same = answer(CAPTION.replace("red", "blue"))
    cands = [cand(0, 0, same), cand(1, 0, same), cand(2, 0, "nope")]
    calls = []

    def fallback(caption: str, seed: int):
        calls.append(seed)
        return answer(caption.replace("left", "right"), principle="spatial", edits=[{"from": "left", "to": "right"}]), None

    sel = select_negatives(CAPTION, cands, n=3, rules=RULES, count_tokens=v.approx_clip_tokens, fallback=fallback,
                           fallback_seed=lambda k, j: 100 * k + j)
    negs = [a.negative for a in sel.accepted]
    assert len(negs) == len(set(negs)) == 2  # the fallback's one answer is used once
    assert sel.accepted[1].fallback and sel.accepted[1].principle == "spatial"
    assert {c.reason for c in sel.rejected} == {DUPLICATE_NEGATIVE, v.UNPARSABLE_JSON}
    assert calls[:1] == [100]


def test_stable_seed_is_stable_and_31_bit() -> None:
    assert stable_seed(0, "a", 1) == stable_seed(0, "a", 1) != stable_seed(0, "a", 2)
    assert 0 <= stable_seed("x") < 2**31


# ------------------------------------------------------------------------------ sources
def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parquet_plan_shards_and_duplicates(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(10)] + ["r3", "r0"]
    pq.write_table(pa.table({"id": ids, "caption": ["a red dog"] * 12}), tmp_path / "a.parquet", row_group_size=5)
    plan = plan_source(str(tmp_path / "a.parquet"), shard_size=5)
    assert [(s.start, s.stop, s.first_row) for s in plan.shards] == [(0, 5, 0), (5, 10, 5), (10, 12, 10)]
    assert plan.duplicate_rows == frozenset({10, 11})
    assert [r["id"] for r in read_shard(plan.shards[1])] == [f"r{i}" for i in range(5, 10)]


def test_jsonl_plan_reads_byte_ranges_and_marks_bad_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"r{i}", "caption": "a red dog"}) for i in range(5)]
    lines.insert(2, "{broken json")
    lines.insert(4, "")
    lines.append("[1, 2]")
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    plan = plan_source(str(path), shard_size=3)
    rows = [r for s in plan.shards for r in read_shard(s)]
    assert len(rows) == plan.num_rows == 7
    assert [r.get("id") for r in rows] == ["r0", "r1", None, "r2", "r3", "r4", None]
    assert rows[2][UNREADABLE] == "{broken json" and rows[6][UNREADABLE] == "[1, 2]"


def test_hf_datasets_folder(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"id": ["a", "b", "c"], "caption": ["x", "y", "z"]}).save_to_disk(tmp_path / "ds")
    fmt, files = list_input_files(str(tmp_path / "ds"))
    assert fmt == "hf" and files
    plan = plan_source(str(tmp_path / "ds"), shard_size=2)
    assert [r["id"] for s in plan.shards for r in read_shard(s)] == ["a", "b", "c"]


def test_bad_inputs_fail_fast_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        plan_source(str(tmp_path / "missing.parquet"), 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no files"):
        plan_source(str(tmp_path / "empty"), 10)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match=r"bad.parquet: not a readable parquet file"):
        plan_source(str(bad), 10)
    write_jsonl(tmp_path / "blank.jsonl", [""])
    with pytest.raises(SourceError, match="has no rows"):
        plan_source(str(tmp_path / "blank.jsonl"), 10)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", ['{"id": 1}'])
    pq.write_table(pa.table({"id": ["x"]}), mixed / "b.parquet")
    with pytest.raises(SourceError, match="mixes parquet and JSONL"):
        plan_source(str(mixed), 10)


def test_an_answer_under_another_principle_than_the_one_requested_is_rejected() -> None:
    from tpo_ray.negatives.shards import validate_batch

    answer = {"caption": "a red cat", "principle": "content", "edits": [{"from": "dog", "to": "cat"}]}
    rows = [{**request_row(), schema.REQUESTED_PRINCIPLE: asked, schema.RAW_OUTPUT: json.dumps(answer),
             schema.EDITOR_REASON: None} for asked in ("attribute", "content", None)]
    out = validate_batch(pa.Table.from_pylist(rows), principles=["content", "attribute"], max_edits=1,
                         max_tokens=77, tokenizer=None)
    assert out.column(schema.REASON).to_pylist() == [v.PRINCIPLE_MISMATCH, None, None]  # None: the editor picks
    assert out.column(schema.NEGATIVE).to_pylist() == [None, "a red cat", "a red cat"]


@pytest.mark.parametrize(("caption", "negative", "reason"), [
    ("a man in a t-shirt", "a man in a t shirt", v.IDENTICAL),  # a hyphen changes no fact
    ("a black-and-white cat", "a black and white cat", v.IDENTICAL),
    ("a smoking area", "a no-smoking area", v.BARE_NEGATION),
    ("a black-and-white cat", "a white-and-black cat", v.PARAPHRASE),
    ("a dog on the grass", "a dog on the dry-brown-patchy-muddy-overgrown grass", v.OVER_BUDGET),
])
def test_hyphenated_words_are_read_word_by_word(caption: str, negative: str, reason: str) -> None:
    assert check(answer(negative), caption) == reason
