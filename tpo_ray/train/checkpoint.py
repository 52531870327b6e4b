"""Training checkpoints: trainable U-Net weights (safetensors), optimizer and LR schedule (or the
DeepSpeed engine's sharded state), step and data position, and every rank's RNG state.

Every rank writes its part into its own folder; Ray Train merges them on report. The data position
is the step: sample order is a pure function of (seed, position), so nothing else is needed to
continue exactly, even with a different number of workers.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "unet_trainable.safetensors"
STATE = "train_state.json"


@dataclass
class TrainState:
    step: int
    global_batch: int
    world_size: int
    samples_seen: int = 0
    skipped_nonfinite: int = 0


def trainable_state(unet: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The weights that training changes: all U-Net parameters, or only the LoRA adapters."""
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    source = full if full is not None else unet.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in source.items() if k in names}


METRICS = "metrics.json"


def save_checkpoint(directory: Path, backend, state: TrainState, rank: int, ema=None,
                    metrics: dict[str, float] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    weights = trainable_state(backend.unet, backend.full_state_dict())  # every rank joins a ZeRO-3 gather
    if rank == 0:
        save_file(weights, str(directory / WEIGHTS))
        (directory / STATE).write_text(json.dumps(asdict(state), indent=1))
        (directory / METRICS).write_text(json.dumps(metrics or {}, indent=1))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(directory / "ema.safetensors"))
    backend.save(directory, rank)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               directory / f"rng-rank{rank}.pt")


def load_checkpoint(directory: Path, backend, rank: int, ema=None) -> TrainState:
    state = TrainState(**json.loads((directory / STATE).read_text()))
    load_trainable(backend.unet, directory / WEIGHTS)
    backend.load(directory)
    if ema is not None and (directory / "ema.safetensors").exists():
        ema.shadow = load_file(str(directory / "ema.safetensors"))
    rng = directory / f"rng-rank{rank}.pt"
    if rng.exists():  # a rank that did not exist before a rescale keeps its fresh seed
        saved = torch.load(rng, weights_only=False)
        torch.set_rng_state(saved["torch"])
        np.random.set_state(saved["numpy"])
        random.setstate(saved["python"])
    return state


def load_trainable(unet: torch.nn.Module, path: Path) -> None:
    weights = load_file(str(path))
    expected = {n for n, p in unet.named_parameters() if p.requires_grad}
    missing = expected - set(weights)
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[:3]}); "
                           "was it written with another model.lora setting?")
    with torch.no_grad():
        params = dict(unet.named_parameters())
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))


class EMA:
    """Exponential moving average of the trainable weights (kept on CPU in fp32)."""

    def __init__(self, unet: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.float().clone() for k, v in trainable_state(unet).items()}

    @torch.no_grad()
    def update(self, unet: torch.nn.Module) -> None:
        for name, p in unet.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(p.detach().float().cpu(), alpha=1 - self.decay)
