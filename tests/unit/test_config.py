"""Config loading: defaults run, overrides apply, bad input fails early naming the file and field."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tpo_ray.config import (
    LOSS_CONFIGS,
    ConfigError,
    TDPOLossConfig,
    apply_overrides,
    flatten_config,
    load_config,
    parse_override,
)
from tpo_ray.losses import LOSSES


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_pick_tdpo_with_frozen_reference() -> None:
    cfg = load_config()
    assert cfg.train.loss.name == "tdpo" and cfg.train.loss.beta == 5000.0 and cfg.train.loss.tau is None
    assert cfg.resolved_reference() == "frozen_copy"


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 1.0e-6\n  loss:\n    name: tkto\n    beta: 3000\n")
    cfg = load_config(path, ["train.loss.tau=0.001", "train.loss.kl_mode=undesirable", "model.lora.enabled=true"])
    assert cfg.train.lr == 1e-6
    assert cfg.train.loss.name == "tkto" and cfg.train.loss.beta == 3000 and cfg.train.loss.tau == 0.001
    assert cfg.train.loss.kl_mode == "undesirable"
    assert cfg.resolved_reference() == "lora_off"


def test_override_of_loss_field_without_name_uses_default_loss() -> None:
    assert load_config(None, ["train.loss.beta=2000"]).train.loss == TDPOLossConfig(beta=2000)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.loss.beta=-1", "train.loss.beta: Input should be greater than 0"),
        ("train.loss.beta=0", "train.loss.beta: Input should be greater than 0"),
        ("train.loss.tau=-0.5", "train.loss.tau: Input should be greater than or equal to 0"),
        ("train.lr=abc", "train.lr: Input should be a valid number"),
        ("train.bogus=1", "train.bogus: unknown key"),
        ("train.loss.name=nope", "does not match any of the expected tags: 'sft', 'dpo', 'tdpo'"),
        ("train.loss.clip=bogus", "unknown clip 'bogus'"),
        ("data.resolution=100", "multiple of 8"),
        ("negatives.max_edits=4", "negatives.max_edits"),
        ("model.reference=none", "needs reference errors"),
        ("model.reference=lora_off", "needs model.lora.enabled=true"),
        ("train.mixed_precision=fp16", "needs train.backend='deepspeed'"),
        ("negatives.editor=vllm", "needs negatives.llm.model"),
        ("negatives.editor=openai", "needs negatives.llm.base_url"),
    ],
)
def test_bad_values_fail_with_the_field(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert str(err.value).startswith("<defaults> + overrides:")


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  loss:\n    name: dpo\n    tau: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: train.loss.tau: unknown key"):
        load_config(path)


def test_missing_file_bad_yaml_and_bad_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_syntax_errors() -> None:
    for bad in ("train.lr", "=3", "train..lr=1"):
        with pytest.raises(ConfigError, match="dotted.key=value"):
            parse_override(bad)
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])


def test_reference_free_losses_accept_no_reference() -> None:
    for name in ("mapo", "sft"):
        cfg = load_config(None, [f"train.loss.name={name}", "model.reference=none"])
        assert cfg.resolved_reference() == "none"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_config_feeds_its_loss_function(name: str) -> None:
    cfg = LOSS_CONFIGS[name]()
    accepted = inspect.signature(LOSSES[name]).parameters
    kwargs = cfg.loss_kwargs()
    assert set(kwargs) <= set(accepted)
    for key, value in kwargs.items():  # config defaults are the paper defaults of LOSSES.md
        assert accepted[key].default == value


def test_flatten_config_gives_dotted_keys() -> None:
    flat = flatten_config(load_config())
    assert flat["train.loss.beta"] == 5000.0 and flat["model.pretrained"] == "tiny:sd15"


def test_a_section_given_twice_is_an_error_not_a_silent_merge(tmp_path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 1.0e-5\ndata:\n  resolution: 64\ntrain:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"key 'train' appears twice \(first at line 1\)"):
        load_config(path)


@pytest.mark.parametrize(("override", "field", "message"), [
    ("train.batch_size=true", "train.batch_size", "boolean"),
    ("train.loss.beta=.inf", "train.loss.beta", "finite"),
    ("train.lr=.inf", "train.lr", "finite"),
    ("train.max_grad_norm=.nan", "train.max_grad_norm", "finite"),
    ("eval.timesteps=[5000, -3]", "eval.timesteps", r"\[0, 1000\), got \[5000, -3\]"),
    ("eval.timesteps=[]", "eval.timesteps", r"\[0, 1000\)"),
])
def test_values_yaml_accepts_but_no_run_can_use_fail_naming_the_field(override, field, message) -> None:
    with pytest.raises(ConfigError, match=f"{field}: .*{message}"):
        load_config(None, [override])


def test_booleans_stay_valid_where_booleans_belong() -> None:
    cfg = load_config(None, ["model.lora.enabled=true", "data.center_crop=false", "train.max_grad_norm=null"])
    assert cfg.model.lora.enabled is True and cfg.data.center_crop is False and cfg.train.max_grad_norm is None


def test_the_loss_registry_is_checked_against_the_configs_when_first_needed(monkeypatch) -> None:
    """`import tpo_ray.config` leaves torch alone; the first validation that needs the registry imports it and
    checks it once: a loss without a config (or a config without a loss) is refused, naming both lists."""
    from tpo_ray import config

    config.loss_registry.cache_clear()
    monkeypatch.delitem(config.LOSS_CONFIGS, "rpo")
    with pytest.raises(ImportError, match="do not match registered losses"):
        config.loss_registry()
    monkeypatch.undo()
    config.loss_registry.cache_clear()
    assert set(config.loss_registry().LOSSES) == set(config.LOSS_CONFIGS)
