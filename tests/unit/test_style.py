"""Style and safety alignment: the data transforms and the style eval's arithmetic, by hand."""

from __future__ import annotations

import json

import pytest
import torch

from tpo_ray.data.style import STYLES, prefixed_pairs, style_triplets
from tpo_ray.eval.prompt_sets import load_prompts
from tpo_ray.eval.style import closest_style, style_rates

ROWS = [{"id": f"r{i}", "caption": "a fox in the snow", "style": s, "image": b"png"}
        for i, s in enumerate(["photo", "cartoon", "oil_painting"])]


def test_style_triplets_swap_the_style_phrase_only() -> None:
    triplets = style_triplets(ROWS, STYLES, seed=3).rows
    for row, t in zip(ROWS, triplets):
        assert t["caption"] == f"{STYLES[row['style']]}, a fox in the snow" and t["image"] == b"png"
        swapped = t["edits"][0]["to"]
        assert swapped != STYLES[row["style"]] and swapped in STYLES.values()
        assert t["negative"] == f"{swapped}, a fox in the snow" and t["principle"] == "attribute"
    assert style_triplets(ROWS, STYLES, seed=3).rows == triplets  # seeded per row
    assert len({t["negative"] for s in range(8) for t in style_triplets(ROWS[:1], STYLES, seed=s).rows}) > 1
    with pytest.raises(ValueError, match="at least two styles"):
        style_triplets(ROWS, {"photo": "a photograph"})


def test_rows_a_transform_cannot_use_are_quarantined_with_their_reason() -> None:
    bad = [{**ROWS[0], "id": "x1", "style": "anime"}, {**ROWS[1], "id": "x2", "caption": "  "},
           {"caption": "no id", "style": "photo", "image": b"png"}, {"id": "x3", "caption": "a fox", "style": "photo"}]
    by_uri = {"id": "u1", "caption": "a fox", "style": "photo", "image_uri": "s3://b/u1.png"}
    data = style_triplets([*ROWS, *bad, by_uri], STYLES)
    assert [r["id"] for r in data.rows] == ["r0", "r1", "r2", "u1"]
    assert [(q["id"], q["stage"], q["reason"]) for q in data.quarantine] == [
        ("x1", "style_data", "unknown_style:anime"), ("x2", "style_data", "missing:caption"),
        (None, "style_data", "missing:id"), ("x3", "style_data", "missing:image")]
    assert json.loads(data.quarantine[0]["raw"]) == {**bad[0], "image": "<3 bytes>"}  # bytes summarised


def test_prefixed_pairs_put_the_preferred_image_first() -> None:
    rows = [{"id": "a", "caption": "a street", "safe_image": b"safe", "image": b"raw", "source": "x"}]
    data = prefixed_pairs([*rows, {"id": "b", "caption": "c", "image": b"raw"}], "a safe-for-work image",
                          "safe_image", "image")
    assert data.rows == [{"id": "a", "caption": "a safe-for-work image, a street", "source": "x", "jpg_0": b"safe",
                          "jpg_1": b"raw", "label_0": 1.0}]
    assert [(q["id"], q["reason"]) for q in data.quarantine] == [("b", "missing:safe_image")]


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


def test_the_reference_job_and_the_training_driver_do_not_import_each_other() -> None:
    """The rows a run reads (`cache.selection`) sit below both; an import circle would hide behind lazy imports."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[2] / "tpo_ray"

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert "tpo_ray.train.driver" not in imported(root / "cache" / "reference_job.py")
    assert "tpo_ray.train.driver" not in imported(root / "cache" / "selection.py")
