"""Synthetic captions dataset and the rules editor."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tpo_ray.data import schema
from tpo_ray.data.synthetic import sample_scene, synthetic_captions, synthetic_table
from tpo_ray.negatives.lexicon import PRINCIPLES
from tpo_ray.negatives.rules import editable_principles, find_terms, rule_edit


def test_synthetic_table_is_deterministic_and_follows_the_schema() -> None:
    a, b = synthetic_table(12, 32, seed=3), synthetic_table(12, 32, seed=3)
    assert a.equals(b)
    assert a.column_names == [schema.ID, schema.IMAGE, schema.CAPTION, schema.WIDTH, schema.HEIGHT]
    assert len(set(a.column(schema.ID).to_pylist())) == 12
    img = Image.open(io.BytesIO(a.column(schema.IMAGE)[0].as_py()))
    assert img.size == (32, 32)
    assert not synthetic_table(12, 32, seed=4).equals(a)


def test_image_shows_the_caption_time_of_day() -> None:
    rows = synthetic_table(40, 32).to_pylist()
    def mean_brightness(row) -> float:
        img = Image.open(io.BytesIO(row[schema.IMAGE])).convert("L")
        return float(np.asarray(img, dtype=np.float64).mean())
    night = [mean_brightness(r) for r in rows if "at night" in r[schema.CAPTION]]
    day = [mean_brightness(r) for r in rows if "during the day" in r[schema.CAPTION]]
    assert night and day and max(night) < min(day)


def test_every_synthetic_caption_offers_all_four_principles() -> None:
    for row in synthetic_captions(50, seed=1):
        assert editable_principles(row[schema.CAPTION]) == set(PRINCIPLES), row


def test_captions_cover_the_vocabulary() -> None:
    scenes = [sample_scene(0, i) for i in range(400)]
    assert {s.count for s in scenes} == {1, 2, 3, 4}
    assert len({s.position for s in scenes}) == 5 and len({s.time for s in scenes}) == 2


@pytest.mark.parametrize(
    ("caption", "principle", "changed_kind"),
    [
        ("Two dogs running on the beach", "content", {"two", "dogs"}),
        ("a red wooden chair in a kitchen", "attribute", {"red", "wooden"}),
        ("a cat sitting to the left of a vase", "spatial", {"sitting", "to the left of"}),
        ("a man walking in the park at night", "contextual", {"in the park", "at night"}),
    ],
)
def test_rule_edit_changes_a_term_of_the_principle(caption: str, principle: str, changed_kind: set[str]) -> None:
    for seed in range(10):
        out = rule_edit(caption, principles=[principle], seed=seed)
        assert out is not None and out.principle == principle
        assert out.negative != caption and len(out.edits) == 1
        source = out.edits[0]["from"].lower()
        # the edit may carry the article it changed ("a red" -> "an orange") or a count's noun ("two dogs")
        assert source in changed_kind or source.split(" ", 1)[-1] in changed_kind or source.split()[0] in changed_kind
        assert out.edits[0]["to"].lower() != source
        assert out.negative.lower() == caption.lower().replace(source, out.edits[0]["to"].lower(), 1)


def test_rule_edit_is_seeded_and_respects_budget() -> None:
    caption = "three small red circles on the left of a green field at night"
    assert rule_edit(caption, seed="a", max_edits=3) == rule_edit(caption, seed="a", max_edits=3)
    counts = {len(rule_edit(caption, seed=s, max_edits=3, principles=["attribute"]).edits) for s in range(30)}
    assert counts == {1, 2, 3}  # only three attribute terms exist (small, red, green)


def test_longest_match_and_plural_agreement() -> None:
    caption = "a teddy bear in front of a fire hydrant with two horses"
    spans = [caption[s:e] for s, e, _ in find_terms(caption)]
    assert spans == ["teddy bear", "in front of", "fire hydrant", "two", "horses"]
    out = rule_edit("two horses", principles=["content"], seed=0, max_edits=2)
    for edit in out.edits:
        if edit["from"] == "horses":
            assert edit["to"].endswith("s") or edit["to"] in {"sheep", "children", "men", "women"}


def test_nothing_editable_returns_none_and_weights_select() -> None:
    assert rule_edit("the meaning of life", seed=0) is None
    caption = "a red car on the left at night"
    picks = {rule_edit(caption, seed=s, weights={"attribute": 1, "content": 0, "spatial": 0, "contextual": 0}).principle
             for s in range(20)}
    assert picks == {"attribute"}
