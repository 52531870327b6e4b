"""The world around the verifier: the grammar parses what it writes, held-out pairs never reach training,
the word tokenizer keeps every world word whole, accuracies and their intervals by hand, and the scene
scorer, prompt set and report line that carry the verifier into the eval."""

from __future__ import annotations

import math

import pytest

from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.eval.prompt_sets import load_prompts
from tpo_ray.eval.report import verdict_line
from tpo_ray.eval.scorers import build_scorer
from tpo_ray.models.tokenizer import build_word_tokenizer, word_merges
from tpo_ray.world.accuracy import accuracy_table, wilson_interval
from tpo_ray.world.model import build_tokenizer, world_words
from tpo_ray.world.render import render_array
from tpo_ray.world.scenes import (
    ATTRIBUTES, HELD_OUT_PAIRS, PRINCIPLE_OF, CAPTION_ORDER, Scene, all_scenes, changed, held_out_scenes, parse_caption, sample_scene,
    train_scene,
)
from tpo_ray.world.verifier import Verdict, verify


def test_parse_caption_inverts_every_caption_and_refuses_the_rest() -> None:
    scenes = list(all_scenes())
    assert all(parse_caption(s.caption()) == s for s in scenes)
    assert parse_caption("  Two SMALL red circles on the left of a gray wall   during the day") == Scene(
        2, "red", "small", "circle", "on the left", "a gray wall", "during the day")
    for bad in ("one small red circles on the left of a gray wall during the day",  # plural against the count
                "two small red circle on the left of a gray wall during the day",
                "two small pink circles on the left of a gray wall during the day",  # not a world color
                "a cat on a sofa", ""):
        assert parse_caption(bad) is None, bad


def test_the_training_stream_never_shows_a_held_out_pair_and_keeps_the_rest_of_the_stream() -> None:
    stream = [train_scene(0, i) for i in range(3000)]
    assert not any(s.held_out for s in stream)
    assert stream == [train_scene(0, i) for i in range(3000)]  # deterministic
    same = [s for i, s in enumerate(stream) if not sample_scene(0, i).held_out]
    assert same == [sample_scene(0, i) for i in range(3000) if not sample_scene(0, i).held_out]
    assert {(s.color, s.shape) for s in stream} == {(c, s) for c, s in {(x.color, x.shape) for x in all_scenes()}
                                                    if (c, s) not in HELD_OUT_PAIRS}
    captions = synthetic_table(200, 16).column("caption").to_pylist()
    assert all(not parse_caption(c).held_out for c in captions)


def test_held_out_scenes_are_distinct_held_out_and_seeded() -> None:
    scenes = held_out_scenes(64, seed=3)
    assert len(set(scenes)) == 64 and all(s.held_out for s in scenes)
    assert scenes == held_out_scenes(64, seed=3) != held_out_scenes(64, seed=4)
    prompts = load_prompts("scenes")
    assert [p.text for p in prompts[:5]] == [s.caption() for s in held_out_scenes(5)]
    assert all(parse_caption(p.text).held_out and p.category == " ".join(
        [parse_caption(p.text).color, parse_caption(p.text).shape]) for p in prompts)


def test_changed_changes_exactly_one_attribute() -> None:
    scene = sample_scene(0, 1)
    for name in ATTRIBUTES:
        other = changed(scene, name, seed=5)
        assert [a for a in ATTRIBUTES if getattr(other, a) != getattr(scene, a)] == [name]


def test_word_tokenizer_keeps_each_world_word_whole_and_other_text_by_characters() -> None:
    tokenizer = build_tokenizer()
    for word in world_words():
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    caption = "four large purple triangles at the bottom of a sandy beach during the day"
    assert tokenizer.tokenize(caption) == [w + "</w>" for w in caption.split()]
    assert tokenizer.tokenize("pinkish") == ["p", "i", "n", "k", "i", "s", "h</w>"]
    ids = tokenizer(caption).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 16


def test_word_merges_by_hand() -> None:
    vocab, merges = word_merges(["red", "re"])
    # "red": r+e, then re+d</w>; "re" then needs only its own final merge r+e</w>
    assert merges == [("r", "e"), ("re", "d</w>"), ("r", "e</w>")]
    assert {"re", "red</w>", "re</w>"} <= set(vocab) and sorted(vocab.values()) == list(range(len(vocab)))
    tokenizer = build_word_tokenizer(["red", "re", "green"])
    assert tokenizer.tokenize("red re green greed") == ["red</w>", "re</w>", "green</w>", "gree", "d</w>"]
    with pytest.raises(ValueError, match="lowercase ASCII"):
        word_merges(["two words"])


def test_wilson_interval_by_hand() -> None:
    low, high = wilson_interval(8, 10)
    # p = 0.8, n = 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 sqrt(0.016 + 0.0096040) / 1.38416
    centre, half = 0.99208 / 1.38416, 1.96 * math.sqrt(0.016 + 0.009604) / 1.38416
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _verdict(wrong: set[str]) -> Verdict:
    return Verdict(read={a: "x" for a in ATTRIBUTES}, right={a: a not in wrong for a in ATTRIBUTES})


