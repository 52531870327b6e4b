"""The training step on tiny SD1.5/SDXL models: invariants at init, one forward, learning."""

from __future__ import annotations

import math

import pytest
import torch

from tpo_ray.config import LOSS_CONFIGS, ModelConfig, TrainConfig
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.losses import LOSS_SPECS, LOSSES, LossOutput
from tpo_ray.models.encoding import attach_time_ids, encode_captions, encode_images
from tpo_ray.models.loading import load_components
from tpo_ray.models.reference import build_reference
from tpo_ray.train.backend import TorchBackend
from tpo_ray.train.loop import GuardState, NonFiniteLossError, optimizer_step
from tpo_ray.train.step import (
    StepBatch,
    TrainingStep,
    draw_noise,
    image_pair_batch,
    sample_batch,
    triplet_batch,
)

LOG2 = math.log(2.0)


def load(tiny_model_dirs, family: str, prediction_type: str = "epsilon"):
    return load_components(ModelConfig(pretrained=str(tiny_model_dirs[family]), prediction_type=prediction_type))


def encode(comps, n: int = 4, seed: int = 0):
    rows = synthetic_table(2 * n, 64, seed=seed).to_pylist()
    x0, time_ids = encode_images(comps, [r["image"] for r in rows], 64, generator=torch.Generator().manual_seed(0))
    caps = [r["caption"] for r in rows]
    cond_w = attach_time_ids(encode_captions(comps, caps), time_ids)
    # A deliberately wrong caption per image: the caption of another image.
    cond_l = attach_time_ids(encode_captions(comps, caps[1:] + caps[:1]), time_ids)
    return x0[:n], cond_w.map(lambda x: x[:n]), cond_l.map(lambda x: x[:n]), x0[n:]


