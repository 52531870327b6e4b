"""Answer validation judges the edit itself (issue 24): c_w and c_l aligned word by word, the real edits
derived, and each LLM failure the issue lists rejected with its own reason; binding and role swaps kept."""

from __future__ import annotations

import pytest

from tpo_ray.negatives import validation as v
from tpo_ray.negatives.alignment import derive_edits, derived_principle

PRINCIPLES = ("content", "attribute", "spatial", "contextual")


def check(caption: str, negative: str, principle: str, edits: list[tuple[str, str]] | None = None,
          max_edits: int = 1, requested: str | None = None) -> str | None:
    reported = [{"from": a, "to": b} for a, b in edits or []]
    return v.validate_proposal(caption, v.Proposal(negative, principle, reported), principles=PRINCIPLES,
                               max_edits=max_edits, max_tokens=77, count_tokens=v.approx_clip_tokens,
                               requested=requested)


def wordnet_available() -> bool:
    try:
        from tpo_ray.negatives import wordnet
    except ImportError:
        return False
    return wordnet.available()


# ------------------------------------------------------------------------- the LLM failures the issue lists
def test_a_pure_deletion_is_rejected() -> None:
    caption = "A black dog runs on the beach."
    assert check(caption, "A dog runs on the beach.", "attribute", [("black dog", "dog")]) == v.DELETION
    assert check(caption, "A dog runs on the beach.", "attribute") == v.DELETION  # reported or not
    (edit,) = derive_edits(caption, "A dog runs on the beach.")
    assert (edit.kind, edit.source, edit.target) == (v.DELETE, "black", "")


@pytest.mark.parametrize(("caption", "negative", "edits", "added"), [
    ("A dog runs on the beach.", "A dog runs on the beach at night.", [("on the beach", "on the beach at night")],
     "at night"),
    ("A man rides a bike.", "A man rides a bike with a parrot.", [("a bike", "a bike with a parrot")], "with a parrot"),
])
def test_an_added_clause_is_rejected(caption: str, negative: str, edits, added: str) -> None:
    assert check(caption, negative, "contextual", edits) == v.ADDITION
    assert check(caption, negative, "content", edits, max_edits=2) == v.ADDITION
    (edit,) = derive_edits(caption, negative)
    assert (edit.kind, edit.target) == (v.INSERT, added)


@pytest.mark.parametrize(("caption", "negative", "principle", "edits"), [
    ("Two dogs play in a park.", "Zero dogs play in a park.", "content", [("two", "zero")]),
    ("A man rides a bike.", "A man rides a bike missing two wheels.", "attribute", [("bike", "bike missing two wheels")]),
    ("A man rides a bike.", "A man rides a bike lacking a seat.", "attribute", [("bike", "bike lacking a seat")]),
    ("Two dogs play in a park.", "No dogs play in a park.", "content", [("two", "no")]),
    ("A smoking area.", "A no-smoking area.", "attribute", [("smoking", "no-smoking")]),
])
def test_near_negations_are_rejected(caption: str, negative: str, principle: str, edits) -> None:
    assert check(caption, negative, principle, edits) == v.NEGATION


def test_the_negation_reason_keeps_its_former_name() -> None:
    assert v.BARE_NEGATION == v.NEGATION == "negation"


@pytest.mark.skipif(not wordnet_available(), reason="WordNet's database (apt wordnet-base) is not installed")
@pytest.mark.parametrize(("caption", "negative", "principle", "source", "target", "relation"), [
    ("A photo of a dog on a sofa.", "A picture of a dog on a sofa.", "content", "photo", "picture", "synonym"),
    ("A dog jumps over a log.", "A dog leaps over a log.", "spatial", "jumps", "leaps", "synonym"),
    ("A dog sleeps on the porch.", "An animal sleeps on the porch.", "content", "dog", "animal", "hypernym"),
])
def test_synonyms_and_general_words_outside_the_lexicon_are_rejected(caption: str, negative: str, principle: str,
                                                                     source: str, target: str, relation: str) -> None:
    assert v.still_true(source, target) == relation
    (edit,) = derive_edits(caption, negative)
    assert (edit.source.lower(), edit.target.lower()) == (source, target)
    assert check(caption, negative, principle, [(source, target)]) in (v.SYNONYM, v.STILL_TRUE)


