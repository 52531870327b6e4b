"""The rules editor's lexicon (tpo_ray/negatives/lexicon/lexicon.yaml) and the grammar of its edits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tpo_ray.eval.prompt_sets import load_prompts
from tpo_ray.negatives.editors.rules_stage import RULES_MODEL
from tpo_ray.negatives.lexicon import (LEXICON_VERSION, NOUN_GROUPS, WORD_GROUPS, LexiconError, is_synonym_swap,
                                       lexicon, load_lexicon, parse_lexicon)
from tpo_ray.negatives.rules import checked_edits, find_candidates, rule_edit
from tpo_ray.negatives.validation import Proposal, approx_clip_tokens, validate_proposal

COCO_STYLE = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "coco_style_captions.txt"
COCO_VAL2017 = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "coco_val2017_captions.tsv"
PRINCIPLES = ["content", "attribute", "spatial", "contextual"]


def edits(caption: str, principle: str, seeds: int = 40) -> list:
    out = [rule_edit(caption, principles=[principle], seed=s) for s in range(seeds)]
    assert all(o is not None for o in out), caption
    return out


def negatives(caption: str, principle: str, seeds: int = 40) -> set[str]:
    return {o.negative for o in edits(caption, principle, seeds)}


def raw_lexicon() -> dict:
    return yaml.safe_load(Path(__file__).resolve().parents[2].joinpath(
        "tpo_ray/negatives/lexicon/lexicon.yaml").read_text())


# ----------------------------------------------------------------------------------------- rule families
def test_content_swaps_a_noun_for_one_of_its_category() -> None:
    animals = {s for s, _ in NOUN_GROUPS["animal"]}
    swapped = 0
    for out in edits("a dog sleeping", "content"):
        assert out.negative.endswith(" sleeping") and out.principle == "content"
        if out.negative.split()[0] in ("two", "three"):  # the subject's count: "two dogs sleeping"
            assert out.negative.split()[1] == "dogs", out.negative
            continue
        new = out.negative.split()[1]
        assert new in animals and new != "dog" and not is_synonym_swap("dog", new)
        swapped += 1
    assert swapped


def test_counts_as_digits_and_words_keep_their_form() -> None:
    for out in edits("3 cats on a mat", "content"):
        first = out.negative.split()[0]
        if first != "3":
            assert first.isdigit() and out.negative in (f"{first} cats on a mat", "1 cat on a mat")
    words = set(lexicon().count_words)
    changed = {o.negative.split()[0] for o in edits("two dogs on a mat", "content") if o.edits[0]["from"] == "two"}
    assert changed and changed <= words - {"one", "two"}


def test_a_count_that_changes_number_brings_noun_and_verb_along() -> None:
    outs = {o.negative for o in edits("one dog is on the mat", "content", 80)}
    plural = [n for n in outs if not n.startswith("one ")]
    assert plural and all(n.endswith(" dogs are on the mat") and n.split()[0] in lexicon().count_words for n in plural)
    back = {o.negative for o in edits("two dogs are on the mat", "content", 80)}
    assert "one dog is on the mat" in back


def test_digits_that_are_not_counts_are_left_alone() -> None:
    for caption in ("a clock showing 3 pm", "a sign that says $5", "a man 6 feet tall", "a 1977 Ford truck"):
        assert all(c.options[0][2] != "pm" and not caption[c.start:c.end].isdigit()
                   for c in find_candidates(caption)), caption


def test_attribute_swaps_within_its_group() -> None:
    colors = set(WORD_GROUPS["attribute"]["color"])
    for out in edits("a red car", "attribute"):
        (edit,) = out.edits  # "a red" -> "an orange" carries the article
        assert edit["from"] in ("red", "a red") and edit["to"].split()[-1] in colors
        assert not is_synonym_swap("red", edit["to"])


def test_spatial_relation_swaps_keep_the_frame() -> None:
    assert negatives("a cat to the left of a dog", "spatial") == {"a cat to the right of a dog"}
    for n in negatives("a lamp next to a sofa", "spatial"):
        assert n.startswith("a lamp ") and n.endswith(" a sofa") and "beside" not in n and " near " not in n


def test_places_keep_a_preposition_that_fits() -> None:
    outs = negatives("a dog on the beach", "contextual", 60)
    assert len(outs) >= 3
    places = {p.noun: p for ps in lexicon().places.values() for p in ps}
    for n in outs:
        assert n.startswith("a dog on the "), n
        assert "on" in places[n.removeprefix("a dog on the ")].preps  # never "on the kitchen"
    for n in negatives("a cat in a kitchen", "contextual"):
        assert n.startswith("a cat in ") and "shore" not in n


# --------------------------------------------------------------------------------------------- grammar
def test_a_and_an_follow_the_new_word() -> None:
    seen = set()
    for out in edits("a giraffe on a hill", "content", 200):
        for e in out.edits:
            if e["from"].startswith(("a ", "an ")):
                seen.add(e["to"].split()[0])
        for article, word in zip(out.negative.split(), out.negative.split()[1:]):
            if article in ("a", "an"):
                assert article == ("an" if word[0] in "aeiou" and not word.startswith(("uni", "eu")) else "a"), \
                    out.negative
    assert "an" in seen and seen <= {"an", "two", "three"}  # "a giraffe" -> "an elephant" (or "two giraffes")


def test_plural_nouns_stay_plural() -> None:
    plurals = {p for pairs in NOUN_GROUPS.values() for _, p in pairs if p}
    for n in negatives("several horses grazing", "content"):
        if n.startswith("several "):
            assert n.split()[1] in plurals, n


def test_a_verb_that_takes_no_object_is_kept_where_it_has_one() -> None:
    for caption, verb in (("a man is walking two dogs", "walking"), ("a boy flying a kite", "flying"),
                          ("a kid rolling the ball", "rolling")):
        assert not [c for c in find_candidates(caption) if caption[c.start:c.end] == verb], caption
    walked = negatives("a dog walking on the beach", "spatial")
    assert walked and all(n.startswith("a dog ") and n.endswith(" on the beach") for n in walked)


def test_a_verb_bound_by_an_adjective_and_object_a_plain_object_or_a_direction_is_kept() -> None:
    for caption, verb in (("a man walking big dogs in the park", "walking"), ("kids swimming laps", "swimming"),
                          ("children running to the school bus", "running")):
        assert not [c for c in find_candidates(caption) if caption_at(c, caption) == verb], caption
    assert [c for c in find_candidates("a cat sleeping peacefully") if caption_at(c, "a cat sleeping peacefully")
            == "sleeping"]  # an adverb binds nothing


def test_phrases_that_modify_or_measure_are_kept_and_idioms_are_units() -> None:
    light = "a man standing in the evening light"
    assert not [c for c in find_candidates(light) if "evening" in caption_at(c, light)]
    field = "a bird flying over a field of flowers"
    assert not [c for c in find_candidates(field) if "field" in caption_at(c, field)]
    assert all(" a field of " in n for n in negatives(field, "content"))  # content edits keep the measure
    for out in [rule_edit("a couple walking hand in hand with a dog", seed=s) for s in range(30)]:
        assert out is None or "hand in hand" in out.negative, out


def test_no_word_is_written_twice_and_soccer_is_not_football() -> None:
    for n in negatives("a red and blue car", "attribute"):
        assert n.split()[1] != n.split()[3], n  # never "a red and red car"
    assert "kids playing football" not in negatives("kids playing soccer", "spatial", 80)


def test_a_noun_after_of_is_plural_whatever_verb_follows() -> None:
    plurals = {p for pairs in NOUN_GROUPS.values() for _, p in pairs if p}
    singulars = {s for pairs in NOUN_GROUPS.values() for s, _ in pairs}
    for n in negatives("a herd of sheep is grazing", "content"):
        assert n.split()[3] in plurals, n  # "a herd of cows is grazing", never "a herd of cow"
    for n in negatives("a sheep is grazing", "content"):
        assert n.split()[1] in singulars and n.endswith(" is grazing"), n


def test_words_that_take_no_article_never_follow_a_or_an() -> None:
    no_article = lexicon().no_article
    assert {"noon", "daytime"} <= no_article
    seen = set()
    for out in edits("a sunset behind a barn", "contextual", 80):
        words = out.negative.split()
        seen.add(words[1])
        assert words[1] not in no_article, out.negative
    assert len(seen) > 2
    assert negatives("at noon in a park", "contextual")  # after a preposition they are swapped as usual
    for n in negatives("a cat on a sunny morning", "contextual", 80):  # past an adjective too: never "a sunny noon"
        assert n.split()[-1] not in no_article, n


def test_vehicles_stay_on_land_on_water_or_in_the_air() -> None:
    land = {s for s, _ in NOUN_GROUPS["land_vehicle_compound"]}
    water = {s for s, _ in NOUN_GROUPS["water_vehicle_compound"]}
    for caption, allowed in (("a double decker bus", land), ("a cruise ship", water)):
        for n in negatives(caption, "content"):
            assert n.removeprefix("a ").removeprefix("an ") in allowed, n
    # "tank" is a vehicle and a fish tank: listed as neither, it is never swapped for a car
    assert not [c for c in find_candidates("many fish in a tank") if caption_at(c, "many fish in a tank") == "tank"]


def caption_at(candidate, caption: str) -> str:
    return caption[candidate.start:candidate.end]


def test_measure_words_are_never_swapped() -> None:
    assert not [c for c in find_candidates("a ball of yarn") if caption_at(c, "a ball of yarn") == "ball"]
    for caption, head in (("a bottle of beer", "bottle"), ("a cup of coffee", "cup"), ("a piece of cake", "piece")):
        for out in edits(caption, "content"):  # the measure stays; its count may change ("two bottles of")
            assert out.negative.startswith((f"a {head} of ", f"two {head}s of ", f"three {head}s of ")), out.negative


def test_compounds_are_units() -> None:
    for caption in ("a comic book", "a hot dog", "a teddy bear", "a subway train", "a fire truck"):
        for out in [rule_edit(caption, seed=s) for s in range(30)]:
            if out is None:
                continue
            (edit,) = out.edits
            assert edit["from"].removeprefix("a ").removeprefix("an ") == caption[2:], out  # the whole compound
            vetted = lexicon().substitutes.get(caption[2:])
            # swapped for a compound of its group, or for one of its vetted substitutes ("hot dog" -> "hamburger")
            assert " " in edit["to"].removeprefix("a ").removeprefix("an ") or vetted is not None, out
    assert "bear" not in {o.negative.split()[-1] for o in edits("a teddy bear", "content")}
    assert rule_edit("a yin-yang", seed=0) is None  # a listed compound is never edited


def test_unknown_compound_nouns_are_kept() -> None:
    for caption in ("a candle flame", "a dog bed", "a fire engine"):
        assert not [c for c in find_candidates(caption) if c.principle == "content"], caption


def test_synonyms_are_never_produced() -> None:
    pairs = [("big", "large"), ("car", "automobile"), ("subway train", "subway car"), ("couch", "sofa"),
             ("puppy", "dog"), ("puppies", "dogs"), ("on the beach", "on the shore"), ("boy", "kid"),
             ("on the left of", "on the left side of")]
    assert all(is_synonym_swap(a, b) and is_synonym_swap(b, a) for a, b in pairs)
    assert not is_synonym_swap("dog", "cat") and not is_synonym_swap("big", "small")
    for caption in ("a big couch", "a large dog on a sofa", "a puppy in a subway train", "a small car"):
        for s in range(40):
            for e in rule_edit(caption, seed=s, max_edits=2).edits:
                assert not is_synonym_swap(e["from"], e["to"]), (caption, e)


def test_validation_rejects_a_synonym_only_negative() -> None:
    def check(caption: str, negative: str) -> str | None:
        return validate_proposal(caption, Proposal(negative, "content", []), principles=PRINCIPLES, max_edits=2,
                                 max_tokens=77, count_tokens=approx_clip_tokens)
    assert check("a dog on a couch", "a puppy on a sofa") == "synonym"
    assert check("a dog on a couch", "a cat on a sofa") is None


@pytest.mark.parametrize("prompt_set", ["parti", "t2i_compbench", "styles", str(COCO_STYLE), str(COCO_VAL2017)])
def test_every_rule_edit_passes_validation(prompt_set: str) -> None:
    """What docs/negatives.md claims: every edit of every prompt, 3 seeds, 1 and 2 edits, is accepted."""
    checked = 0
    for caption, out, reason in checked_edits((p.id, p.text) for p in load_prompts(prompt_set)):
        checked += 1
        assert reason is None, (caption, out, reason)
    assert checked >= 300


def test_same_seed_same_edit() -> None:
    caption = "Two dogs running on the beach at sunset next to a red umbrella"
    assert rule_edit(caption, seed="x", max_edits=3) == rule_edit(caption, seed="x", max_edits=3)
    assert len({rule_edit(caption, seed=s, max_edits=3).negative for s in range(20)}) > 10


# -------------------------------------------------------------------------------------------- the data
def test_the_lexicon_version_names_the_editor() -> None:
    from tpo_ray.negatives.wordnet import database_dir

    suffix = "+wordnet" if database_dir() is not None else ""
    assert isinstance(LEXICON_VERSION, int) and RULES_MODEL == f"lexicon-v{LEXICON_VERSION}{suffix}"


def test_a_worker_whose_editor_differs_from_the_jobs_refuses() -> None:
    import pyarrow as pa

    from tpo_ray.data import schema
    from tpo_ray.negatives.editors.rules_stage import rules_edit_batch

    batch = pa.table({schema.CAPTION: ["a red car"], schema.SEED: [0]})
    assert rules_edit_batch(batch, PRINCIPLES, None, 1, expected_model=RULES_MODEL).num_rows == 1
    with pytest.raises(RuntimeError, match="WordNet database on every node"):
        rules_edit_batch(batch, PRINCIPLES, None, 1, expected_model="lexicon-v1")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("version"), "version: expected a positive integer"),
    (lambda d: d["nouns"]["animal"].append("hedgehogg"), "noun 'hedgehogg' has no plural"),
    (lambda d: d["words"]["attribute"]["color"].append("wooden"), "'wooden' is also in words.attribute.color"),
    (lambda d: d["nouns"]["animal"].append("red/reds"), "'red' is also in nouns.animal"),
    (lambda d: d["words"].setdefault("mood", {"x": ["a", "b"]}), "words.mood: unknown principle"),
    (lambda d: d["places"]["nature"].append("inside of the|a beach2"), "places.nature: place"),
    (lambda d: d["synonyms"].append(["alone"]), "synonyms"),
    (lambda d: d.update(extra=1), "unknown keys ['extra']"),
    (lambda d: d["intransitive"].append("movement"), "intransitive: ['movement'] are not groups of `words`"),
    (lambda d: d["no_article"].append("brunch"), "no_article: ['brunch'] are not terms of `words`"),
])
def test_a_bad_entry_is_named(change, message: str) -> None:
    data = copy.deepcopy(raw_lexicon())
    change(data)
    with pytest.raises(LexiconError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_lexicon(data, "lexicon.yaml")


def test_load_lexicon_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "lex.yaml"
    path.write_text("version: 3\nnouns: {pet: [dog/dogs, cat/cats]}\ncounts: {words: [one, two], digits_max: 9}\n")
    lex = load_lexicon(path)
    assert lex.version == 3 and lex.nouns["pet"] == [("dog", "dogs"), ("cat", "cats")]
    path.write_text("version: [\n")
    with pytest.raises(LexiconError, match="not valid YAML"):
        load_lexicon(path)


# ------------------------------------------------------------------------------------------- coverage
# Floors. Real photo captions (COCO val2017) keep issue 24's coverage target, 95%. PartiPrompts' floor is
# 88%: the sense checks refuse on purpose what they cannot edit truly (a politician or writer told only by
# the action, a sculpture -> a relief, hyphenated compounds, unknown verbs after lifeless things), which
# took it from 91.5% to 89.4%; a false negative costs more than a prompt without one.
@pytest.mark.parametrize(("prompt_set", "floor"), [("parti", 0.88), ("t2i_compbench", 0.95), (str(COCO_STYLE), 0.95),
                                                   (str(COCO_VAL2017), 0.95)])
def test_rules_editor_edits_enough_of_real_prompts(prompt_set: str, floor: float) -> None:
    prompts = load_prompts(prompt_set)
    edited = sum(rule_edit(p.text, seed=p.id) is not None for p in prompts)
    assert len(prompts) >= 200 and edited / len(prompts) >= floor, f"{prompt_set}: {edited}/{len(prompts)}"