def batch_for(name: str, x0, cond_w, cond_l, x0_other) -> StepBatch:
    spec = LOSS_SPECS[name]
    if spec.inputs == "single":
        return sample_batch(x0, cond_w)
    if name == "kto":
        y = torch.tensor([1.0, -1.0] * (x0.shape[0] // 2))
        return sample_batch(x0, cond_w, y)
    if name in ("tdpo", "tkto"):
        return triplet_batch(x0, cond_w, cond_l)
    emb = cond_w.prompt_embeds.mean(dim=1) if spec.needs_embeddings else None
    return image_pair_batch(x0, x0_other, cond_w, emb=emb)


def make_step(comps, name: str, **loss_kw) -> TrainingStep:
    loss_cfg = LOSS_CONFIGS[name](**loss_kw)
    kind = "frozen_copy" if LOSS_SPECS[name].needs_reference else "none"
    return TrainingStep(comps.unet, build_reference(kind, comps.unet), comps.noise_scheduler, loss_cfg)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_tdpo_at_initialisation_is_log2(tiny_model_dirs, family: str, prediction_type: str) -> None:
    comps = load(tiny_model_dirs, family, prediction_type)
    x0, cond_w, cond_l, _ = encode(comps)
    out = make_step(comps, "tdpo")(triplet_batch(x0, cond_w, cond_l), torch.Generator().manual_seed(1))
    assert float(out.loss.detach()) == pytest.approx(LOG2, abs=1e-6)
    assert out.metrics["implicit_acc"] == 0.5
    assert out.metrics["m_w"] == out.metrics["r_w"] and out.metrics["m_l"] == out.metrics["r_l"]


def test_tkto_at_initialisation_is_half(tiny_model_dirs) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, _ = encode(comps)
    out = make_step(comps, "tkto")(triplet_batch(x0, cond_w, cond_l), torch.Generator().manual_seed(1))
    assert float(out.loss.detach()) == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_through_the_step_with_one_policy_forward(tiny_model_dirs, name: str) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, x0_other = encode(comps)
    step = make_step(comps, name)
    batch_sizes: list[int] = []
    handle = comps.unet.register_forward_pre_hook(lambda mod, args: batch_sizes.append(args[0].shape[0]))
    try:
        out = step(batch_for(name, x0, cond_w, cond_l, x0_other), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert isinstance(out, LossOutput) and torch.isfinite(out.loss)
    out.loss.backward()
    expected_rows = 4 if LOSS_SPECS[name].inputs == "single" or name == "kto" else 8
    assert batch_sizes == [expected_rows]  # the policy U-Net ran once, on the whole concatenated batch


def test_draw_noise_shares_eps_and_t_within_pairs() -> None:
    x0 = torch.zeros(6, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    shared = draw_noise(x0, paired=True, share=True, one_timestep=False, num_timesteps=1000, generator=g)
    assert torch.equal(shared.eps[:3], shared.eps[3:]) and torch.equal(shared.t[:3], shared.t[3:])
    assert not torch.equal(shared.eps[0], shared.eps[1])
    apart = draw_noise(x0, paired=True, share=False, one_timestep=False, num_timesteps=1000, generator=g)
    assert not torch.equal(apart.eps[:3], apart.eps[3:])
    one_t = draw_noise(x0, paired=True, share=True, one_timestep=True, num_timesteps=1000, generator=g)
    assert one_t.t.unique().numel() == 1 and one_t.t.shape == (6,)
    assert int(shared.t.max()) < 1000 and int(shared.t.min()) >= 0


def test_shared_timestep_for_rpo(tiny_model_dirs) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, x0_other = encode(comps)
    seen: list[torch.Tensor] = []
    handle = comps.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    try:
        make_step(comps, "rpo")(batch_for("rpo", x0, cond_w, cond_l, x0_other), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert seen[0].unique().numel() == 1


def test_pair_losses_refuse_unpaired_batches(tiny_model_dirs) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, _, _ = encode(comps)
    with pytest.raises(ValueError, match="needs paired batches"):
        make_step(comps, "tdpo")(sample_batch(x0, cond_w))


def test_kto_z0_uses_the_all_reduced_sums(tiny_model_dirs) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, _ = encode(comps)
    seen: list[torch.Tensor] = []

    def fake_all_reduce(x: torch.Tensor) -> torch.Tensor:  # another worker contributing sum 1.0 over 8 rows
        seen.append(x.clone())
        return x + torch.tensor([1.0, 8.0])

    loss_cfg = LOSS_CONFIGS["tkto"]()
    step = TrainingStep(comps.unet, build_reference("frozen_copy", comps.unet), comps.noise_scheduler, loss_cfg,
                        all_reduce_sum=fake_all_reduce)
    out = step(triplet_batch(x0, cond_w, cond_l), torch.Generator().manual_seed(0))
    assert seen[0].tolist() == [0.0, 8.0]  # policy == reference: local sum 0 over 8 samples
    assert out.metrics["z0"] == pytest.approx(1.0 / 16)


def test_tkto_rolled_mode_runs_extra_no_grad_forwards(tiny_model_dirs) -> None:
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, _ = encode(comps)
    out = make_step(comps, "tkto", kl_mode="rolled")(triplet_batch(x0, cond_w, cond_l), torch.Generator().manual_seed(0))
    assert out.metrics["z0"] == 0.0 and float(out.loss.detach()) == pytest.approx(0.5, abs=1e-7)


def _train(step, batch, unet, steps: int, lr: float) -> None:
    backend = TorchBackend(unet, TrainConfig(lr=lr, weight_decay=0.0, max_grad_norm=1.0), wrap=lambda m: m)
    guard = GuardState()
    for i in range(steps):
        optimizer_step(step, [batch], backend, guard=guard, max_consecutive_nonfinite=3, step_index=i,
                       generators=[torch.Generator().manual_seed(i % 4)])


def _evaluate(step, batch) -> tuple[float, float]:
    with torch.no_grad():
        outs = [step(batch, torch.Generator().manual_seed(s)) for s in range(4)]
    return (sum(float(o.loss) for o in outs) / 4, sum(o.metrics["implicit_acc"] for o in outs) / 4)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_twenty_tdpo_steps_learn_the_preference(tiny_model_dirs, family: str) -> None:
    comps = load(tiny_model_dirs, family)
    x0, cond_w, cond_l, _ = encode(comps, n=8)
    step = make_step(comps, "tdpo")
    batch = triplet_batch(x0, cond_w, cond_l)
    loss0, acc0 = _evaluate(step, batch)
    _train(step, batch, comps.unet, steps=20, lr=1e-4)
    loss1, acc1 = _evaluate(step, batch)
    assert loss0 == pytest.approx(LOG2, abs=1e-6) and acc0 == 0.5
    assert loss1 < loss0 - 0.05
    assert acc1 > 0.6


class ToyBackend(TorchBackend):
    def __init__(self, p: torch.nn.Parameter, max_grad_norm: float | None) -> None:
        module = torch.nn.Module()
        module.p = p
        super().__init__(module, TrainConfig(lr=1.0, weight_decay=0.0, max_grad_norm=max_grad_norm), wrap=lambda m: m)
        self.optimizer = torch.optim.SGD([p], lr=1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)


def test_nonfinite_loss_is_skipped_then_stops_the_run() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    backend = ToyBackend(p, max_grad_norm=1.0)
    guard = GuardState()
    values = iter([float("nan"), 1.0, float("inf"), float("nan")])

    def step_fn(batch, gen):
        return LossOutput((p * next(values)).sum(), {"loss": 0.0})

    kw = dict(guard=guard, max_consecutive_nonfinite=2)
    assert optimizer_step(step_fn, [None], backend, step_index=1, **kw) == {"skipped_nonfinite": 1.0}
    assert torch.equal(p.detach(), torch.ones(2))
    optimizer_step(step_fn, [None], backend, step_index=2, **kw)
    assert guard.consecutive == 0 and not torch.equal(p.detach(), torch.ones(2))
    optimizer_step(step_fn, [None], backend, step_index=3, **kw)
    with pytest.raises(NonFiniteLossError, match=r"step 4: loss was non-finite for 2 steps in a row"):
        optimizer_step(step_fn, [None], backend, step_index=4, **kw)


def test_nonfinite_on_another_rank_skips_here_too() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    backend = ToyBackend(p, max_grad_norm=None)
    out = optimizer_step(lambda b, g: LossOutput(p.sum(), {"loss": 1.0}), [None], backend, guard=GuardState(),
                         max_consecutive_nonfinite=3, step_index=1, all_reduce_min=lambda x: x * 0)
    assert out == {"skipped_nonfinite": 1.0} and torch.equal(p.detach(), torch.ones(2))


def test_gradient_accumulation_averages_micro_batches() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    backend = ToyBackend(p, max_grad_norm=None)
    weights = iter([1.0, 3.0])

    def step_fn(batch, gen):
        w = next(weights)
        return LossOutput((p * w).sum(), {"loss": w})

    metrics = optimizer_step(step_fn, [None, None], backend, guard=GuardState(), max_consecutive_nonfinite=3,
                             step_index=1)
    assert float(p.detach()) == pytest.approx(-2.0)  # mean gradient (1 + 3) / 2
    assert metrics["loss"] == pytest.approx(2.0) and metrics["grad_norm"] == pytest.approx(2.0)


def test_unet_inputs_follow_its_weights_dtype_but_time_ids_and_errors_stay_fp32() -> None:
    """Under a bf16 engine only what enters the layers is bf16: SDXL time id 1365 stays 1365 (bf16: 1368)."""
    from types import SimpleNamespace

    from tpo_ray.models.conditioning import Conditioning
    from tpo_ray.models.denoise import denoising_errors

    seen = {}

    class RecordingUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))

        def forward(self, x, t, encoder_hidden_states, added_cond_kwargs):
            seen.update(x=x.dtype, states=encoder_hidden_states.dtype, pooled=added_cond_kwargs["text_embeds"].dtype,
                        time_ids=added_cond_kwargs["time_ids"])
            return SimpleNamespace(sample=x * self.w)

    assert torch.tensor(1365.0).to(torch.bfloat16).item() == 1368.0  # why time ids must not be cast
    time_ids = torch.tensor([[1024.0, 1365.0, 0.0, 0.0, 1024.0, 1024.0]])
    cond = Conditioning(torch.randn(1, 77, 8), torch.randn(1, 8), time_ids)
    x_t, target = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    errors = denoising_errors(RecordingUNet(), x_t, torch.tensor([500]), cond, target)
    assert seen["x"] == seen["states"] == seen["pooled"] == torch.bfloat16
    assert seen["time_ids"].dtype == torch.float32 and seen["time_ids"][0, 1].item() == 1365.0
    assert errors.dtype == torch.float32


def test_rolled_captions_never_give_an_image_its_own_captions() -> None:
    """One triplet per rank: rolling [c_w; c_l] locally gave [c_l; c_w] (the image's own captions)."""
    from tpo_ray.models.conditioning import Conditioning
    from tpo_ray.train.step import rolled_captions

    def cond(*ids: float) -> Conditioning:  # one "caption id" per row; time ids mark the image
        ids_t = torch.tensor(ids)
        return Conditioning(ids_t.view(-1, 1, 1).expand(-1, 2, 3).clone(), ids_t.view(-1, 1).expand(-1, 4).clone(),
                            (100 + torch.arange(len(ids), dtype=torch.float32)).view(-1, 1).expand(-1, 6).clone())

    # this rank: example 7 (c_w = 7, c_l = -7); the previous rank holds example 3 (c_w = 3, c_l = -3)
    other_rank = {7.0: 3.0, -7.0: -3.0}
    roll = lambda x: x.clone().apply_(lambda v: other_rank.get(v, v))  # noqa: E731 - rank r-1's rows
    out = rolled_captions(cond(7.0, -7.0), paired=True, roll=roll)
    assert out.prompt_embeds[:, 0, 0].tolist() == [3.0, -3.0]  # another example's c_w and c_l
    assert out.pooled[:, 0].tolist() == [3.0, -3.0]
    assert out.time_ids[:, 0].tolist() == [100.0, 101.0]  # micro-conditioning stays with the image
    # Several examples on one rank: each half rolls within itself.
    local = rolled_captions(cond(1.0, 2.0, -1.0, -2.0), paired=True, roll=lambda x: torch.roll(x, 1, 0))
    assert local.prompt_embeds[:, 0, 0].tolist() == [2.0, 1.0, -2.0, -1.0]


def test_rolled_reference_point_needs_two_examples_per_micro_step() -> None:
    from tpo_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="kl_mode='rolled' pairs each image with another example's caption"):
        load_config(None, ["train.loss.name=tkto", "train.loss.kl_mode=rolled", "train.batch_size=1"])
    assert load_config(None, ["train.loss.name=tkto", "train.loss.kl_mode=rolled", "train.batch_size=1",
                              "train.scaling.num_workers=2"]).train.loss.kl_mode == "rolled"
