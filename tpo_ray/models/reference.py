"""Reference models for preference losses: where `r_w`, `r_l` come from.

- `frozen_copy`: a frozen deep copy of the initial U-Net (full fine-tuning; one extra U-Net of memory).
- `lora_off`: the policy itself with its LoRA adapters disabled (no second U-Net; adapters are
  re-enabled in a `finally`, so an exception cannot leave the policy without them).
- `precomputed`: no model at all; `r` was computed once by `tpo-ray reference` (see
  `tpo_ray/cache/reference.py`) and arrives with each batch (`StepBatch.ref_errors`).
- `none`: for SFT and MaPO; asking it for errors is a programming error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from tpo_ray.models.conditioning import Conditioning
from tpo_ray.models.denoise import denoising_errors


class ReferenceHolder(Protocol):
    def errors(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, target: torch.Tensor) -> torch.Tensor: ...

    def place(self, prepare_frozen: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Let the training backend place a frozen model it owns (dtype, device, ZeRO-3 sharding)."""


class FrozenCopyReference:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = copy.deepcopy(unet).requires_grad_(False).eval()

    @torch.no_grad()
    def errors(self, x_t, t, cond, target) -> torch.Tensor:
        return denoising_errors(self.unet, x_t, t, cond, target)

    def place(self, prepare_frozen: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        self.unet = prepare_frozen(self.unet)


@contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class LoraOffReference:
    def __init__(self, unet: torch.nn.Module) -> None:
        if not getattr(unet, "peft_config", None):
            raise ValueError("model.reference='lora_off' needs a U-Net with LoRA adapters (model.lora.enabled=true)")
        self.unet = unet

    @torch.no_grad()
    def errors(self, x_t, t, cond, target) -> torch.Tensor:
        with adapters_disabled(self.unet):
            return denoising_errors(self.unet, x_t, t, cond, target)

    def place(self, prepare_frozen: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        pass  # it is the policy: placed by the backend already


class NoReference:
    def __init__(self, unet: torch.nn.Module | None = None) -> None:
        pass

    def errors(self, x_t, t, cond, target) -> torch.Tensor:
        raise RuntimeError("this loss runs without a reference model; reference errors were requested")

    def place(self, prepare_frozen: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        pass


class PrecomputedReference(NoReference):
    """Holds no U-Net: the errors come with the batch. Asked for errors, the batch lacked them."""

    def errors(self, x_t, t, cond, target) -> torch.Tensor:
        raise RuntimeError("model.reference='precomputed' but this batch carries no reference errors "
                           "(StepBatch.ref_errors); the data source must attach them")


REFERENCE_HOLDERS: dict[str, Callable[[torch.nn.Module], ReferenceHolder]] = {
    "frozen_copy": FrozenCopyReference,
    "lora_off": LoraOffReference,
    "precomputed": PrecomputedReference,
    "none": NoReference,
}


def build_reference(kind: str, unet: torch.nn.Module) -> ReferenceHolder:
    """Build the holder named by `TPOConfig.resolved_reference()` from the policy U-Net."""
    if kind not in REFERENCE_HOLDERS:
        raise ValueError(f"unknown reference {kind!r}; choose one of {sorted(REFERENCE_HOLDERS)}")
    return REFERENCE_HOLDERS[kind](unet)


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: list[str]) -> None:
    """Attach trainable LoRA adapters (peft) and freeze the base weights."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=target_modules))


def merge_checkpoint(unet: torch.nn.Module, weights_file, lora) -> torch.nn.Module:
    """`unet` with a checkpoint's trainable weights (`weights_file`) in place, LoRA adapters (as `lora`,
    the run's `model.lora`, had them) merged into the base weights: what `tpo-ray export` writes and
    `tpo-ray eval implicit` scores."""
    from tpo_ray.train.checkpoint import load_trainable

    if lora.enabled:
        add_lora(unet, lora.rank, lora.alpha, lora.target_modules)
    load_trainable(unet, weights_file)
    if lora.enabled:
        unet.fuse_lora()
        unet.unload_lora()
    return unet