def test_accuracy_table_by_hand() -> None:
    table = accuracy_table([_verdict(set()), _verdict({"color"}), _verdict({"background", "count"}),
                            _verdict({"size"})])
    cells = table["attributes"]
    assert table["n"] == 4
    assert cells["color"]["accuracy"] == 0.75 and cells["background"]["right"] == 3 and cells["time"]["accuracy"] == 1
    assert cells["all"]["accuracy"] == 0.25
    assert cells["color"]["interval"] == pytest.approx(list(wilson_interval(3, 4)))
    principles = table["principles"]
    assert set(principles) == set(PRINCIPLE_OF.values())
    # attribute = color and size both right: rows 1 and 3; contextual = background and time: all but row 3
    assert principles["attribute"]["accuracy"] == 0.5 and principles["contextual"]["accuracy"] == 0.75
    assert principles["content"]["accuracy"] == 0.75 and principles["spatial"]["accuracy"] == 1.0


def test_scene_scorer_scores_the_share_of_attributes_right_without_weights() -> None:
    scorer = build_scorer("scene", None)
    scene = held_out_scenes(1)[0]
    wrong_color = changed(scene, "color")
    images = [render_array(s, 64) for s in (scene, wrong_color)]
    from PIL import Image

    assert scorer.score([Image.fromarray(i) for i in images], [scene.caption()] * 2) == pytest.approx([1.0, 6 / 7])
    with pytest.raises(ValueError, match="scene grammar .*'a cat on a sofa'"):
        scorer.score([Image.fromarray(images[0])], ["a cat on a sofa"])


def test_verdict_line_names_each_wrong_attribute_with_what_was_read() -> None:
    scene = held_out_scenes(1)[0]
    verdict = verify(render_array(changed(changed(scene, "color"), "count"), 64), scene)
    row = {"read": verdict.read, "wrong": verdict.wrong()}
    other = changed(changed(scene, "color"), "count")
    assert verdict_line(row) == f"wrong: color ({other.color}), count ({other.value('count')})"
    assert verdict_line({"read": {}, "wrong": []}) == "verifier: all right"
    assert verdict_line({"read": {"color": ""}, "wrong": ["color"]}) == "wrong: color (none)"
    assert verdict_line(None) == ""


def test_scene_editor_writes_valid_in_grammar_negatives_under_the_principle_it_reports() -> None:
    from tpo_ray.negatives.lexicon import PRINCIPLES
    from tpo_ray.negatives.validation import Proposal, validate_proposal
    from tpo_ray.world.edits import scene_edit

    seen = set()
    for i in range(300):
        caption = train_scene(0, i).caption()
        for budget in (1, 2):
            edit = scene_edit(caption, principles=PRINCIPLES, max_edits=budget, seed=i)
            scene, negative = parse_caption(caption), parse_caption(edit.negative)
            changed_attrs = [a for a in CAPTION_ORDER if getattr(scene, a) != getattr(negative, a)]  # caption order
            assert 1 <= len(changed_attrs) <= budget and not negative.held_out
            assert {PRINCIPLE_OF[a] for a in changed_attrs} == {edit.principle}
            assert edit.edits == [{"from": scene.value(a), "to": negative.value(a)} for a in changed_attrs]
            assert validate_proposal(caption, Proposal(edit.negative, edit.principle, edit.edits),
                                     principles=PRINCIPLES, max_edits=budget, max_tokens=77,
                                     count_tokens=lambda s: len(s.split())) is None
            seen.add((edit.principle, len(changed_attrs)))
    assert {p for p, _ in seen} == set(PRINCIPLES) and {n for _, n in seen} == {1, 2}
    caption = train_scene(0, 0).caption()
    assert scene_edit(caption, principles=["spatial"], seed=3).principle == "spatial"
    assert scene_edit(caption, principles=PRINCIPLES, seed=3) == scene_edit(caption, principles=PRINCIPLES, seed=3)
    assert scene_edit("a cat on a sofa", principles=PRINCIPLES) is None


def test_pretraining_captions_never_name_a_held_out_pair_even_when_mismatched() -> None:
    import numpy as np

    from tpo_ray.world.pretrain import noisy_caption

    rng = np.random.default_rng(0)
    scenes = [train_scene(0, i) for i in range(400)]
    captions = [noisy_caption(s, rng, mismatch=1.0, dropout=0.0) for s in scenes for _ in range(5)]
    parsed = [parse_caption(c) for c in captions]
    assert all(p is not None and not p.held_out for p in parsed)
    assert sum(p != s for p, s in zip(parsed, [s for s in scenes for _ in range(5)])) == len(captions)  # all wrong
    # the one scene whose only other shape values are held out keeps its shape
    red_circle = Scene(1, "red", "small", "circle", "on the left", "a gray wall", "at night")
    assert changed(red_circle, "shape", allow_held_out=False).shape == "square"
    white_square = Scene(1, "white", "small", "square", "on the left", "a gray wall", "at night")
    assert changed(white_square, "shape", allow_held_out=False).shape == "circle"


def test_chance_of_each_attribute() -> None:
    from tpo_ray.world.scenes import chance

    assert [chance(a) for a in ATTRIBUTES] == [1 / 4, 1 / 2, 1 / 8, 1 / 5, 1 / 4, 1 / 3, 1 / 2]
