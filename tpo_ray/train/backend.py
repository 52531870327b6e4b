"""How gradients become updates: plain torch (one process or DDP) or DeepSpeed ZeRO.

The step and the loop only call `backward`, `update` and `zero_grad`; everything that differs
between backends (wrapping, accumulation, clipping, sharded checkpoints) is here.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable

import torch

from tpo_ray.config import TrainConfig
from tpo_ray.train.optim import build_lr_scheduler, build_optimizer, trainable_parameters


PRECISION = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """AdamW on the trainable parameters; `wrap` is DDP (Ray's prepare_model) or the identity.

    Weights and optimizer stay fp32; `mixed_precision=bf16` runs forwards under autocast.
    """

    name = "ddp"
    compute_dtype = torch.float32

    def __init__(self, unet: torch.nn.Module, cfg: TrainConfig, wrap: Callable[[torch.nn.Module], torch.nn.Module]):
        self.unet = unet
        self.cfg = cfg
        self.model = wrap(unet)
        self.params = trainable_parameters(unet)
        self.optimizer = build_optimizer(unet, cfg)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg)

    def autocast(self, device: torch.device):
        dtype = PRECISION[self.cfg.mixed_precision]
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

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
        state = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable weights, gathered (all ranks call it; identical under DDP)."""
        return {k: v.detach().cpu() for k, v in self.unet.state_dict().items()}


class DeepSpeedBackend:
    """DeepSpeed ZeRO (1/2/3, optional offload); the engine owns accumulation, clipping and sharding."""

    name = "deepspeed"

    def __init__(self, unet: torch.nn.Module, cfg: TrainConfig, world_size: int, use_gpu: bool) -> None:
        self.compute_dtype = PRECISION[cfg.mixed_precision]  # the engine casts the weights; inputs follow
        import deepspeed

        from tpo_ray.train.deepspeed import deepspeed_config

        self.unet = unet
        self.cfg = cfg
        optimizer = build_optimizer(unet, cfg)  # a torch optimizer: no cpu_adam JIT build on CPU
        scheduler = build_lr_scheduler(optimizer, cfg)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=unet, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, world_size, use_gpu), dist_init_required=False,
        )
        self.params = trainable_parameters(unet)

    def autocast(self, device: torch.device):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, micro_batches: int) -> None:
        self.model.backward(loss)  # the engine scales by 1 / gradient_accumulation_steps
        self.model.step()  # only updates at accumulation boundaries

    def update(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def skip(self) -> None:
        self.model.zero_grad()

    @property
    def lr(self) -> float:
        return float(self.model.get_lr()[0])

    def save(self, directory: Path, rank: int) -> None:
        self.model.save_checkpoint(str(directory / "deepspeed"), tag="state")

    def load(self, directory: Path) -> None:
        self.model.load_checkpoint(str(directory / "deepspeed"), tag="state")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        import deepspeed

        params = list(self.unet.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.cfg.deepspeed.zero_stage == 3):
            return {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}


def build_backend(unet: torch.nn.Module, cfg: TrainConfig, world_size: int, use_gpu: bool,
                  wrap: Callable[[torch.nn.Module], torch.nn.Module]):
    if cfg.backend == "deepspeed":
        return DeepSpeedBackend(unet, cfg, world_size, use_gpu)
    return TorchBackend(unet, cfg, wrap)