def test_a_compatible_relation_or_quantifier_is_still_true() -> None:
    assert check("Several sheep grazing in a field.", "Many sheep grazing in a field.", "content",
                 [("several", "many")]) == v.STILL_TRUE
    assert check("A dog sits next to a bench.", "A dog sits behind a bench.", "spatial",
                 [("next to", "behind")]) == v.STILL_TRUE


def test_a_listed_synonym_swap_keeps_its_reason() -> None:
    assert check("a dog on a couch", "a puppy on a sofa", "content", max_edits=2) == v.SYNONYM


def test_a_head_noun_and_its_modifier_are_two_facts() -> None:
    caption, negative = "A black dog runs on the beach.", "A white cat runs on the beach."
    assert check(caption, negative, "content", [("A black dog", "A white cat")]) == v.OVER_BUDGET
    (edit,) = derive_edits(caption, negative)
    assert (edit.kind, edit.facts, edit.principles) == (v.REPLACE, 2, {"attribute", "content"})
    assert check(caption, negative, "content", [("A black dog", "A white cat")], max_edits=2) is None


@pytest.mark.parametrize("edits", [
    [("dog", "cat")],  # names a change that did not happen
    [("black", "brown")],  # the right word, another replacement
    [("black", "white"), ("beach", "park")],  # one true edit and one invented
    [("a horse", "a cow")],  # words the caption does not have
])
def test_reported_edits_that_do_not_match_the_difference_are_rejected(edits) -> None:
    caption, negative = "A black dog runs on the beach.", "A white dog runs on the beach."
    assert check(caption, negative, "attribute", edits, max_edits=2) == v.EDITS_MISMATCH


@pytest.mark.parametrize("edits", [
    [("black", "white")],
    [("A Black", "a  white")],  # case, article and whitespace may differ
    [("black dog", "white dog")],  # a reported edit may cover more than the change
    [("A black dog runs", "A white dog runs")],
])
def test_reported_edits_that_match_the_difference_are_accepted(edits) -> None:
    assert check("A black dog runs on the beach.", "A white dog runs on the beach.", "attribute", edits) is None


@pytest.mark.parametrize(("caption", "negative", "reported", "derived"), [
    ("A black dog runs on the beach.", "A white dog runs on the beach.", "spatial", "attribute"),  # a color
    ("A dog runs on the beach.", "A dog runs in the desert.", "content", "contextual"),  # a place
    ("A cat to the left of a dog.", "A cat to the right of a dog.", "attribute", "spatial"),  # a relation
    ("Two dogs play in a park.", "Four dogs play in a park.", "attribute", "content"),  # a count
])
def test_a_principle_label_that_does_not_match_what_changed_is_rejected(caption: str, negative: str, reported: str,
                                                                       derived: str) -> None:
    assert derived_principle(caption, negative) == derived
    assert check(caption, negative, reported) == v.PRINCIPLE_MISMATCH
    assert check(caption, negative, derived) is None


def test_the_reported_principle_stands_where_none_can_be_derived() -> None:
    # "beard" and "mustache" are in no lexicon group and are nouns (no principle from the part of speech)
    assert derived_principle("A man with a beard.", "A man with a mustache.") is None
    assert check("A man with a beard.", "A man with a mustache.", "attribute") is None
    assert check("A man with a beard.", "A man with a mustache.", "content") is None


def test_an_answer_under_another_principle_than_requested_is_still_rejected_first() -> None:
    assert check("a red dog", "a red cat", "content", [("dog", "cat")], requested="attribute") == v.PRINCIPLE_MISMATCH
    assert check("a red dog", "a red cat", "content", [("dog", "cat")], requested="content") is None


