"""Style and safety alignment: the data transforms and the style eval's arithmetic, by hand."""

from __future__ import annotations

import pytest
import torch

from tpo_ray.data.style import STYLES, prefixed_pairs, style_triplets
from tpo_ray.eval.prompt_sets import load_prompts
from tpo_ray.eval.style import closest_style, style_rates

ROWS = [{"id": f"r{i}", "caption": "a fox in the snow", "style": s, "image": b"png"}
        for i, s in enumerate(["photo", "cartoon", "oil_painting"])]


def test_style_triplets_swap_the_style_phrase_only() -> None:
    triplets = style_triplets(ROWS, STYLES, seed=3)
    for row, t in zip(ROWS, triplets):
        assert t["caption"] == f"{STYLES[row['style']]}, a fox in the snow" and t["image"] == b"png"
        swapped = t["edits"][0]["to"]
        assert swapped != STYLES[row["style"]] and swapped in STYLES.values()
        assert t["negative"] == f"{swapped}, a fox in the snow" and t["principle"] == "attribute"
    assert style_triplets(ROWS, STYLES, seed=3) == triplets  # seeded per row
    assert len({t["negative"] for s in range(8) for t in style_triplets(ROWS[:1], STYLES, seed=s)}) > 1
    with pytest.raises(ValueError, match="style='anime' is not one of"):
        style_triplets([{**ROWS[0], "style": "anime"}], STYLES)
    with pytest.raises(ValueError, match="at least two styles"):
        style_triplets(ROWS, {"photo": "a photograph"})


def test_prefixed_pairs_put_the_preferred_image_first() -> None:
    rows = [{"id": "a", "caption": "a street", "safe_image": b"safe", "image": b"raw", "source": "x"}]
    pairs = prefixed_pairs(rows, "a safe-for-work image", "safe_image", "image")
    assert pairs == [{"id": "a", "caption": "a safe-for-work image, a street", "source": "x", "jpg_0": b"safe",
                      "jpg_1": b"raw", "label_0": 1.0}]
    with pytest.raises(ValueError, match=r"lacks \['safe_image'\]"):
        prefixed_pairs([{"id": "b", "caption": "c", "image": b"raw"}], "p", "safe_image", "image")


def test_closest_style_and_rates_by_hand() -> None:
    styles = torch.eye(3)  # three orthogonal style directions
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.7, 0.0]])
    assert closest_style(images, styles) == [0, 2, 1]
    rows = [{"model": "a", "requested": "x", "found": "x"}, {"model": "a", "requested": "y", "found": "x"},
            {"model": "a", "requested": "y", "found": "y"}, {"model": "b", "requested": "x", "found": "z"}]
    rates = style_rates(rows)
    assert rates["a"] == {"rate": pytest.approx(2 / 3), "n": 3,
                          "by_style": {"x": {"rate": 1.0, "n": 1}, "y": {"rate": 0.5, "n": 2}}}
    assert rates["b"]["rate"] == 0.0


def test_the_packaged_style_prompts_request_the_preset_styles() -> None:
    prompts = load_prompts("styles")
    assert len(prompts) == 60 and {p.category for p in prompts} == set(STYLES)
    assert all(p.text.startswith(STYLES[p.category] + ", ") for p in prompts)
