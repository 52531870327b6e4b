"""Optimizers and LR schedules from config: hand-computed multipliers, choices, and clear refusals."""

from __future__ import annotations

import math

import pytest
import torch

from tpo_ray.config import ConfigError, TrainConfig, load_config
from tpo_ray.train.optim import build_lr_scheduler, build_optimizer, lr_multiplier


def test_warmup_then_constant() -> None:
    assert [lr_multiplier(s, 4, 100, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_multiplier(0, 0, 100, "constant") == 1.0


def test_linear_and_cosine_decay_to_zero_at_max_steps() -> None:
    # warmup 10, total 110: decay over 100 steps after warmup
    assert lr_multiplier(10, 10, 110, "linear") == 1.0
    assert lr_multiplier(60, 10, 110, "linear") == pytest.approx(0.5)
    assert lr_multiplier(110, 10, 110, "linear") == 0.0
    assert lr_multiplier(60, 10, 110, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(35, 10, 110, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_multiplier(500, 10, 110, "cosine") == pytest.approx(0.0, abs=1e-12)  # past max_steps: stays at 0


def test_scheduler_follows_the_multiplier() -> None:
    cfg = TrainConfig(lr=1e-3, lr_warmup_steps=2, lr_scheduler="linear", max_steps=6)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_optimizer_choices() -> None:
    model = torch.nn.Linear(4, 4)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adafactor")), torch.optim.Adafactor)
    assert isinstance(build_optimizer(model, TrainConfig()), torch.optim.AdamW)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs bitsandbytes: pip install bitsandbytes"):
            build_optimizer(model, TrainConfig(optimizer="adamw_8bit"))


@pytest.mark.parametrize("overrides,field", [
    (["train.backend=deepspeed", "train.deepspeed.offload_optimizer=true", "train.optimizer=adamw_8bit"],
     "cannot run with train.deepspeed.offload_optimizer"),
    # ZeRO flattens the weights: Adafactor would silently be another optimizer (unfactored, world-size dependent)
    (["train.backend=deepspeed", "train.deepspeed.zero_stage=2", "train.optimizer=adafactor"],
     r"train.optimizer='adafactor' cannot run under train.backend='deepspeed'"),
    (["train.backend=deepspeed", "train.deepspeed.zero_stage=3", "train.optimizer=adamw_8bit"],
     "needs whole parameters"),
])
def test_optimizer_backend_mismatch_fails_at_load(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config(None, overrides)