# ------------------------------------------------------------------------------- binding and role swaps
@pytest.mark.parametrize(("caption", "negative", "principle", "exchanged"), [
    ("A red car and a white sheep.", "A white car and a red sheep.", "attribute", ("red", "white")),
    ("A dog chasing a cat.", "A cat chasing a dog.", "spatial", ("dog", "cat")),
    ("A cat on the left of a dog.", "A dog on the left of a cat.", "spatial", ("cat", "dog")),
    ("A large dog chasing a cat.", "A cat chasing a large dog.", "spatial", ("large dog", "cat")),
])
def test_binding_and_role_swaps_are_one_swap_edit(caption: str, negative: str, principle: str, exchanged) -> None:
    (edit,) = derive_edits(caption, negative)
    assert (edit.kind, edit.principle, edit.facts) == (v.SWAP, principle, 1)
    assert (edit.source, edit.target) == exchanged
    a, b = exchanged
    for edits in ([(a, b), (b, a)], [(caption.rstrip("."), negative.rstrip("."))], []):
        assert check(caption, negative, principle, edits, max_edits=1) is None, edits
        assert check(caption, negative, principle, edits, max_edits=2) is None, edits
    other = "spatial" if principle == "attribute" else "attribute"
    assert check(caption, negative, other) == v.PRINCIPLE_MISMATCH
    assert check(caption, negative, principle, [(a, b)]) == v.EDITS_MISMATCH  # half a swap is not the edit


@pytest.mark.parametrize(("caption", "negative"), [
    ("A dog and a cat.", "A cat and a dog."),  # conjuncts exchanged: the same picture
    ("a black-and-white cat", "a white-and-black cat"),
    ("two small red circles on the left of a green field at night",
     "at night on the left of a green field two small red circles"),  # a clause moved
])
def test_reordered_words_are_a_paraphrase_not_a_swap(caption: str, negative: str) -> None:
    assert check(caption, negative, "spatial") == v.PARAPHRASE


def test_a_swap_of_described_objects_is_attribute_binding_or_a_relation() -> None:
    caption = "A man in a red shirt and a woman in a blue dress."
    negative = "A man in a blue dress and a woman in a red shirt."
    (edit,) = derive_edits(caption, negative)
    assert (edit.kind, edit.principles, edit.source, edit.target) == (v.SWAP, {"attribute", "spatial"}, "red shirt",
                                                                      "blue dress")
    assert check(caption, negative, "attribute") is None and check(caption, negative, "spatial") is None
    assert check(caption, negative, "contextual") == v.PRINCIPLE_MISMATCH


def test_a_swap_reported_in_halves_counts_as_one_reported_edit() -> None:
    assert v.reported_count([{"from": "red", "to": "white"}, {"from": "White", "to": "red"}]) == 1
    assert v.reported_count([{"from": "red", "to": "white"}, {"from": "red", "to": "white"}]) == 2


# ----------------------------------------------------------------------------- ordinary edits still pass
@pytest.mark.parametrize(("caption", "negative", "principle", "edits"), [
    ("A red car parked on the street.", "A blue car parked on the street.", "attribute", [("red", "blue")]),
    ("Two dogs are playing in the snow.", "Three dogs are playing in the snow.", "content", [("two", "three")]),
    ("One dog is sleeping on the mat.", "Two dogs are sleeping on the mat.", "content", [("one dog is", "two dogs are")]),
    ("One dog is sleeping on the mat.", "Two dogs are sleeping on the mat.", "content", [("one", "two")]),
    ("A dog runs on the beach.", "A dog runs in the desert.", "contextual", [("on the beach", "in the desert")]),
    ("A cat to the left of a dog.", "A cat to the right of a dog.", "spatial", [("to the left of", "to the right of")]),
    ("A woman holding an umbrella.", "A woman holding a suitcase.", "content", [("an umbrella", "a suitcase")]),
    ("A train is pulling into the station.", "A train is pulling out of the station.", "spatial", [("into", "out of")]),
    ("A photo of a city street at night.", "A photo of a city street during the day.", "contextual",
     [("at night", "during the day")]),
])
def test_ordinary_good_edits_pass(caption: str, negative: str, principle: str, edits) -> None:
    assert check(caption, negative, principle, edits) is None
    assert len(derive_edits(caption, negative)) == 1


def test_a_place_is_one_edit_and_inflections_are_no_edit() -> None:
    (place,) = derive_edits("A dog runs on the beach.", "A dog runs in the desert.")
    assert (place.kind, place.source, place.target, place.principle) == (v.REPLACE, "on the beach", "in the desert",
                                                                         "contextual")
    (count,) = derive_edits("One dog is on the mat.", "Two dogs are on the mat.")
    assert (count.source, count.target, count.principle) == ("One", "Two", "content")


