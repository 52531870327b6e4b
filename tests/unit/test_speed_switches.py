"""The speed switches in config (`train.channels_last`, `train.fused_optimizer`, `train.compile`) change
how the step runs, never what it computes: each against the plain path on the same inputs."""

from __future__ import annotations

import copy

import pytest
import torch

from tpo_ray.config import TrainConfig, config_from_dict
from tpo_ray.models.tiny import _unet
from tpo_ray.train.backend import TorchBackend
from tpo_ray.train.worker import compile_unet, load_unet


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 77, 32, generator=g))


def _one_step(unet, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    backend = TorchBackend(unet, cfg, wrap=lambda m: m)
    x, t, e = _inputs()
    backend.backward(unet(x, t, e).sample.pow(2).mean(), 1)
    backend.update()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_fused_adamw_takes_the_same_step() -> None:
    torch.manual_seed(0)
    unet = _unet(32, False)
    plain = _one_step(copy.deepcopy(unet), TrainConfig(lr=1e-3, fused_optimizer=False))
    fused_unet = copy.deepcopy(unet)
    fused = _one_step(fused_unet, TrainConfig(lr=1e-3, fused_optimizer=True))
    moved = max(float((plain[k] - unet.state_dict()[k]).abs().max()) for k in plain)
    assert moved > 1e-4  # the step did move the weights
    for k in plain:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-6)


def test_channels_last_weights_give_the_same_errors(tiny_model_dirs) -> None:
    base = {"model": {"pretrained": str(tiny_model_dirs["sd15"])}}
    plain, _ = load_unet(config_from_dict(base, "test"), torch.device("cpu"))
    nhwc, _ = load_unet(config_from_dict({**base, "train": {"channels_last": True}}, "test"), torch.device("cpu"))
    assert nhwc.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, _ = _inputs()
    e = torch.randn(2, 77, plain.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x, t, e).sample, plain(x, t, e).sample, rtol=1e-4, atol=1e-5)


def test_compile_keeps_the_module_its_weights_and_its_outputs() -> None:
    torch.manual_seed(0)
    unet = _unet(32, False)
    eager = copy.deepcopy(unet)
    keys = list(unet.state_dict())
    compiled = compile_unet(unet, True, backend="eager")  # the wiring; inductor's own codegen is torch's to test
    assert compiled is unet and unet._compiled_call_impl is not None
    assert list(unet.state_dict()) == keys  # checkpoints and exports see the same names
    x, t, e = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, e).sample, eager(x, t, e).sample)
    assert compile_unet(eager, False)._compiled_call_impl is None


@pytest.mark.parametrize("train,field", [
    ({"compile": True, "backend": "deepspeed"}, "train.compile=true runs with train.backend='ddp'"),
    ({"fused_optimizer": True, "optimizer": "adafactor"}, "train.fused_optimizer=true"),
    ({"fused_optimizer": True, "backend": "deepspeed", "deepspeed": {"offload_optimizer": True}},
     "offload_optimizer"),
])
def test_switches_that_cannot_run_fail_naming_the_field(train, field) -> None:
    with pytest.raises(ValueError, match=field):
        config_from_dict({"train": train}, "test")


def test_fused_adamw_is_the_default_where_it_was_measured_to_help() -> None:
    assert TrainConfig().fused_adamw()  # ddp + adamw
    assert not TrainConfig(backend="deepspeed").fused_adamw()
    assert not TrainConfig(optimizer="adafactor").fused_adamw()
    assert TrainConfig(backend="deepspeed", fused_optimizer=True).fused_adamw()
    optimizer = TorchBackend(_unet(32, False), TrainConfig(), wrap=lambda m: m).optimizer
    assert optimizer.param_groups[0]["fused"] is True
