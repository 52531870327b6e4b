"""The report of a hand-made eval folder (no Ray) in a real headless Chromium at 1400x900: every image
loads, the header with the test-scale warning sits above the fold (its layout box and the screenshot's
pixels), and the thumbnails are links to the full images, drawn without pixelation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.browser import rendered, screenshot
from tests.helpers.eval_folder import make_eval_folder
from tpo_ray.eval.report import run_report

FOLD = 900


def test_the_header_is_above_the_fold_and_thumbnails_link_to_full_images(tmp_path: Path) -> None:
    from PIL import Image

    cfg = make_eval_folder(tmp_path, size=512)
    report = run_report(cfg)
    page = Path(report.index)
    seen = rendered(page, size=f"1400,{FOLD}")
    assert seen["viewport"][1] <= FOLD
    broken = [i["src"] for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == [] and len(seen["images"]) == report.images + report.plots
    header, warning = seen["boxes"]["summary"], seen["boxes"]["test-scale"]
    assert 0 <= header["top"] and header["bottom"] <= FOLD, header
    assert warning["bottom"] <= FOLD and warning["height"] > 0
    assert seen["tables"]["winrates"] == 2 and seen["tables"]["implicit"] == 2
    assert len(seen["links"]) == report.images
    assert all(link["href"] == link["src"] and link["rendering"] == "auto" for link in seen["links"])
    assert all(Image.open(page.parent / link["href"]).size == (512, 512) for link in seen["links"])

    shot = Image.open(screenshot(page, tmp_path / "fold.png", size=f"1400,{FOLD}")).convert("RGB")
    assert shot.size == (1400, FOLD)
    # the warning's amber (#fff3cd) is on screen without scrolling
    pixels = np.asarray(shot, dtype=np.int16)
    amber = int((np.abs(pixels - np.array([255, 243, 205])).max(axis=2) < 4).sum())
    assert amber > 1400 * 20, amber
