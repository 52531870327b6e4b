"""DeepSpeed ZeRO on two CPU processes (gloo, no Ray) with really partitioned parameters.

`param_persistence_threshold: 0` makes ZeRO-3 partition every tensor of the tiny U-Net (the
default keeps tensors under 1e5 elements whole, so nothing would be sharded); each ZeRO-3 test
asserts that a parameter's `.data` is empty outside the forward. The engine is built by
`build_backend` and trained by the project's `optimizer_step`, with a small denoising loss on
random inputs: what is under test is the backend, the loop's skip logic, checkpoints and the EMA.
Rank functions run in spawned processes and assert there; a failure re-raises here with its
traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tpo_ray.config import TrainConfig
from tpo_ray.losses import LossOutput
from tpo_ray.train.backend import build_backend
from tpo_ray.train.checkpoint import EMA, TrainState, load_checkpoint, save_checkpoint
from tpo_ray.train.loop import GuardState, NonFiniteLossError, optimizer_step

MICRO = 2  # samples per micro-batch and rank


# ------------------------------------------------------------------------------------------ harness
def _entry(rank: int, fn, rendezvous: str, world: int, args: tuple) -> None:
    # MASTER_* for DeepSpeed's environment checks only: the ranks meet through the rendezvous file.
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)})
    torch.set_num_threads(1)  # two ranks share two cores
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
    # Passed: leave without the interpreter's teardown. DeepSpeed's shared-memory comm op keeps a C++
    # thread that, destroyed at exit on a loaded machine, aborts the process ("terminate called
    # without an active exception", SIGABRT) after every assertion passed (seen once in CI, 1 in ~40).
    os._exit(0)


def run_ranks(fn, *args, world: int = 2) -> None:
    """Run `fn(rank, *args)` in `world` spawned processes joined by a gloo process group. They meet
    through a file, not a TCP port: a free port picked here could be taken (by the session's Ray
    cluster, say) before rank 0 binds it: EADDRINUSE, seen once in a fresh-clone .ci/run."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_entry, args=(fn, str(Path(tmp) / "rendezvous"), world, args), nprocs=world,
                           start_method="spawn")


# ------------------------------------------------------------------------------------ rank helpers
def _config(stage: int, **overrides) -> TrainConfig:
    ds = {"zero_stage": stage, "param_persistence_threshold": 0 if stage == 3 else None}
    ds.update(overrides.pop("deepspeed", {}))
    base = {"backend": "deepspeed", "batch_size": MICRO, "lr": 1e-3, "weight_decay": 0.1, "lr_warmup_steps": 4,
            "max_grad_norm": 1.0, "deepspeed": ds}
    return TrainConfig(**{**base, **overrides})


def _backend(cfg: TrainConfig, seed: int = 0):
    from tpo_ray.models.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline("sd15", seed=seed).unet
    return build_backend(unet, cfg, dist.get_world_size(), use_gpu=False, wrap=lambda m: m)


def _assert_partitioned(backend) -> None:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    p = backend.unet.conv_in.weight
    assert p.data.numel() == 0 and p.ds_status == ZeroParamStatus.NOT_AVAILABLE, "ZeRO-3 did not partition"
    assert p.ds_tensor.numel() < p.ds_numel


def _batch(rank: int, step: int, micro: int = 0, nan: bool = False) -> dict:
    g = torch.Generator().manual_seed(10_000 * step + 100 * rank + micro)
    return {"x": torch.randn(MICRO, 4, 8, 8, generator=g), "t": torch.randint(0, 1000, (MICRO,), generator=g),
            "c": torch.randn(MICRO, 4, 32, generator=g), "y": torch.randn(MICRO, 4, 8, 8, generator=g), "nan": nan,
            "scale": 1.0}


def _step_fn(backend):
    def step(batch: dict, generator) -> LossOutput:
        dtype = backend.compute_dtype
        pred = backend.model(batch["x"].to(dtype), batch["t"], encoder_hidden_states=batch["c"].to(dtype)).sample
        loss = (pred.float() - batch["y"]).pow(2).mean() * batch["scale"]
        if batch["nan"]:
            loss = loss * float("nan")
        return LossOutput(loss, {"loss": float(loss.detach())})
    return step