def test_a_new_setting_brings_its_own_description() -> None:
    # the world's scene grammar changes the background as one fact: "a gray wall" -> "a blue sky"
    caption = "two small red circles on the left of a gray wall at night"
    (edit,) = derive_edits(caption, caption.replace("a gray wall", "a blue sky"))
    assert (edit.facts, edit.principle) == (1, "contextual")
    assert check(caption, caption.replace("a gray wall", "a blue sky"), "contextual",
                 [("a gray wall", "a blue sky")]) is None
    both = caption.replace("a gray wall at night", "a blue sky during the day")
    assert sum(e.facts for e in derive_edits(caption, both)) == 2
    assert check(caption, both, "contextual", [("a gray wall", "a blue sky"), ("at night", "during the day")]) == \
        v.OVER_BUDGET
    assert check(caption, both, "contextual", [("a gray wall", "a blue sky"), ("at night", "during the day")],
                 max_edits=2) is None


# ------------------------------------------------------------------------------ what the alignment reads
@pytest.mark.parametrize(("caption", "negative", "principle", "source", "target"), [
    # a count that changes number brings its noun and verb: inflections are no edit ("does" / "do" too)
    ("two cows have horns and one cow does not", "two cows have horns and ten cows do not", "content", "one", "ten"),
    ("Two people facing the camera.", "One person facing the camera.", "content", "Two", "One"),
    # "parking" is not the verb "park": the whole place changed, nothing was added
    ("A child is blowing bubbles in the park.", "A child is blowing bubbles in the parking garage.", "contextual",
     "in the park", "in the parking garage"),
    # read on its own, "beach ball" is the noun that replaced "toy train" ("on a beach" is not the place)
    ("a Christmas tree on a toy train", "a Christmas tree on a beach ball", "content", "toy train", "beach ball"),
    # "black and white" is one description; "on" in "on the edge" is not a fact of its own
    ("A black and white photo of a dog.", "A color photo of a dog.", "attribute", "black and white", "color"),
    ("A clock tower in the middle of a city.", "A clock tower on the edge of a city.", "spatial", "in the middle",
     "on the edge"),
])
def test_one_fact_changed_reads_as_one_edit(caption: str, negative: str, principle: str, source: str,
                                           target: str) -> None:
    (edit,) = derive_edits(caption, negative)
    assert (edit.kind, edit.facts, edit.source, edit.target) == (v.REPLACE, 1, source, target)
    assert check(caption, negative, principle, [(source, target)]) is None


def test_a_place_whose_preposition_alone_changed_is_a_relation() -> None:
    caption, negative = "a red dog on the grass", "a red dog under the grass"
    (edit,) = derive_edits(caption, negative)
    assert (edit.facts, edit.principle) == (1, "spatial")
    assert check(caption, negative, "spatial", [("on the grass", "under the grass")]) is None
    assert check(caption, negative, "contextual", [("on", "under")]) == v.PRINCIPLE_MISMATCH


@pytest.mark.parametrize("wordnet", [True, False])
def test_unknown_words_are_classified_by_their_part_of_speech(monkeypatch: pytest.MonkeyPatch, wordnet: bool) -> None:
    """An adjective outside the lexicon is an attribute, a verb an action, with WordNet or without it."""
    from tpo_ray.negatives import lexicon, reading

    if wordnet and not wordnet_available():
        pytest.skip("WordNet's database (apt wordnet-base) is not installed")
    if not wordnet:
        monkeypatch.setattr(lexicon, "wordnet_adapter", lambda: None)
    reading.pos_tags.cache_clear()
    try:
        assert derived_principle("A dog on a sandy path.", "A dog on a rocky path.") == "attribute"
        assert check("A dog on a sandy path.", "A dog on a rocky path.", "contextual") == v.PRINCIPLE_MISMATCH
        assert derived_principle("A woman sews a dress.", "A woman folds a dress.") == "spatial"
    finally:
        reading.pos_tags.cache_clear()
