"""benchmarks/negatives_quality.py and benchmarks/sample_coco_captions.py: the Wilson interval against
hand-computed values, the graded-sample tally, and the seeded COCO caption draw."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


quality = _load("negatives_quality")
sampler = _load("sample_coco_captions")


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (39, 60, 0.5236, 0.7583),  # p = .65: centre .682013, half .124864, / 1.064027
    (57, 60, 0.8630, 0.9829),  # p = .95: centre .982013, half .063766
    (60, 60, 0.9398, 1.0),     # all pass: the lower bound is n / (n + z^2)
])
def test_wilson_interval_matches_hand_computed_values(k, n, lo, hi):
    got = quality.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-4)


def _graded(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=["set", "n", "caption", "negative", *quality.GRADES, "note"])
        out.writeheader()
        out.writerows(rows)
    return path


def test_grade_report_counts_each_criterion_and_all_four(tmp_path, capsys):
    def row(s, g, m, c, p, note=""):
        return {"set": s, "n": "1", "caption": "A dog.", "negative": "A cat.", "grammatical": g, "minimal": m,
                "contradicts": c, "principle_right": p, "note": note}

    path = _graded(tmp_path / "g.csv", [row("a", "1", "1", "1", "1"), row("a", "0", "1", "1", "1", "nonsense"),
                                        row("a", "1", "1", "0", "0", "still true"), row("b", "1", "1", "1", "1")])
    out = quality.grade_report(path)
    assert out["a"]["rows"] == 3
    assert [out["a"][g]["pass"] for g in (*quality.GRADES, "all_four")] == [2, 3, 2, 2, 1]
    assert out["b"]["all_four"]["pass"] == 1
    printed = capsys.readouterr().out
    assert "fails grammatical" in printed and "fails contradicts/principle_right" in printed


def test_grade_report_refuses_a_row_left_ungraded(tmp_path):
    path = _graded(tmp_path / "g.csv", [{"set": "a", "n": "1", "caption": "x", "negative": "y", "grammatical": "1",
                                         "minimal": "", "contradicts": "1", "principle_right": "1", "note": ""}])
    with pytest.raises(ValueError, match="without a 0/1 grade"):
        quality.grade_report(path)


def test_coco_sample_takes_one_caption_of_each_drawn_image_with_whitespace_collapsed():
    annotations = [{"image_id": 1, "id": 10, "caption": "A  dog on\na beach. "},
                   {"image_id": 1, "id": 11, "caption": "A dog runs."},
                   {"image_id": 2, "id": 20, "caption": "Two cats."},
                   {"image_id": 3, "id": 30, "caption": "A red bus."}]
    rows = sampler.sample_captions(annotations, images=2, seed=0)
    assert len(rows) == 2 and len({image for _, image, _ in rows}) == 2
    by_id = {a["id"]: a for a in annotations}
    for text, image, ann in rows:
        assert by_id[ann]["image_id"] == image
        assert text == " ".join(by_id[ann]["caption"].split())
    assert sampler.sample_captions(list(reversed(annotations)), images=2, seed=0) == rows  # order of the file
    assert sampler.sample_captions(annotations, images=3, seed=0) != sampler.sample_captions(annotations, 3, seed=1)


def test_committed_coco_sample_is_real_coco_with_ids():
    with (_BENCH / "data" / "coco_val2017_captions.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 2500
    assert len({r["image_id"] for r in rows}) == 2500  # one caption per image
    assert all(r["Prompt"] and r["Prompt"] == " ".join(r["Prompt"].split()) for r in rows)


@pytest.mark.parametrize(("negative", "edit", "expected"), [
    ("An elderly boy crawls.", ("A young", "An elderly"), ["nonsense:age_contradicts_noun"]),
    ("A man catching horseback.", ("riding", "catching"), ["nonsense:riding->catching"]),
    ("A dog jumping off a pier out of a lake.", ("into", "out of"), ["nonsense:into->out_of"]),
    ("A poodle ovals a sparkler.", ("circles", "ovals"), ["nonsense:verb_as_shape"]),
    ("A dog poses for a cartoon.", ("photo", "cartoon"), ["nonsense:pose_for_a_photo->cartoon"]),
    ("A boy crawls.", ("baby", "boy"), ["still_true:baby->boy"]),
    ("A cat opposite a dog.", ("next to", "opposite"), ["still_true:near->relation"]),
    ("Many birds on a wire.", ("Several", "Many"), ["still_true:quantifier"]),
    ("A drawing of a cat.", ("photo", "drawing"), []),  # a medium swap, not the pose-for-a-photo class
    ("An elderly man walks.", ("young", "elderly"), []),  # the age fits the noun
    ("A man walking out of a room.", ("into", "out of"), []),
])
def test_issue_classes_by_pattern(negative, edit, expected):
    assert quality.issue_classes(negative, [{"from": edit[0], "to": edit[1]}]) == expected
