"""LLM requests fit the caption (issue 24, item 3) and the verification pass (item 2).

- The principle asked for is drawn among those the caption has material for, by the configured weights.
- An answer may say that no edit is possible; the job records it as `no_edit_possible` and asks again.
- With `negatives.llm.verify`, the chosen negative is put to the same engine; `yes` rejects it as
  `still_true`, an unparsable answer keeps it and is counted; with verify off no such request is sent.
- stats.json reports the realised principle mix against the requested (or configured) one.

The job's pass loop runs with a scripted engine in place of Ray (as in test_llm_editor_robust.py).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest

from tests.helpers.scripted_llm import captions, good_answer
from tpo_ray.config import NegativesConfig, load_config
from tpo_ray.data import schema
from tpo_ray.data.io import read_parquet, write_parquet_atomic
from tpo_ray.data.sources import plan_source
from tpo_ray.negatives import principles as pr
from tpo_ray.negatives.editors.requests import (
    KIND,
    VERIFY,
    VERIFY_MAX_TOKENS,
    VERIFY_NEGATIVE,
    answer_schema,
    openai_request,
    verdict_schema,
    vllm_request,
)
from tpo_ray.negatives.editors.rules_stage import rules_edit_batch
from tpo_ray.negatives.job import ShardCollector
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.quality import aggregate_stats, mix_line, principle_mix
from tpo_ray.negatives.selection import NO_EDIT_POSSIBLE, STILL_TRUE, ValidationRules, no_edit_answer, parse_verdict
from tpo_ray.negatives.shards import editor_request, finalize_shard, shard_requests, validate_batch
from tpo_ray.progress import Progress

ALL = ("content", "attribute", "spatial", "contextual")


# ------------------------------------------------------------------------------- material detection
@pytest.fixture(params=["installed", "no_wordnet"])
def wordnet_state(request, monkeypatch):
    """Detection works with WordNet (where helper B's module is installed) and without it."""
    if request.param == "no_wordnet":
        monkeypatch.setattr(pr, "wordnet_adapter", lambda: None)
    pr.caption_material.cache_clear()
    yield request.param
    pr.caption_material.cache_clear()


def test_a_baby_crawls_has_no_contextual_material(wordnet_state) -> None:
    found = pr.caption_material("A baby crawls")
    assert "contextual" not in found
    assert {"content", "spatial"} <= found  # a baby (noun), crawls (a verb: dynamic)


def test_a_red_car_on_the_beach_at_night_has_all_four(wordnet_state) -> None:
    assert pr.caption_material("a red car on the beach at night") == frozenset(ALL)


def test_place_prepositions_are_spatial_material_even_outside_the_lexicon(wordnet_state) -> None:
    assert "spatial" in pr.caption_material("a zorbling beside a blorp")  # made-up nouns, a relation
    assert "spatial" not in pr.caption_material("a zorbling")


def test_part_of_speech_material_with_a_scripted_tagger() -> None:
    tags = {"baby": {"noun", "verb"}, "crawls": {"noun", "verb"}, "shiny": {"adj"}, "dog": {"noun", "verb"},
            "beach": {"noun", "verb"}, "runs": {"noun", "verb"}}
    tagger = lambda w: frozenset(tags.get(w, ()))  # noqa: E731
    place = lambda w: w == "beach"  # noqa: E731
    assert pr.pos_material(["a", "baby", "crawls"], tagger, place) == {"content", "spatial"}
    assert pr.pos_material(["a", "shiny", "dog"], tagger, place) == {"content", "attribute"}  # "dog" opens no verb
    assert pr.pos_material(["the", "dog", "runs", "on", "the", "beach"], tagger, place) == {
        "content", "spatial", "contextual"}
    assert pr.pos_material(["two", "dogs"], tagger, place) == set()  # unknown to the tagger: nothing claimed


# ------------------------------------------------------------------------------------------ the draw
def draws(material, weights=None, n=4000) -> Counter:
    return Counter(pr.pick_principle(ALL, weights, random.Random(seed), material) for seed in range(n))


def test_the_draw_never_asks_for_a_principle_without_material() -> None:
    got = draws(pr.caption_material("A baby crawls"))
    assert "contextual" not in got and got["content"] > 0 and got["spatial"] > 0


def test_the_draw_honours_the_weights_among_fitting_principles() -> None:
    weights = {"content": 3.0, "attribute": 1.0, "spatial": 1.0, "contextual": 1.0}
    got = draws({"content", "spatial"}, weights)
    assert set(got) == {"content", "spatial"}
    assert got["content"] / sum(got.values()) == pytest.approx(0.75, abs=0.03)
    zero = {"content": 0.0, "attribute": 1.0, "spatial": 1.0, "contextual": 1.0}
    assert set(draws({"content", "spatial"}, zero)) == {"spatial"}  # weight 0 is never drawn, material or not


def test_no_fitting_material_falls_back_to_the_configured_draw() -> None:
    assert set(draws(frozenset())) == set(ALL)
    assert set(draws(None)) == set(ALL)
    weights = {"content": 0.0, "attribute": 1.0, "spatial": 1.0, "contextual": 1.0}
    assert set(draws({"content"}, weights)) == {"attribute", "spatial", "contextual"}


def test_job_requests_for_a_caption_without_context_never_ask_for_contextual() -> None:
    ncfg = NegativesConfig()
    asked = Counter(editor_request(ncfg, {schema.ID: f"r{i}", schema.CAPTION: "A baby crawls", schema.ROW: i}, 0, 0, 0,
                                   True)[schema.REQUESTED_PRINCIPLE] for i in range(400))
    assert "contextual" not in asked and asked["content"] > 100 and asked["spatial"] > 100


# ----------------------------------------------------------------------------------- no edit possible
NO_EDIT = json.dumps({"no_edit": True, "caption": "", "principle": "contextual", "edits": []})


def test_the_schema_and_the_instruction_allow_no_edit() -> None:
    jsonschema.validate(json.loads(NO_EDIT), answer_schema("contextual", 1))
    system = pr.build_messages("A baby crawls", "contextual", 1)[0]["content"]
    assert '"no_edit": true' in system and "do not invent" in system
    assert pr.TEMPLATE_VERSION == "edit_v2" and load_config(None, []).negatives.llm.template_version == "edit_v2"


def test_a_no_edit_answer_is_its_own_reason_not_a_malformed_one() -> None:
    rules = ValidationRules(ALL, 1, 77)
    assert no_edit_answer("Sure: " + NO_EDIT) and not no_edit_answer(NO_EDIT.replace("true", "false"))
    assert rules.check("A baby crawls", NO_EDIT, len, "contextual") == (None, NO_EDIT_POSSIBLE)
    answer = {"no_edit": False, **json.loads(good_answer("a red dog", "attribute"))}
    proposal, reason = rules.check("a red dog", json.dumps(answer), len, "attribute")
    assert reason is None and proposal.negative == "a blue dog"  # no_edit: false reads as a normal answer
    empty = json.dumps({**answer, "edits": []})  # what the schema allows, for a no-edit answer only
    assert rules.check("a red dog", empty, len, "attribute")[1] in ("edits_mismatch", "malformed_output")


# ------------------------------------------------------------------------------------ verification
@pytest.mark.parametrize(("raw", "verdict"), [
    ("yes", "yes"), ("Yes.", "yes"), ("YES", "yes"), ("I think yes, it could.", "yes"), ('"yes"', "yes"),
    ('{"answer": "yes"}', "yes"), ("no", "no"), ("No, the dog is black.", "no"), ("NO", "no"), ('"no"', "no"),
    ('{"answer": "no"}', "no"), ("Nope", "no"), ("Yes or no? No.", "no"), ("", "unparsable"),
    ("maybe", "unparsable"), ("Not sure", "unparsable"), (None, "unparsable"), ("It depends.", "unparsable"),
])
def test_verification_answers_are_read_by_their_first_yes_or_no(raw, verdict) -> None:
    assert parse_verdict(raw) == verdict


def verify_row() -> dict:
    return {schema.ID: "r1", schema.CAPTION: "a red dog", schema.SHARD: 0, schema.ROW: 3, schema.NEGATIVE_INDEX: 0,
            schema.ATTEMPT: 1, schema.REQUESTED_PRINCIPLE: "attribute", schema.SEED: 7, KIND: VERIFY,
            VERIFY_NEGATIVE: "a blue dog"}


def test_verification_requests_are_short_greedy_and_name_both_captions() -> None:
    req = vllm_request(verify_row(), llm={"model": "m", "temperature": 0.9}, max_edits=1, guided_json=True)
    sampling = req["sampling_params"]
    assert (sampling["temperature"], sampling["max_tokens"]) == (0.0, VERIFY_MAX_TOKENS)
    assert json.loads(sampling["structured_outputs"]["json"]) == verdict_schema(False)
    text = req["messages"][-1]["content"]
    assert "First caption: a red dog" in text and "Second caption: a blue dog" in text
    assert text.endswith("Could this second caption still describe the image of the first? Answer yes or no.")
    payload = openai_request(verify_row(), llm={"model": "m"}, max_edits=1, guided_json=True)["payload"]
    assert payload["max_tokens"] == VERIFY_MAX_TOKENS and payload["temperature"] == 0.0
    shape = json.loads(payload["response_format"])["json_schema"]["schema"]
    jsonschema.validate({"answer": "no"}, shape)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": "perhaps"}, shape)


def test_edit_and_verification_requests_share_a_block_intact() -> None:
    """Ray Data holds a block's rows in one Arrow struct per column: the two kinds' schemas travel as
    text, so neither gains the other's properties (or fails to unify, as nested dicts did)."""
    from ray.data._internal.arrow_block import ArrowBlockBuilder

    from tpo_ray.negatives.editors.ray_llm import request_body

    edit = {**verify_row(), KIND: "edit", VERIFY_NEGATIVE: None, schema.ROW: 2}
    for build, read in ((openai_request, lambda out: json.loads(out["payload"]["response_format"])["json_schema"]["schema"]),
                        (vllm_request, lambda out: json.loads(out["sampling_params"]["structured_outputs"]["json"]))):
        sent = [build(r, llm={"model": "m"}, max_edits=1, guided_json=True) for r in (edit, verify_row())]
        builder = ArrowBlockBuilder()
        for r in sent:
            builder.add(r)
        got = builder.build().to_pylist()
        assert read(got[0]) == answer_schema("attribute", 1)
        assert read(got[1]) in (verdict_schema(True), verdict_schema(False))
    body = json.loads(request_body(json.dumps(got_payload := sent_payload(edit))))
    assert body["response_format"] == json.loads(got_payload["response_format"]) and body["seed"] == 7


def sent_payload(row: dict) -> dict:
    return openai_request(row, llm={"model": "m"}, max_edits=1, guided_json=True)["payload"]


# --------------------------------------------------------------- the job's passes, scripted engine
class ScriptedEditor:
    name, model, chooses_principle = "openai", "m", True

    def __init__(self, attempts: int, verifies: bool) -> None:
        self.attempts, self.verifies = attempts, verifies


def setup(tmp_path: Path, rows: list[dict], *overrides: str):
    source = tmp_path / "in.parquet"
    write_parquet_atomic(pa.Table.from_pylist(rows), source)
    cfg = load_config(None, [f"output_dir={tmp_path}", f"negatives.input={source}", f"negatives.output={tmp_path / 'neg'}",
                             "tracking.enabled=false", "negatives.editor=openai", "negatives.llm.model=m",
                             "negatives.llm.base_url=http://127.0.0.1:9/v1", "negatives.principles=[content,attribute]",
                             *overrides])
    return cfg, plan_source(str(source), cfg.negatives.shard_size), OutputLayout(str(tmp_path / "neg"))


def run_job(tmp_path: Path, engine, *, verify: bool, rows: list[dict] | None = None, overrides=()):
    """The job's pass loop with `engine(request row) -> raw answer`; returns (shard stats, requests seen)."""
    cfg, plan, layout = setup(tmp_path, rows or captions(6), *overrides)
    editor = ScriptedEditor(1 + cfg.negatives.retries, verify)
    collector = ShardCollector(cfg, layout, editor, [s.index for s in plan.shards], Progress(plan.num_rows, "c", "n"),
                               {s.index: s.num_rows for s in plan.shards}, plan.columns)
    tables = [shard_requests({"spec": s.to_dict(), "duplicates": []}, cfg=cfg.negatives.model_dump(mode="json"),
                             root=layout.root, attempts=1, chooses_principle=True, columns=plan.columns)
              for s in plan.shards]
    seen: list[dict] = []
    while tables:
        for t in tables:
            rows_in = t.to_pylist()
            seen += rows_in
            answered = [{**r, schema.RAW_OUTPUT: engine(r), schema.EDITOR_REASON: None} for r in rows_in]
            if answered:
                collector.add(validate_batch(pa.Table.from_pylist(answered), principles=list(ALL), max_edits=1,
                                             max_tokens=77, tokenizer=None))
        tables = [read_parquet(f) for f in collector.end_pass()]
    return aggregate_stats(collector.done), seen, layout


def edit_answer(r: dict) -> str:
    """A valid edit of "a red <animal> on the grass" under the requested principle (the job's tests ask
    for content and attribute only): the animal becomes a robot, or red becomes blue."""
    caption, principle = r[schema.CAPTION], r[schema.REQUESTED_PRINCIPLE]
    if principle == "attribute":
        return good_answer(caption, principle)
    animal = caption.split()[2]
    return json.dumps({"no_edit": False, "caption": caption.replace(animal, "robot"), "principle": principle,
                       "edits": [{"from": animal, "to": "robot"}]})


def engine_with(verdict_for) -> callable:
    """Edit requests get `edit_answer`; verify requests answer `verdict_for(row)`."""
    def engine(r: dict) -> str:
        return verdict_for(r) if r[KIND] == VERIFY else edit_answer(r)
    return engine


def test_verify_off_sends_no_verification_request(tmp_path: Path) -> None:
    stats, seen, _ = run_job(tmp_path, engine_with(lambda r: "yes"), verify=False)
    assert {r[KIND] for r in seen} == {"edit"} and len(seen) == 6
    assert stats["verify"] == {} and stats["triplets"] == 6 and stats["fallbacks"] == 0


def test_verify_yes_rejects_as_still_true_and_asks_again(tmp_path: Path) -> None:
    first_attempt_yes = lambda r: "Yes." if r[schema.ATTEMPT] == 0 else "No, the dog is not blue."  # noqa: E731
    stats, seen, layout = run_job(tmp_path, engine_with(first_attempt_yes), verify=True)
    kinds = Counter((r[KIND], r[schema.ATTEMPT]) for r in seen)
    # each caption: edit 0, verify 0 (yes), edit 1, verify 1 (no)
    assert kinds == {("edit", 0): 6, ("verify", 0): 6, ("edit", 1): 6, ("verify", 1): 6}
    assert stats["rejected"] == {STILL_TRUE: 6} and stats["verify"] == {"yes": 6, "no": 6}
    assert stats["triplets"] == 6 and stats["fallbacks"] == 0
    quarantined = [r for f in sorted(Path(layout.root, "quarantine").glob("*.parquet")) for r in read_parquet(str(f)).to_pylist()]
    assert Counter(q[schema.REASON] for q in quarantined) == {STILL_TRUE: 6}
    triplets = [r for f in sorted(Path(layout.root, "triplets").glob("*.parquet")) for r in read_parquet(str(f)).to_pylist()]
    assert {t[schema.ATTEMPT] for t in triplets} == {1}


def test_an_unparsable_verdict_keeps_the_negative_and_is_counted(tmp_path: Path) -> None:
    stats, seen, _ = run_job(tmp_path, engine_with(lambda r: "It is hard to tell."), verify=True)
    assert Counter(r[KIND] for r in seen) == {"edit": 6, "verify": 6}
    assert stats["verify"] == {"unparsable": 6} and stats["triplets"] == 6 and stats["rejected"] == {}


def test_no_edit_answers_are_recorded_and_asked_again(tmp_path: Path) -> None:
    def engine(r: dict) -> str:
        if r[KIND] == VERIFY:
            return "no"
        if r[schema.ATTEMPT] == 0:
            return json.dumps({"no_edit": True, "caption": "", "principle": r[schema.REQUESTED_PRINCIPLE], "edits": []})
        return edit_answer(r)

    stats, seen, layout = run_job(tmp_path, engine, verify=True)
    assert stats["rejected"] == {NO_EDIT_POSSIBLE: 6} and stats["triplets"] == 6 and stats["fallbacks"] == 0
    assert sum(stats["no_edit_by_principle"].values()) == 6
    assert sum(stats["requested_by_principle"].values()) == 12  # two edit requests per caption
    quarantined = [r for f in sorted(Path(layout.root, "quarantine").glob("*.parquet")) for r in read_parquet(str(f)).to_pylist()]
    assert [q[schema.REASON] for q in quarantined] == [NO_EDIT_POSSIBLE] * 6
    assert all(q[schema.STAGE] == "editor_output" for q in quarantined)


# ------------------------------------------------------------------------------- the principle mix
def test_the_mix_reports_requested_and_realised_shares(tmp_path: Path) -> None:
    stats, seen, _ = run_job(tmp_path, engine_with(lambda r: "no"), verify=False)
    mix = principle_mix(stats, ["content", "attribute"], None)
    asked = Counter(r[schema.REQUESTED_PRINCIPLE] for r in seen)
    assert set(asked) == {"content", "attribute"}
    for p in ("content", "attribute"):
        assert mix[p]["requested"] == asked[p] and mix[p]["accepted"] == asked[p]  # every request answered
        assert mix[p]["requested_share"] == round(asked[p] / 6, 4) == mix[p]["realised_share"]
        assert mix[p]["configured_share"] == 0.5 and mix[p]["no_edit"] == 0
    assert mix_line(mix).startswith("principle mix realised/requested: content ")


def test_the_rules_editor_mix_is_reported_against_the_configured_weights(tmp_path: Path) -> None:
    """The rules editor, through the job's pure functions: requests, its batch edit, validation, a shard."""
    rows = [{"id": f"c{i}", "caption": c} for i, c in enumerate(
        ["A baby crawls", "a red car on the beach at night", "two dogs on the grass", "a man rides a horse"] * 3)]
    weights = ["negatives.principle_weights.content=1", "negatives.principle_weights.attribute=1",
               "negatives.principle_weights.spatial=1", "negatives.principle_weights.contextual=2"]
    cfg, plan, layout = setup(tmp_path, rows, "negatives.editor=rules", f"negatives.principles=[{','.join(ALL)}]",
                              *weights)
    n = cfg.negatives
    (spec,) = plan.shards
    requests = shard_requests({"spec": spec.to_dict(), "duplicates": []}, cfg=n.model_dump(mode="json"),
                              root=layout.root, attempts=1, chooses_principle=False, columns=plan.columns)
    edited = rules_edit_batch(requests, list(n.principles), n.principle_weights, n.max_edits)
    answers = validate_batch(edited, principles=list(n.principles), max_edits=1, max_tokens=77, tokenizer=None)
    stats = aggregate_stats({0: finalize_shard(0, answers, n, layout, "rules", "lexicon", plan.columns)})
    mix = principle_mix(stats, n.principles, n.principle_weights)
    assert [mix[p]["configured_share"] for p in ALL] == [0.2, 0.2, 0.2, 0.4]
    assert all(mix[p]["requested"] == 0 and mix[p]["requested_share"] == 0.0 for p in ALL)  # rules choose
    assert sum(mix[p]["accepted"] for p in ALL) == stats["triplets"] > 0
    assert sum(mix[p]["realised_share"] for p in ALL) == pytest.approx(1.0, abs=1e-3)
    assert mix_line(mix).startswith("principle mix realised/configured: content ")
    assert "contextual " in mix_line(mix) and mix_line(mix).endswith("/0.40")


def test_the_hf_engine_answers_both_kinds_in_one_batch(tmp_path: Path) -> None:
    """One actor, one model: edit rows sampled up to max_new_tokens, verification rows greedy and short,
    answers in the batch's row order."""
    from tpo_ray.models.tiny_llm import save_tiny_chat_model
    from tpo_ray.negatives.editors.hf import HFGenerator

    model = str(save_tiny_chat_model(tmp_path / "tiny-chat"))
    engine = HFGenerator({"model": model, "max_new_tokens": 40, "device": "cpu"}, 1)
    edit = {**verify_row(), KIND: "edit", VERIFY_NEGATIVE: None}
    rows = [edit, verify_row(), {**edit, schema.SEED: 8}, {**verify_row(), schema.ROW: 9}]
    out = engine(pa.Table.from_pylist(rows)).to_pylist()
    assert [r[schema.ROW] for r in out] == [3, 3, 3, 9] and all(r[schema.EDITOR_REASON] is None for r in out)
    assert out[1][schema.RAW_OUTPUT] == out[3][schema.RAW_OUTPUT]  # greedy: the same question, the same answer
    engine.generated_tokens = 0
    engine(pa.Table.from_pylist([rows[1], rows[3]]))
    assert 0 < engine.generated_tokens <= 2 * VERIFY_MAX_TOKENS
    engine.generated_tokens = 0
    engine(pa.Table.from_pylist([rows[0], rows[2]]))
    assert engine.generated_tokens > 2 * VERIFY_MAX_TOKENS
