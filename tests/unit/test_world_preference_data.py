"""The world's extra preference data: image pairs rendered from triplets (the preferred image is the true
scene's render, the other the render of the scene the negative names), true rewrites that map back to the
same scene through the synonym table, and the seeded share of spoiled negatives."""

from __future__ import annotations

import pytest

from tpo_ray.cache.examples import REQUIRED_COLUMNS, example_parts
from tpo_ray.data import schema
from tpo_ray.world.preference_data import (
    NEGATIVE_OUTSIDE, SAME_SCENE, SPOILED, SYNONYMS, canonical_caption, image_pairs, scene_text, spoil_negatives,
    true_rewrites,
)
from tpo_ray.world.render import render_scene
from tpo_ray.world.scenes import Scene, all_scenes, parse_caption, train_scene

RED = Scene(2, "red", "small", "circle", "on the left", "a gray wall", "during the day")
BLUE = Scene(2, "blue", "small", "circle", "on the left", "a gray wall", "during the day")
NIGHT = Scene(2, "red", "small", "circle", "on the left", "a gray wall", "at night")


def triplet(i: int, caption: str, negative: str, principle: str = "attribute") -> dict:
    return {schema.ID: f"t{i}", schema.CAPTION: caption, schema.NEGATIVE: negative, schema.PRINCIPLE: principle,
            schema.EDITS: [{"from": "x", "to": "y"}], schema.NEGATIVE_INDEX: 0}


def test_a_pair_prefers_the_true_render_over_the_render_of_the_parsed_negative() -> None:
    rows = [triplet(0, RED.caption(), BLUE.caption()),
            triplet(1, RED.caption(), "two small red circles on the left of a gray column during the day", "content"),
            triplet(2, RED.caption(), NIGHT.caption(), "contextual"),
            triplet(3, RED.caption(), "Two small red circles on the left of a gray wall  during the day")]
    pairs = image_pairs(rows, 32, seed=0)
    made = pairs.table.to_pylist()
    assert [r[schema.ID] for r in made] == ["t0", "t2"]  # the pair keeps its triplet's id (same held-out split)
    assert set(pairs.table.column_names) == set(REQUIRED_COLUMNS["image_pair"])
    red, blue, night = (render_scene(s, 32) for s in (RED, BLUE, NIGHT))
    # position alternates: preferred first in the first pair, second in the next
    assert (made[0][schema.JPG_0], made[0][schema.JPG_1], made[0][schema.LABEL_0]) == (red, blue, 1.0)
    assert (made[1][schema.JPG_0], made[1][schema.JPG_1], made[1][schema.LABEL_0]) == (night, red, 0.0)
    assert all(r[schema.CAPTION] == RED.caption() for r in made)  # both images under the true caption
    # what the cache makes of them: x0 (preferred) is the true render, x0_l the negative's
    assert [example_parts("image_pair", r).images for r in made] == [{"x0": red, "x0_l": blue},
                                                                      {"x0": red, "x0_l": night}]
    assert [(r[schema.ID], r["reason"]) for r in pairs.skipped] == [("t1", NEGATIVE_OUTSIDE), ("t3", SAME_SCENE)]
    assert pairs.reasons() == {NEGATIVE_OUTSIDE: 1, SAME_SCENE: 1}
    flipped = image_pairs(rows, 32, seed=1).table.to_pylist()  # the seed picks the parity
    assert [r[schema.LABEL_0] for r in flipped] == [0.0, 1.0] and flipped[0][schema.JPG_1] == red


def test_rewrites_differ_yet_map_back_to_the_same_scene_through_the_synonym_table() -> None:
    caption = RED.caption()
    assert true_rewrites(caption, 2).caption == "two little red circles on the left of a gray wall in the daytime"
    assert true_rewrites(caption, 2).edits == [{"from": "small", "to": "little"},
                                               {"from": "during the day", "to": "in the daytime"}]
    assert true_rewrites(caption, 3).caption == "two small red discs on the left side of a gray wall during the day"
    assert true_rewrites("a cat on a sofa", 0) is None
    synonyms = {s for values in SYNONYMS.values() for syns in values.values() for s in syns}
    for scene in list(all_scenes())[::7]:
        for seed in (0, 1):
            rewrite = true_rewrites(scene.caption(), seed)
            assert rewrite.caption != scene.caption() and parse_caption(rewrite.caption) is None
            assert parse_caption(canonical_caption(rewrite.caption)) == scene
            assert 1 <= len(rewrite.edits) <= 2
            assert all(e["to"].removesuffix("s") in synonyms or e["to"] in synonyms for e in rewrite.edits)
    assert canonical_caption("A pair of BIG red discs near the top of a grey wall after dark") == \
        "two large red circles at the top of a gray wall at night"
    assert all(scene_text(s) == s.caption() for s in all_scenes())
    seeded = [true_rewrites(caption, s).caption for s in range(20)]
    assert seeded == [true_rewrites(caption, s).caption for s in range(20)] and len(set(seeded)) > 5


def test_spoil_negatives_replaces_a_seeded_share_and_marks_it() -> None:
    rows = [triplet(i, train_scene(0, i).caption(), BLUE.caption(), "attribute") for i in range(10)]
    rows.append(triplet(10, "a cat on a sofa", "a dog on a sofa", "content"))  # cannot be rewritten
    spoiled = spoil_negatives(rows, 0.5, seed=0)
    changed = [i for i, r in enumerate(spoiled) if r[SPOILED]]
    assert len(changed) == round(0.5 * 11) == 6 and 10 not in changed
    assert changed == [i for i, r in enumerate(spoil_negatives(rows, 0.5, seed=0)) if r[SPOILED]]
    assert any(changed != [i for i, r in enumerate(spoil_negatives(rows, 0.5, seed=s)) if r[SPOILED]]
               for s in range(1, 4))
    for row, new in zip(rows, spoiled):
        if new[SPOILED]:
            assert parse_caption(canonical_caption(new[schema.NEGATIVE])) == parse_caption(row[schema.CAPTION])
            assert new[schema.NEGATIVE] != row[schema.CAPTION] and new[schema.EDITS] != row[schema.EDITS]
            assert {k: new[k] for k in row if k not in (schema.NEGATIVE, schema.EDITS)} == \
                {k: row[k] for k in row if k not in (schema.NEGATIVE, schema.EDITS)}  # principle kept
        else:
            assert new == {**row, SPOILED: False}
    assert not any(r[SPOILED] for r in spoil_negatives(rows, 0.0, seed=0))
    assert sum(r[SPOILED] for r in spoil_negatives(rows, 1.0, seed=0)) == 10  # every row in the grammar
    with pytest.raises(ValueError, match="share"):
        spoil_negatives(rows, 1.5, seed=0)
