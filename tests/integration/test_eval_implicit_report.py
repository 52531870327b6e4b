"""`eval implicit` on Ray Data against the trainer's own held-out figures, then samples, scores and the
HTML report opened in a real headless Chromium (every image loaded, a table row per model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.browser import rendered, screenshot
from tpo_ray.cache.job import run_cache
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.eval.implicit_job import run_implicit, unet_source_kind
from tpo_ray.models.loading import load_start_unet
from tpo_ray.negatives.job import run_negatives
from tpo_ray.train.driver import run_train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TPOConfig, object, Path]:
    """Negatives, the triplet cache, a 4-step TDPO run (every held-out pair in its eval), and a moved U-Net."""
    out = tmp_path_factory.mktemp("evalrun")
    cfg = config_from_dict({
        "output_dir": str(out), "data": {"synthetic": {"num_rows": 48}, "holdout_fraction": 0.25, "resolution": 64},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(out / "models")},
        "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 2, "log_every_steps": 2, "checkpoint_every_steps": 4,
                  "eval_max_pairs": 1000, "scaling": {"num_workers": 1}},
        "eval": {"timesteps": [300, 700], "noise_draws": 2, "implicit_batch_size": 5},
    }, "test")
    write_parquet_atomic(synthetic_table(48, 64), out / "data" / "captions.parquet")
    run_negatives(cfg)
    run_cache(cfg)
    result = run_train(cfg)
    moved = out / "moved-unet"
    unet, _ = load_start_unet(cfg.model)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(moved)
    return cfg, result, moved


def with_models(cfg: TPOConfig, models: dict[str, str], **eval_overrides) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"),
                                            {"eval.models": models, **{f"eval.{k}": v for k, v in eval_overrides.items()}}),
                            "test")


def test_implicit_matches_the_trainers_held_out_eval_and_breaks_down(trained) -> None:
    cfg, run, moved = trained
    assert unet_source_kind(run.checkpoint) == "checkpoint" and unet_source_kind(str(moved)) == "unet"
    eval_cfg = with_models(cfg, {"base": "tiny:sd15", "tdpo": run.checkpoint, "twin": "tiny:sd15", "moved": str(moved)})
    result = run_implicit(eval_cfg)
    figures = result.summary["figures"]
    assert result.summary["reference"] == "base" and not result.reused
    # the same pairs, noise and function as the trainer's final held-out eval
    assert figures["tdpo"]["overall"]["acc"] == pytest.approx(run.metrics["val/model_acc"], abs=1e-9)
    assert figures["tdpo"]["overall"]["implicit_acc"] == pytest.approx(run.metrics["val/implicit_acc"], abs=1e-9)
    assert figures["base"]["overall"]["acc"] == pytest.approx(run.metrics["val/ref_acc"], abs=1e-9)
    # as many pairs as training's final eval read, and intervals over them
    assert result.summary["pairs"] == result.summary["train_eval_pairs"] == figures["tdpo"]["overall"]["pairs"]
    low, high = figures["tdpo"]["overall"]["implicit_acc_interval"]
    assert low <= figures["tdpo"]["overall"]["implicit_acc"] <= high
    # an identical model ties the reference on every comparison
    assert figures["twin"]["overall"]["implicit_acc"] == 0.5 and figures["twin"]["overall"]["implicit_margin"] == 0.0
    assert figures["twin"]["overall"]["acc"] == figures["base"]["overall"]["acc"]
    assert figures["moved"]["overall"]["implicit_margin"] != 0.0
    n = figures["base"]["overall"]["n"]
    assert n == result.pairs * 2 * 2  # pairs x timesteps x draws
    for breakdown in ("by_principle", "by_timestep", "by_edits"):
        assert sum(g["n"] for g in figures["moved"][breakdown].values()) == n, breakdown
    assert set(figures["base"]["by_timestep"]) == {"300", "700"}
    assert set(figures["base"]["by_principle"]) <= {"content", "attribute", "spatial", "contextual"}

    again = run_implicit(eval_cfg)
    assert again.reused and again.summary == result.summary
    other = run_implicit(with_models(cfg, dict(eval_cfg.eval.models), baseline="twin"))  # no U-Net runs again
    assert other.reused and other.summary["reference"] == "twin"
    assert other.summary["figures"]["base"]["overall"]["implicit_acc"] == 0.5  # identical to the new reference
    assert other.summary["figures"]["tdpo"]["overall"]["acc"] == figures["tdpo"]["overall"]["acc"]
    fewer = run_implicit(with_models(cfg, {"base": "tiny:sd15", "twin": "tiny:sd15"}, max_pairs=3))
    assert not fewer.reused and fewer.pairs == 3


def test_report_opens_in_chromium_with_every_image_and_a_row_per_model(trained, tmp_path: Path) -> None:
    from tpo_ray.eval.report import run_report
    from tpo_ray.eval.sample_job import run_sample
    from tpo_ray.eval.score_job import run_score
    from tpo_ray.models.tiny import save_tiny_clip

    cfg, run, moved = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square on the left\ntwo green triangles\n")
    clip = save_tiny_clip(tmp_path / "clip")
    models = {"base": "tiny:sd15", "same": "tiny:sd15", "tdpo": run.checkpoint}
    cfg = with_models(cfg, models, prompts=str(prompts), num_inference_steps=2, scorers=["clip", "pickscore"],
                      scorer_weights={"clip": str(clip), "pickscore": str(clip)}, output=str(tmp_path / "eval"))
    run_implicit(cfg)
    sample_cfg = with_models(cfg, {"base": "tiny:sd15", "same": "tiny:sd15"})  # sampling needs pipelines
    run_sample(sample_cfg)
    run_score(sample_cfg)
    report = run_report(cfg)
    page = Path(report.index)
    assert report.images == 6 and report.missing == []
    seen = rendered(page)
    assert len(seen["images"]) == report.images + report.plots
    broken = [i["src"] for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert seen["tables"]["winrates"] == 2  # the baseline and "same"
    assert seen["tables"]["implicit"] == len(models)
    assert report.test_scale and seen["boxes"]["summary"]["bottom"] <= 900  # tiny models, warned above the fold
    png = screenshot(page, tmp_path / "report.png")
    from PIL import Image

    shot = Image.open(png).convert("L")
    assert shot.size == (1400, 2400) and len(np.unique(np.asarray(shot))) > 20  # a rendered page, not a blank one
