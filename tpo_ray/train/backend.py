"""How gradients become updates: plain torch (one process or DDP) or DeepSpeed ZeRO.

The step and the loop only call `backward`, `update` and `skip`; everything that differs
between backends (wrapping, accumulation, clipping, sharded checkpoints, where the EMA lives) is here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from tpo_ray.config import TrainConfig
from tpo_ray.train.checkpoint import WEIGHTS, load_plain, load_trainable, trainable_state
from tpo_ray.train.optim import build_lr_scheduler, build_optimizer, trainable_parameters
from tpo_ray.train.shards import MasterShards, replicated_shards, zero3_shards, zero12_shards

PRECISION = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the parameters that do not train in `dtype`; trainable ones keep fp32 (they are the master copy)."""
    if dtype == torch.float32:
        return
    for param in module.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class TorchBackend:
    """AdamW on the trainable parameters; `wrap` is DDP (Ray's prepare_model) or the identity.

    Trainable weights and the optimizer stay fp32; `mixed_precision=bf16` runs forwards under
    autocast. Frozen weights (the base U-Net of a LoRA run) are stored in bf16 then, as in the
    diffusers LoRA scripts: autocast would round them to bf16 at every forward anyway, so fp32
    copies only cost memory (SD1.5: 3.20 -> 1.60 GiB, benchmarks/lora_precision_memory.py) and a
    per-forward cast.
    """

    name = "ddp"
    compute_dtype = torch.float32
    loss_scaling = False  # no dynamic loss scale: a non-finite gradient is always a diverging step

    def __init__(self, unet: torch.nn.Module, cfg: TrainConfig, wrap: Callable[[torch.nn.Module], torch.nn.Module]):
        self.unet = unet
        self.cfg = cfg
        cast_frozen(unet, PRECISION[cfg.mixed_precision])
        self.model = wrap(unet)
        self.params = trainable_parameters(unet)
        self.optimizer = build_optimizer(unet, cfg)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg)

    def autocast(self, device: torch.device):
        dtype = PRECISION[self.cfg.mixed_precision]
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def prepare_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (the reference copy) next to the policy: in bf16/fp16 when forwards run under
        autocast in that dtype anyway (half the memory: SDXL 5.1 GB instead of 10.3 GB), else fp32."""
        dtype = PRECISION[self.cfg.mixed_precision]
        return module.to(dtype)

    def micro_batch(self, last: bool):
        """Around one micro-batch's forward and backward: under DDP, gradients of all but the last
        micro-batch of a step accumulate locally (`no_sync`), so a step all-reduces once, not once per
        micro-batch. The context must hold the forward too: DDP decides at forward time."""
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def backward(self, loss: torch.Tensor, micro_batches: int) -> None:
        (loss / micro_batches).backward()

    def update(self) -> float:
        """Clip, step, and return the pre-clip global grad norm (nan/inf means skipped)."""
        limit = self.cfg.max_grad_norm if self.cfg.max_grad_norm else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        load_trainable(self.unet, directory / WEIGHTS)
        state = load_plain(directory / "optimizer.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def master_shards(self) -> MasterShards:
        """The fp32 trainable weights, each owned by one rank (they are replicated): the EMA's share."""
        return replicated_shards(self.unet)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The trainable fp32 weights on rank 0 (None elsewhere); no communication, every rank has them."""
        return trainable_state(self.unet) if _rank() == 0 else None


# The oldest DeepSpeed whose engine refuses a non-finite step under every ZeRO stage and precision
# used here: ZeRO-3 checks overflow only under fp16 before 0.19.6, ZeRO-1/2 in fp32 not at all before
# 0.19.8, bf16 ZeRO-1/2 not before 0.17.1. Below it a NaN step is applied and the weights become NaN.
# pyproject.toml pins the same floor (tests/unit/test_backend_precision.py checks they agree).
DEEPSPEED_FLOOR = "0.19.8"


def require_deepspeed_version(installed: str) -> None:
    """Refuse a DeepSpeed older than `DEEPSPEED_FLOOR` (a cluster image may carry another than pip's)."""
    from packaging.version import Version

    if Version(installed) < Version(DEEPSPEED_FLOOR):
        raise RuntimeError(f"train.backend='deepspeed' needs deepspeed>={DEEPSPEED_FLOOR}, found {installed}: older "
                           "releases apply a step whose gradients are NaN under some ZeRO stages and precisions, "
                           "and the weights become NaN; upgrade deepspeed or use train.backend='ddp'")


def require_supported_precision(mixed_precision: str) -> None:
    """Refuse a precision this machine's DeepSpeed accelerator lacks before the engine is built, naming
    the field: DeepSpeed's own refusal ("Type fp16 is not supported on your device") names neither.
    On CPU, fp16 needs oneDNN fp16 kernels (AVX512-FP16 or AMX-FP16), which most CPUs lack."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if PRECISION[mixed_precision] not in accelerator.supported_dtypes():
        raise ValueError(f"train.mixed_precision={mixed_precision!r} is not supported by DeepSpeed's "
                         f"{accelerator.device_name()} accelerator on this machine; use 'bf16' or 'no'")


class DeepSpeedBackend:
    """DeepSpeed ZeRO (1/2/3, optional offload); the engine owns accumulation, clipping and sharding.

    A step the loop rejects is discarded by DeepSpeed itself: the loop back-propagates a NaN loss,
    the engine's overflow check sees the non-finite gradient norm on every rank and skips the
    optimizer step and the LR schedule (`was_step_applied()` is then False). Under fp16 the same
    check also fires on ordinary loss-scale overflows (`loss_scaling`), which are not divergence.
    """

    name = "deepspeed"

    def __init__(self, unet: torch.nn.Module, cfg: TrainConfig, world_size: int, use_gpu: bool) -> None:
        self.compute_dtype = PRECISION[cfg.mixed_precision]  # the engine casts the weights; inputs follow
        import deepspeed

        from tpo_ray.train.deepspeed import deepspeed_config, uses_deepspeed_optimizer

        self.unet = unet
        self.cfg = cfg
        self.world_size = world_size
        self.use_gpu = use_gpu
        self.loss_scaling = cfg.mixed_precision == "fp16"
        # Offload needs DeepSpeed's CPU AdamW (from the config's "optimizer" section); otherwise a
        # torch AdamW avoids building cpu_adam. The LR schedule is built over whichever optimizer runs.
        require_deepspeed_version(deepspeed.__version__)
        require_supported_precision(cfg.mixed_precision)
        optimizer = None if uses_deepspeed_optimizer(cfg) else build_optimizer(unet, cfg)
        # DeepSpeed casts the module to bf16/fp16 and builds the fp32 masters from that cast, which
        # would round the start weights at step 0: keep them, and write them into the masters.
        start = None
        if self.compute_dtype != torch.float32:
            start = {n: p.detach().to("cpu", torch.float32, copy=True)
                     for n, p in unet.named_parameters() if p.requires_grad}
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=unet, model_parameters=trainable_parameters(unet), optimizer=optimizer,
            lr_scheduler=lambda opt: build_lr_scheduler(opt, cfg),
            config=deepspeed_config(cfg, world_size, use_gpu), dist_init_required=False,
        )
        self.params = trainable_parameters(unet)
        if start is not None:
            self.master_shards().write(start)

    @property
    def partitioned(self) -> bool:
        return self.cfg.deepspeed.zero_stage == 3

    def prepare_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen model next to the policy: sharded by its own ZeRO-3 engine (no optimizer) when the
        policy is partitioned, so the reference costs 1/N of a U-Net per rank; else cast to the
        engine's compute dtype (a replica, as under ZeRO-1/2)."""
        if not self.partitioned:
            return module.to(self.compute_dtype)
        import deepspeed

        from tpo_ray.train.deepspeed import frozen_zero3_config

        engine, *_ = deepspeed.initialize(model=module, dist_init_required=False,
                                          config=frozen_zero3_config(self.cfg, self.world_size, self.use_gpu))
        return engine

    def autocast(self, device: torch.device):
        return contextlib.nullcontext()

    def micro_batch(self, last: bool):
        """The engine itself reduces gradients only at accumulation boundaries."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, micro_batches: int) -> None:
        self.model.backward(loss)  # the engine scales by 1 / gradient_accumulation_steps
        self.model.step()  # only updates at accumulation boundaries

    def update(self) -> float:
        """The pre-clip global grad norm of the step the engine took in `backward`; nan if it discarded it."""
        if not self.model.was_step_applied():
            return float("nan")
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def skip(self) -> None:
        self.model.zero_grad()  # the engine already discarded the poisoned step

    @property
    def lr(self) -> float:
        return float(self.model.get_lr()[0])

    @property
    def has_frozen_parameters(self) -> bool:
        return any(not p.requires_grad for p in self.unet.parameters())

    def save(self, directory: Path, rank: int) -> None:
        # LoRA: the frozen base U-Net comes from model.pretrained on resume; saving it would cost a
        # whole U-Net per checkpoint (SDXL 4.9 GB in bf16) for ~0.1% trainable weights.
        self.model.save_checkpoint(str(directory / "deepspeed"), tag="state",
                                   exclude_frozen_parameters=self.has_frozen_parameters)

    def load(self, directory: Path) -> None:
        """Weights, optimizer and LR schedule from the engine's checkpoint (partitions included).

        Another data-parallel world size goes through DeepSpeed's universal checkpoint.
        """
        from tpo_ray.train.deepspeed import load_rescaled, saved_world_size, weights_only_loads

        source = directory / "deepspeed"
        with weights_only_loads():
            if saved_world_size(source / "state") == self.world_size:
                self.model.load_checkpoint(str(source), tag="state",
                                           load_module_strict=not self.has_frozen_parameters)
            else:
                load_rescaled(self.model, source, "state")

    def master_shards(self) -> MasterShards:
        """This rank's pieces of the fp32 master weights: its optimizer partition (ZeRO-1/2/3)."""
        return zero3_shards(self.unet) if self.partitioned else zero12_shards(self.unet)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The trainable weights at fp32 master precision, assembled on rank 0 (None elsewhere); a
        collective. Under bf16 the module holds rounded copies: checkpoints and exports take these."""
        shards = self.master_shards()
        return shards.gather(shards.local())


def build_backend(unet: torch.nn.Module, cfg: TrainConfig, world_size: int, use_gpu: bool,
                  wrap: Callable[[torch.nn.Module], torch.nn.Module]):
    if cfg.backend == "deepspeed":
        return DeepSpeedBackend(unet, cfg, world_size, use_gpu)
    return TorchBackend(unet, cfg, wrap)