def _min_all_ranks(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def _train_step(backend, batches: list[dict], guard: GuardState, step: int, max_consecutive: int = 3) -> dict:
    return optimizer_step(_step_fn(backend), batches, backend, guard=guard, step_index=step,
                          max_consecutive_nonfinite=max_consecutive, all_reduce_min=_min_all_ranks)


def _optimizer_tensors(backend) -> list[torch.Tensor]:
    """The wrapped torch optimizer's fp32 master partitions and its state (exp_avg, exp_avg_sq, step)."""
    inner = backend.optimizer.optimizer
    tensors = [p.detach().clone() for group in inner.param_groups for p in group["params"]]
    for state in inner.state.values():
        tensors += [v.detach().clone() for _, v in sorted(state.items()) if torch.is_tensor(v)]
    return tensors


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _weights(backend) -> dict[str, torch.Tensor]:
    """The fp32 masters, on every rank (the backend assembles them on rank 0 alone; tests compare everywhere)."""
    full = [backend.full_state_dict()]  # a collective
    dist.broadcast_object_list(full, src=0)
    return full[0]


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------- non-finite steps are skipped
def _nan_step_is_skipped(rank: int, stage: int) -> None:
    cfg = _config(stage, grad_accum_steps=2)
    backend = _backend(cfg)
    if stage == 3:
        _assert_partitioned(backend)
    guard = GuardState()
    for step in (1, 2):  # momentum, weight decay and the warmup are all moving now
        _train_step(backend, [_batch(rank, step, 0), _batch(rank, step, 1)], guard, step)
    weights, state, lr = _weights(backend), _optimizer_tensors(backend), backend.lr
    assert lr == pytest.approx(1e-3 * 3 / 4)
    # the first micro-batch is fine everywhere; the second is NaN on rank 1 only
    out = _train_step(backend, [_batch(rank, 3, 0), _batch(rank, 3, 1, nan=rank == 1)], guard, 3)
    assert out == {"skipped_nonfinite": 1.0}
    assert not backend.model.was_step_applied()
    assert _weights_equal(_weights(backend), weights), "a skipped step changed the weights"
    assert _same(_optimizer_tensors(backend), state), "a skipped step changed the optimizer state"
    assert backend.lr == lr and backend.scheduler.last_epoch == 2, "a skipped step advanced the LR schedule"
    out = _train_step(backend, [_batch(rank, 4, 0), _batch(rank, 4, 1)], guard, 4)
    assert out["lr"] == pytest.approx(1e-3) and guard.consecutive == 0
    assert not _weights_equal(_weights(backend), weights)
    for step in (5, 6):  # the guard still stops a run that keeps producing NaN
        _train_step(backend, [_batch(rank, step, 0, nan=True), _batch(rank, step, 1)], guard, step)
    with pytest.raises(NonFiniteLossError, match="step 7: loss was non-finite for 3 steps in a row"):
        _train_step(backend, [_batch(rank, 7, 0, nan=True), _batch(rank, 7, 1)], guard, 7)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_nonfinite_loss_on_one_rank_skips_the_step_everywhere(stage: int) -> None:
    run_ranks(_nan_step_is_skipped, stage)


# ------------------------------------------------------------------- resume and EMA under ZeRO-3
def _resume_and_ema(rank: int, directory: Path) -> None:
    cfg = _config(3, ema_decay=0.5, mixed_precision="bf16")  # the EMA averages the fp32 master partitions
    backend = _backend(cfg)
    _assert_partitioned(backend)
    ema = EMA(backend.master_shards(), cfg.ema_decay)
    expected = {k: v.float() for k, v in _weights(backend).items()}
    guard = GuardState()
    for step in (1, 2, 3):
        _train_step(backend, [_batch(rank, step)], guard, step)
        ema.update()
        for k, v in _weights(backend).items():
            expected[k] = expected[k] * 0.5 + v.float() * 0.5
    full = ema.full_state()
    if rank == 0:
        assert full.keys() == expected.keys()
        assert all(torch.allclose(full[k], expected[k], rtol=1e-6, atol=1e-7) for k in full)
    else:
        assert full is None
    save_checkpoint(directory, backend, TrainState(step=3, global_batch=2 * MICRO, world_size=2), rank, ema)
    if rank == 0:
        saved = load_file(str(directory / "ema.safetensors"))
        assert all(saved[k].shape == expected[k].shape and torch.allclose(saved[k], expected[k], rtol=1e-6, atol=1e-7)
                   for k in expected)
    dist.barrier()

    fresh = _backend(cfg, seed=1)  # other initial weights: everything must come from the checkpoint
    fresh_ema = EMA(fresh.master_shards(), cfg.ema_decay)
    state = load_checkpoint(directory, fresh, rank, fresh_ema)
    assert state.step == 3
    _assert_partitioned(fresh)
    assert _weights_equal(_weights(fresh), _weights(backend))
    assert _same(_optimizer_tensors(fresh), _optimizer_tensors(backend))
    assert fresh.lr == backend.lr and fresh.scheduler.last_epoch == 3
    assert all(torch.equal(fresh_ema.shadow[k], ema.shadow[k]) for k in ema.shadow)
    for b in (backend, fresh):  # the resumed engine continues exactly like the original
        _train_step(b, [_batch(rank, 4)], GuardState(), 4)
    assert _weights_equal(_weights(fresh), _weights(backend))


def test_zero3_resumes_into_a_fresh_engine_and_keeps_a_partitioned_ema(tmp_path: Path) -> None:
    run_ranks(_resume_and_ema, tmp_path / "ckpt")


# ------------------------------------------------------------------ another number of workers
def _save_two_ranks(rank: int, directory: Path, stage: int) -> None:
    backend = _backend(_config(stage))
    guard = GuardState()
    for step in (1, 2):
        _train_step(backend, [_batch(rank, step)], guard, step)
    save_checkpoint(directory, backend, TrainState(step=2, global_batch=2 * MICRO, world_size=2), rank)
    weights = _weights(backend)
    if rank == 0:
        torch.save({"weights": weights, "lr": backend.lr}, directory / "expected.pt")


def _resume_on_one_rank(rank: int, directory: Path, stage: int) -> None:
    backend = _backend(_config(stage), seed=1)
    load_checkpoint(directory, backend, rank)
    expected = torch.load(directory / "expected.pt", weights_only=False)
    assert _weights_equal(_weights(backend), expected["weights"])
    assert backend.lr == expected["lr"] and backend.scheduler.last_epoch == 2
    state = backend.optimizer.optimizer.state
    assert state and all(float(s["exp_avg"].abs().sum()) > 0 for s in state.values()), "Adam moments were lost"
    out = _train_step(backend, [_batch(0, 3), _batch(1, 3)], GuardState(), 3)
    assert out["skipped_nonfinite"] == 0.0 and out["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_checkpoint_of_two_ranks_resumes_on_one_through_the_universal_format(tmp_path: Path, stage: int) -> None:
    run_ranks(_save_two_ranks, tmp_path, stage)
    assert json.loads((tmp_path / "train_state.json").read_text())["world_size"] == 2
    run_ranks(_resume_on_one_rank, tmp_path, stage, world=1)


# ------------------------------------------------------------------------------- ZeRO-Offload
def _offload_trains_with_warmup(rank: int) -> None:
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    backend = _backend(_config(3, deepspeed={"offload_optimizer": True}))
    _assert_partitioned(backend)
    assert isinstance(backend.optimizer.optimizer, DeepSpeedCPUAdam)
    assert backend.lr == pytest.approx(1e-3 / 4)  # warmup step 1 of 4
    before = _weights(backend)
    guard = GuardState()
    lrs = [_train_step(backend, [_batch(rank, step)], guard, step)["lr"] for step in (1, 2)]
    assert lrs == pytest.approx([1e-3 * 2 / 4, 1e-3 * 3 / 4])
    assert not _weights_equal(_weights(backend), before)
    out = _train_step(backend, [_batch(rank, 3, nan=rank == 0)], guard, 3)
    assert out == {"skipped_nonfinite": 1.0} and backend.lr == pytest.approx(lrs[-1])


def test_optimizer_offload_uses_deepspeeds_cpu_adam_and_keeps_the_warmup() -> None:
    run_ranks(_offload_trains_with_warmup)


# ------------------------------------------------------------------------- fp16 loss scaling
def _fp16_overflows_are_not_divergence(rank: int) -> None:
    backend = _backend(_config(2, mixed_precision="fp16", max_grad_norm=None))
    guard = GuardState()
    outs, applied = [], []
    for step in range(1, 9):
        batch = _batch(rank, step)
        batch["scale"] = 100.0  # gradients * the initial scale 2**16 overflow fp16 for the first steps
        outs.append(_train_step(backend, [batch], guard, step, max_consecutive=2))
        applied.append(backend.model.was_step_applied())
    first = applied.index(True)
    assert first >= 3 and all(applied[first:]), applied  # more overflows in a row than max_consecutive
    assert outs[first - 1] == {"skipped_nonfinite": 0.0, "overflow_skips": float(first)}
    assert outs[first]["lr"] == pytest.approx(1e-3 * 2 / 4)  # overflow skips did not advance the warmup
    assert guard.skipped_total == 0 and guard.overflow_skips == first
    out = _train_step(backend, [_batch(rank, 9, nan=True)], guard, 9, max_consecutive=2)
    assert out == {"skipped_nonfinite": 1.0, "overflow_skips": float(first)}


def _fp16_supported() -> bool:
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


@pytest.mark.skipif(not _fp16_supported(), reason="DeepSpeed's CPU accelerator has no fp16 on this CPU (oneDNN fp16 "
                    "needs AVX512-FP16 or AMX-FP16); the refusal itself is tested in the unit tests")
def test_fp16_loss_scale_overflows_are_counted_apart_from_nonfinite_steps() -> None:
    run_ranks(_fp16_overflows_are_not_divergence)


# ------------------------------------------------- checkpoints hold the fp32 master, not the bf16 copy
def _bf16_checkpoint_weights_are_the_master(rank: int, stage: int) -> None:
    import deepspeed

    cfg = _config(stage, mixed_precision="bf16", lr=1e-2, lr_warmup_steps=0)
    backend = _backend(cfg)
    guard = GuardState()
    for step in (1, 2, 3):
        _train_step(backend, [_batch(rank, step)], guard, step)
    full = _weights(backend)
    assert {v.dtype for v in full.values()} == {torch.float32}
    assert sum(int((v.to(torch.bfloat16).float() != v).sum()) for v in full.values()) > 0, \
        "the saved weights are only bf16 values: the fp32 master was not saved"
    params = list(backend.unet.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
        for name, p in backend.unet.named_parameters():
            assert p.dtype == torch.bfloat16
            assert torch.equal(full[name].to(torch.bfloat16), p.detach().cpu()), name  # the module is its rounding


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_checkpoints_hold_the_fp32_master_weights(stage: int) -> None:
    run_ranks(_bf16_checkpoint_weights_are_the_master, stage)


# ------------------------------------- bf16 ZeRO-1/2: the EMA, the start weights and the checkpoint are fp32
def _bf16_masters_are_what_is_kept(rank: int, directory: Path) -> None:
    """At a preference-tuning learning rate most updates are below one bf16 step: an EMA of the bf16
    module barely moves. The EMA must be the one of the fp32 masters, computed beside it here."""
    from tpo_ray.models.reference import add_lora
    from tpo_ray.models.tiny import build_tiny_pipeline

    for stage, lora in ((2, False), (2, True), (1, False)):
        unet = build_tiny_pipeline("sd15", seed=0).unet
        if lora:
            torch.manual_seed(0)
            add_lora(unet, 4, 4.0, ["to_k", "to_q", "to_v", "to_out.0"])
        start = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
        cfg = _config(stage, mixed_precision="bf16", lr=1e-5, lr_warmup_steps=0, ema_decay=0.9)
        backend = build_backend(unet, cfg, dist.get_world_size(), use_gpu=False, wrap=lambda m: m)
        masters = _weights(backend)
        assert all(torch.equal(masters[k], start[k]) for k in start), "the masters lost the fp32 start weights"
        ema = EMA(backend.master_shards(), cfg.ema_decay)
        # each rank averages its own partition, in place where the masters live: no full copy, no transfer
        share = torch.tensor([float(sum(v.numel() for v in ema.shadow.values()))])
        dist.all_reduce(share)
        assert ema.shadow and int(share) == sum(v.numel() for v in start.values())
        expected = {k: v.clone() for k, v in masters.items()}
        guard = GuardState()
        for step in range(1, 7):
            _train_step(backend, [_batch(rank, step)], guard, step)
            ema.update()
            for k, v in _weights(backend).items():
                expected[k] = expected[k] * 0.9 + v * 0.1
        moved = sum(float((expected[k] - start[k]).abs().sum()) for k in start)
        assert moved > 0
        folder = directory / f"stage{stage}-lora{lora}"
        save_checkpoint(folder, backend, TrainState(step=6, global_batch=2 * MICRO, world_size=2), rank, ema)
        if rank == 0:
            exported = load_file(str(folder / "ema.safetensors"))
            assert exported.keys() == expected.keys()
            for k in expected:
                torch.testing.assert_close(exported[k], expected[k], rtol=1e-6, atol=1e-7, msg=f"{stage} {lora} {k}")
        weights, average = backend.full_state_dict(), ema.full_state()  # collectives: every rank calls them
        if rank != 0:  # only rank 0 writes: no other rank assembles a full copy of the weights
            assert weights is None and average is None


def test_bf16_zero_ema_and_checkpoints_are_the_fp32_masters(tmp_path: Path) -> None:
    run_ranks(_bf16_masters_are_what_is_kept, tmp_path)


class _Dot(torch.nn.Module):
    """loss = w . x: the gradient of w is x, exact in bf16, so only the accumulation can round."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).sum()


def _bf16_accumulates_in_fp32(rank: int, stage: int) -> None:
    micro = 128  # the paper's recipes accumulate up to 128 micro-batches
    cfg = _config(stage, mixed_precision="bf16", grad_accum_steps=micro, max_grad_norm=None, lr_warmup_steps=0)
    backend = build_backend(_Dot(), cfg, dist.get_world_size(), use_gpu=False, wrap=lambda m: m)
    # one micro-batch of 1, then 127 of 2**-9: in a bf16 running sum, 1 + 2**-9 rounds back to 1
    xs = [torch.ones(8)] + [torch.full((8,), 2.0 ** -9)] * (micro - 1)

    def step(x, generator):
        loss = backend.model(x.to(torch.bfloat16)).float()
        return LossOutput(loss, {})

    out = optimizer_step(step, xs, backend, guard=GuardState(), step_index=1, max_consecutive_nonfinite=3,
                         all_reduce_min=_min_all_ranks)
    expected = (1 + (micro - 1) * 2.0 ** -9) / micro * 8 ** 0.5  # the norm of the mean gradient
    assert out["grad_norm"] == pytest.approx(expected, rel=1e-6), (out["grad_norm"], expected)


@pytest.mark.parametrize("stage", [1, 2, 3])  # ZeRO-1: BF16_Optimizer, whose all-reduce must be fp32 too
def test_bf16_gradients_accumulate_in_fp32(stage: int) -> None:
    run_ranks(_bf16_accumulates_in_fp32, stage)


# -------------------------------------------------- DDP: one gradient all-reduce per step, not per micro-batch
def _ddp_syncs_once_per_step(rank: int, out_dir: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from tpo_ray.train.backend import TorchBackend

    calls = []

    def counting(state, bucket):
        calls.append(1)
        return allreduce_hook(None, bucket)

    def wrap(module):
        ddp = DistributedDataParallel(module)
        ddp.register_comm_hook(None, counting)
        return ddp

    torch.manual_seed(0)
    backend = TorchBackend(_Dot(), TrainConfig(lr=1e-2, grad_accum_steps=4), wrap=wrap)
    xs = [torch.randn(8, generator=torch.Generator().manual_seed(10 * rank + k)) for k in range(4)]
    step = lambda x, g: LossOutput(backend.model(x) ** 2, {})  # noqa: E731
    for index in (1, 2):
        optimizer_step(step, xs, backend, guard=GuardState(), step_index=index, max_consecutive_nonfinite=3,
                       all_reduce_min=_min_all_ranks)
    assert len(calls) == 2, f"{len(calls)} gradient all-reduces for 2 steps of 4 micro-batches"
    torch.save(backend.unet.w.detach(), f"{out_dir}/rank{rank}.pt")


def test_ddp_gradient_accumulation_all_reduces_once_per_step_with_the_same_update(tmp_path: Path) -> None:
    """`no_sync` on all but the last micro-batch: one all-reduce per step, and the update of one process
    that saw every rank's micro-batches."""
    from tpo_ray.train.backend import TorchBackend

    run_ranks(_ddp_syncs_once_per_step, str(tmp_path))
    torch.manual_seed(0)
    single = TorchBackend(_Dot(), TrainConfig(lr=1e-2, grad_accum_steps=8), wrap=lambda m: m)
    xs = [torch.randn(8, generator=torch.Generator().manual_seed(10 * rank + k)) for rank in (0, 1) for k in range(4)]
    step = lambda x, g: LossOutput(single.model(x) ** 2, {})  # noqa: E731
    for index in (1, 2):
        optimizer_step(step, xs, single, guard=GuardState(), step_index=index, max_consecutive_nonfinite=3)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), single.unet.w.detach())


# ----------------------------------------------------- LoRA checkpoints hold the adapters, not the U-Net
def _lora_checkpoint(rank: int, stage: int, directory: Path) -> None:
    from tpo_ray.models.reference import add_lora
    from tpo_ray.models.tiny import build_tiny_pipeline

    def lora_backend(seed: int):
        unet = build_tiny_pipeline("sd15", seed=seed).unet
        add_lora(unet, 4, 4.0, ["to_k", "to_q", "to_v", "to_out.0"])
        return build_backend(unet, _config(stage), dist.get_world_size(), use_gpu=False, wrap=lambda m: m)

    backend = lora_backend(0)
    guard = GuardState()
    for step in (1, 2):
        _train_step(backend, [_batch(rank, step)], guard, step)
    backend.save(directory, rank)
    dist.barrier()
    trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                    for p in backend.unet.parameters() if p.requires_grad)
    total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in backend.unet.parameters())
    saved = sum(f.stat().st_size for f in (directory / "deepspeed" / "state").glob("*model_states.pt"))
    assert trainable < total / 10
    assert saved < 4 * total / 4, f"model states {saved} bytes for {trainable} trainable of {total} parameters"
    resumed = lora_backend(0)  # the same base (model.pretrained), fresh adapters
    resumed.load(directory)
    assert _weights_equal(_weights(resumed), _weights(backend))
    assert _same(_optimizer_tensors(resumed), _optimizer_tensors(backend))


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_checkpoints_exclude_the_frozen_unet_and_resume(tmp_path: Path, stage: int) -> None:
    run_ranks(_lora_checkpoint, stage, tmp_path)


