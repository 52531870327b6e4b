"""The report of a hand-made eval folder (no Ray): it follows the config (an earlier eval's model and
scorer are left out and named), explains itself in a header (prompts, counts, sampling, scorers,
baseline, a test-scale warning), shows per-category win rates and intervals, links smooth thumbnails,
marks the baseline and the winners, survives a missing image, and replaces the old report only whole."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.eval_folder import make_eval_folder
from tpo_ray.eval.report import report_dir, run_report


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[object, object, str]:
    cfg = make_eval_folder(tmp_path_factory.mktemp("report"))
    result = run_report(cfg)
    return cfg, result, Path(result.index).read_text()


def header_of(page: str) -> str:
    return re.search(r"<header id='summary'>(.*?)</header>", page, re.S).group(1)


def test_the_report_shows_only_what_the_config_compares(made) -> None:
    cfg, result, page = made
    body = page.split("</header>", 1)[1]
    assert "<td>old" not in body and "images/old/" not in body and "pickscore" not in body
    assert result.images == 6  # 2 models x 3 prompts; the 3 images of "old" not copied
    assert not (Path(report_dir(cfg)) / "images" / "old").exists()
    assert any("'old'" in n and "not in eval.models" in n for n in result.left_out)
    assert any("pickscore" in n for n in result.left_out)
    assert "left out: win rates of &#x27;old&#x27;" in header_of(page)


def test_the_header_explains_the_comparison_and_warns_of_test_scale_models(made) -> None:
    cfg, result, page = made
    head = header_of(page)
    for text in ("Prompt set", "prompts.txt: 3 prompts", "Images per model", "base 3, tdpo 3", "Sampling",
                 "DDIMScheduler, 50 steps, guidance 7.5", "Scorers", "<b>clip</b>", "Baseline", "<b>base</b>",
                 "Held-out pairs", "3 pairs x 2 timesteps x 2 draws"):
        assert text in head, text
    assert "id='test-scale'" in head
    assert any(w.startswith("tiny:sd15") for w in result.test_scale)
    assert any("tdpo-unet" in w and "0.8 M parameters" in w for w in result.test_scale)
    assert any(w.startswith("scorer clip") for w in result.test_scale)


def test_per_category_win_rates_and_intervals_on_every_accuracy(made) -> None:
    _, _, page = made
    category = re.search(r'<table id="winrates-by-category">.*?</table>', page, re.S).group(0)
    assert category.count("<tr><td>cat") == 2 and "0.750 [0.650, 0.850]" in category and "old" not in category
    implicit = re.search(r'<table id="implicit">.*?</table>', page, re.S).group(0)
    assert "0.700 [0.500, 0.900]" in implicit and "0.500 [0.300, 0.700]" in implicit
    assert "-0.00000" not in page and "-0.000" not in page and "-1e-07" in implicit
    assert "caption accuracy" in implicit and "implicit reward accuracy vs base" in implicit
    assert "too few models for a fit" in page and "r = 0.000" not in page


def test_thumbnails_link_to_full_images_scale_smoothly_and_mark_baseline_and_winner(made) -> None:
    _, _, page = made
    assert "pixelated" not in page
    thumbs = re.findall(r'<a href="([^"]+)"><img class="sample" src="([^"]+)"', page)
    assert len(thumbs) == 6 and all(href == src for href, src in thumbs)
    assert page.count('<figure class="baseline">') == 3 and "base (baseline)" in page
    assert page.count('class="best">best: clip: tdpo') == 3  # tdpo's clip score is higher on every prompt
    assert page.count("&#9733;</figcaption>") == 3


def test_a_missing_or_corrupt_image_is_listed_not_fatal(tmp_path: Path) -> None:
    from tpo_ray.eval.sample_job import current_index

    cfg = make_eval_folder(tmp_path)
    rows = current_index(cfg)
    Path(rows[0]["path"]).unlink()
    Path(rows[1]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run_report(cfg)
    page = Path(result.index).read_text()
    assert result.images == 4 and len(result.broken) == 2
    assert page.count('class="broken"') == 2 and "sample image missing or unreadable" in header_of(page)


def test_a_failed_build_keeps_the_previous_report_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    from tpo_ray.eval import report_sections

    cfg = make_eval_folder(tmp_path)
    first = run_report(cfg)
    before = Path(first.index).read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_sections, "implicit_section", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_report(cfg)
    assert Path(first.index).read_text() == before
    assert (Path(report_dir(cfg)) / "images" / "base").is_dir()
    assert sorted(p.name for p in Path(report_dir(cfg)).parent.iterdir() if p.name.startswith(".report")) == []
