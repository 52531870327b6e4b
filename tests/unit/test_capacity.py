"""benchmarks/capacity.py: its arithmetic against hand-computed values, its method table against the
loss registry, and its meta-device FLOP count on a tiny U-Net."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tpo_ray.losses import LOSS_SPECS

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "capacity.py"
_SPEC = importlib.util.spec_from_file_location("capacity", _PATH)
capacity = importlib.util.module_from_spec(_SPEC)
sys.modules["capacity"] = capacity  # dataclasses look their module up while the class is built
_SPEC.loader.exec_module(capacity)

F = 1e12  # one forward of one row


def test_tdpo_example_is_three_policy_passes_per_row_plus_a_reference_forward_per_row():
    tdpo = capacity.METHODS["tdpo"]
    assert capacity.flops_per_example(tdpo, F, 2 * F, reference=True) == 8 * F  # 2 x (F + 2F) + 2 x F
    assert capacity.flops_per_example(tdpo, F, 2 * F, reference=False) == 6 * F


@pytest.mark.parametrize(("method", "online", "precomputed"), [
    ("sft", 3.0, 3.0), ("kto", 4.0, 3.0), ("mapo", 6.0, 6.0), ("tkto", 8.0, 6.0), ("rpo", 8.0, 6.0)])
def test_flops_per_example_of_each_layout(method, online, precomputed):
    spec = capacity.METHODS[method]
    assert capacity.flops_per_example(spec, F, 2 * F, reference=True) == online * F
    assert capacity.flops_per_example(spec, F, 2 * F, reference=False) == precomputed * F


def test_method_table_names_the_registered_losses_and_their_reference_needs():
    assert set(capacity.METHODS) == set(LOSS_SPECS)
    for name, spec in LOSS_SPECS.items():
        assert (capacity.METHODS[name].reference_rows > 0) == spec.needs_reference, name
        assert capacity.METHODS[name].policy_rows == (1 if spec.data in ("single", "labelled") else 2), name


def test_examples_per_second_is_achieved_flop_rate_over_flops_per_example():
    # 0.4 x 989 TFLOP/s / 8 TFLOP = 49.45 pairs/s
    assert capacity.examples_per_second(0.4, 989e12, 8e12) == pytest.approx(49.45)


def test_largest_micro_batch_floors_what_fits_in_the_headroom():
    # 0.9 x 100 = 90 bytes; 90 - 20 fixed = 70; 70 // 8 per pair = 8
    assert capacity.largest_micro_batch(100, 0.9, 20, 8) == 8
    assert capacity.largest_micro_batch(100, 0.9, 26, 8) == 8  # 64 / 8 exactly
    assert capacity.largest_micro_batch(100, 0.9, 27, 8) == 7
    assert capacity.largest_micro_batch(100, 0.9, 95, 8) == 0  # not even the fixed part fits


def test_zero_model_states_follow_deepspeed_estimators():
    params, largest, gpus = 800, 100, 8
    # ZeRO-2: 2 bytes bf16 params + 18 bytes/param partitioned (grads, fp32 master, Adam moments)
    assert capacity.zero_model_states_bytes(2, params, largest, gpus, 1) == 2 * 800 + 18 * 800 // 8
    # ZeRO-1: bf16 gradients not partitioned: 2 + 2 bytes/param + 16 bytes/param partitioned
    assert capacity.zero_model_states_bytes(1, params, largest, gpus, 1) == 2 * 800 + 2 * 800 + 16 * 800 // 8
    # ZeRO-3: everything partitioned, plus the largest layer gathered (4 bytes/param)
    assert capacity.zero_model_states_bytes(3, params, largest, gpus, 1) == 4 * 100 + 18 * 800 // 8
    # one GPU: ZeRO-1 = ZeRO-2
    assert capacity.zero_model_states_bytes(1, params, largest, 1, 1) == capacity.zero_model_states_bytes(
        2, params, largest, 1, 1) == 20 * 800


def test_reference_weights_replicated_partitioned_or_absent():
    assert capacity.reference_weights_bytes(1, 800, 8, reference=True) == 1600
    assert capacity.reference_weights_bytes(2, 800, 8, reference=True) == 1600
    assert capacity.reference_weights_bytes(3, 800, 8, reference=True) == 200
    assert capacity.reference_weights_bytes(2, 800, 8, reference=False) == 0


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return unet.to(torch.bfloat16)


def _tiny_inputs(rows: int) -> dict:
    with torch.device("meta"):
        return {"sample": torch.empty(rows, 4, 8, 8, dtype=torch.bfloat16),
                "timestep": torch.zeros(rows, dtype=torch.long),
                "encoder_hidden_states": torch.empty(rows, 77, 32, dtype=torch.bfloat16)}


def test_meta_flop_count_is_positive_and_linear_in_batch():
    unet = _tiny_unet()
    forward1, backward1 = capacity.count_flops(unet, _tiny_inputs(1))
    forward2, backward2 = capacity.count_flops(unet, _tiny_inputs(2))
    assert forward1 > 0 and backward1 > 0
    assert (forward2, backward2) == (2 * forward1, 2 * backward1)
    assert 1.5 * forward1 < backward1 < 2.5 * forward1  # weight and activation gradients, measured


def test_checkpointing_keeps_less_than_the_plain_forward_saves():
    unet = _tiny_unet()
    plain = capacity.saved_activation_bytes(unet, _tiny_inputs(2))
    kept, recompute = capacity.checkpointed_activation_bytes(unet, _tiny_inputs(2))
    assert 0 < kept < plain and 0 < recompute < plain
    assert capacity.saved_activation_bytes(unet, _tiny_inputs(2)) == plain  # checkpointing switched off again
