"""Which stages a pipeline runs, with which config each: built and checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo_ray.config import ConfigError, config_from_dict, load_config
from tpo_ray.pipeline import stage_configs

RECIPES = Path(__file__).parents[2] / "jobs" / "configs"


def cfg(pipeline: dict, **top) -> object:
    return config_from_dict({"output_dir": "/tmp/p", "pipeline": pipeline, **top}, "test")


def test_the_preference_stage_starts_from_the_sft_export_and_overrides_apply_per_stage() -> None:
    stages = stage_configs(cfg({"stages": ["negatives", "sft", "preference", "tune"],
                                "sft": {"train.lr": 1e-5, "train.max_steps": 7},
                                "preference": {"train.loss": {"name": "tkto"}}, "tune": {"train.max_steps": 3}}))
    assert list(stages) == ["negatives", "sft", "preference", "tune"]
    sft, pref, tune = stages["sft"], stages["preference"], stages["tune"]
    assert (sft.train.loss.name, sft.train.lr, sft.train.max_steps) == ("sft", 1e-5, 7)
    assert sft.export.output == "/tmp/p/export-sft"
    assert pref.train.loss.name == "tkto" and pref.train.init_from == "/tmp/p/export-sft/unet"
    assert pref.train.lr == 1e-4 and pref.train.max_steps == 20  # the recipe's own values
    assert tune.train.init_from == "/tmp/p/export-sft/unet" and tune.train.max_steps == 3


def test_without_sft_the_preference_stage_starts_from_the_recipe() -> None:
    stages = stage_configs(cfg({"stages": ["preference"]}, train={"init_from": "/models/unet"}))
    assert list(stages) == ["preference"] and stages["preference"].train.init_from == "/models/unet"


@pytest.mark.parametrize("pipeline,top,message", [
    ({"sft": {"train.lr": -1}}, {}, r"pipeline.sft.*train.lr"),
    ({"preference": {"train.loss": {"name": "sft"}}}, {}, "pipeline.preference trains train.loss.name='sft'"),
    ({}, {"output_dir": "s3://bucket/run"}, r"pipeline.sft: the export is written to a local or shared folder"),
    ({"stages": ["sft", "negatives"]}, {}, "expected stages in the order"),
    ({"stages": []}, {}, "expected stages in the order"),
])
def test_a_pipeline_that_cannot_run_fails_before_any_work(pipeline, top, message) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        stage_configs(config_from_dict({"output_dir": "/tmp/p", **top, "pipeline": pipeline}, "test"))


@pytest.mark.parametrize("name", ["sd15_tdpo", "sdxl_tdpo"])
def test_the_gpu_recipes_are_pipelines_that_build(name: str) -> None:
    stages = stage_configs(load_config(RECIPES / f"{name}.yaml"))
    assert "preference" in stages and stages["preference"].train.loss.name == "tdpo"
    if name == "sd15_tdpo":  # the paper's recipe: SFT lr 1e-5, global batch 256, 17,500 steps; TDPO batch 16
        sft, tdpo = stages["sft"], stages["preference"]
        global_batch = lambda c: c.train.batch_size * c.train.grad_accum_steps * c.train.scaling.num_workers  # noqa: E731
        assert (sft.train.lr, global_batch(sft), sft.train.max_steps) == (1e-5, 256, 17500)
        assert (tdpo.train.lr, global_batch(tdpo), tdpo.train.loss.beta) == (1e-6, 16, 5000)
        assert tdpo.train.init_from == f"{sft.export.output}/unet"



def test_the_eval_stage_compares_base_sft_and_the_preference_model_against_sft() -> None:
    stages = stage_configs(cfg({"stages": ["sft", "preference", "eval", "report"],
                                "preference": {"train.loss": {"name": "tkto"}},
                                "eval": {"eval.max_prompts": 3}}, eval={"scorers": []}))
    evaluated = stages["eval"]
    assert stages["report"] is evaluated
    assert evaluated.eval.models == {"base": "tiny:sd15", "sft": "/tmp/p/export-sft", "tkto": "/tmp/p/export"}
    assert evaluated.eval.baseline == "sft" and evaluated.eval.max_prompts == 3
    assert evaluated.train.loss.name == "tkto" and evaluated.data_kind() == "triplet"  # its cache's held-out pairs
    mine = stage_configs(cfg({"stages": ["eval"]}, eval={"scorers": [], "models": {"a": "/x", "b": "/y"}}))
    assert mine["eval"].eval.models == {"a": "/x", "b": "/y"} and mine["eval"].eval.baseline is None


def test_an_eval_stage_with_a_scorer_but_no_weights_fails_before_any_work() -> None:
    with pytest.raises(ValueError, match=r"eval.scorers \['clip'\] have no weights in eval.scorer_weights"):
        stage_configs(cfg({"stages": ["sft", "preference", "eval"]}))


def test_the_scene_scorer_needs_prompts_of_the_scene_grammar_and_no_weights() -> None:
    with pytest.raises(ValueError, match=r"scene, which reads prompts of the scene grammar, but 1800 of "
                                         r"eval.prompts='t2i_compbench' are not"):
        stage_configs(cfg({"stages": ["eval"]}, eval={"scorers": ["scene"]}))
    scenes = stage_configs(cfg({"stages": ["eval"]}, eval={"scorers": ["scene"], "prompts": "scenes"}))
    assert scenes["eval"].eval.scorers == ["scene"] and not scenes["eval"].eval.scorer_weights


def test_a_style_prompt_set_needs_the_clip_weights_of_the_style_eval() -> None:
    with pytest.raises(ValueError, match=r"\['clip'\] have no weights.*the style eval needs clip's"):
        stage_configs(cfg({"stages": ["eval"]}, eval={"scorers": [], "prompts": "styles"}))
    styled = stage_configs(cfg({"stages": ["eval"]}, eval={"scorers": [], "prompts": "styles",
                                                             "scorer_weights": {"clip": "/models/clip"}}))
    assert styled["eval"].eval.prompts == "styles"


def test_models_set_in_pipeline_eval_get_no_default_baseline_and_a_missing_baseline_fails_early() -> None:
    stages = stage_configs(cfg({"stages": ["sft", "preference", "eval"],
                                "eval": {"eval.models": {"base": "tiny:sd15", "mine": "/exports/mine"}}},
                               eval={"scorers": []}))
    assert stages["eval"].eval.models == {"base": "tiny:sd15", "mine": "/exports/mine"}
    assert stages["eval"].eval.baseline is None
    with pytest.raises(ValueError, match=r"eval.baseline='sft' is not one of eval.models \['base', 'mine'\]"):
        stage_configs(cfg({"stages": ["eval"], "eval": {"eval.baseline": "sft"}},
                          eval={"scorers": [], "models": {"base": "tiny:sd15", "mine": "/exports/mine"}}))


def test_the_pipelines_eval_reads_as_many_held_out_pairs_as_trainings_final_eval() -> None:
    """One model, one "final" accuracy: the report and the MLflow curve beside it read the same pairs."""
    stages = stage_configs(cfg({"stages": ["preference", "eval"]}, train={"init_from": "/m/unet", "eval_max_pairs": 24},
                               eval={"scorers": []}))
    assert stages["eval"].eval.max_pairs == 24
    chosen = stage_configs(cfg({"stages": ["preference", "eval"], "eval": {"eval.max_pairs": 7}},
                               train={"init_from": "/m/unet", "eval_max_pairs": 24}, eval={"scorers": []}))
    assert chosen["eval"].eval.max_pairs == 7  # a value the user set wins


def test_eval_samples_with_real_numbers_of_steps_and_each_familys_guidance() -> None:
    ev = config_from_dict({}, "defaults").eval
    assert ev.num_inference_steps == 50 and ev.guidance_scale is None
    assert (ev.guidance("sd15"), ev.guidance("sdxl")) == (7.5, 5.0)
    assert config_from_dict({"eval": {"guidance_scale": 3.0}}, "t").eval.guidance("sdxl") == 3.0