# ---------------------------------------------------- KTO's rolled captions cross rank boundaries
def _roll(rank: int) -> None:
    from tpo_ray.train.worker import roll_across_ranks

    x = torch.tensor([[10.0 * rank], [10.0 * rank + 1]])
    assert roll_across_ranks(x).flatten().tolist() == ([11.0, 0.0] if rank == 0 else [1.0, 10.0])


def test_roll_across_ranks_is_a_global_roll() -> None:
    run_ranks(_roll)


# -------------------------------------------- Diffusion-RPO compares pairs across the global batch
def _rpo_global(rank: int, out_dir: str) -> None:
    from tpo_ray.losses import LOSSES
    from tpo_ray.train.worker import gather_across_ranks

    g = torch.Generator().manual_seed(rank)
    leaves = [torch.rand(1, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4)]
    emb = torch.rand(1, 8, generator=g, dtype=torch.float64)
    out = LOSSES["rpo"](*[gather_across_ranks(x) for x in (*leaves, emb)], beta=50.0)
    out.loss.backward()
    torch.save({"loss": out.loss.detach(), "grads": [x.grad for x in leaves]}, f"{out_dir}/rank{rank}.pt")


def test_rpo_pairs_meet_across_ranks_with_the_global_gradient(tmp_path: Path) -> None:
    """One pair per rank: without the gather RPO is Diffusion-DPO; with it, the global loss and (after
    the data-parallel average over ranks) exactly its gradient."""
    from tpo_ray.losses import LOSSES

    run_ranks(_rpo_global, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    inputs = []
    for rank in range(2):
        g = torch.Generator().manual_seed(rank)
        inputs.append([torch.rand(1, generator=g, dtype=torch.float64) for _ in range(4)]
                      + [torch.rand(1, 8, generator=g, dtype=torch.float64)])
    leaves = [torch.cat([inputs[r][k] for r in range(2)]).requires_grad_() for k in range(4)]
    expected = LOSSES["rpo"](*leaves, torch.cat([inputs[r][4] for r in range(2)]), beta=50.0)
    expected.loss.backward()
    dpo_alone = LOSSES["rpo"](*inputs[0], beta=50.0).loss
    assert not torch.allclose(expected.loss, dpo_alone)  # the other rank's pair changes the loss
    for rank, saved in enumerate(ranks):
        torch.testing.assert_close(saved["loss"], expected.loss.detach())
        for k in range(4):  # each rank's gradient is W x the global one; DDP/ZeRO divide by W
            torch.testing.assert_close(saved["grads"][k] / 2, leaves[k].grad[rank:rank + 1])
