"""Training checkpoints: trainable U-Net weights (safetensors), optimizer and LR schedule (or the
DeepSpeed engine's sharded state), step and data position, every rank's RNG state, and the EMA
(kept per rank where the weights live: rank 0 when replicated, each rank's partition under ZeRO-3;
always saved as full tensors, so export and a resume with another worker count can read it).

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

from tpo_ray.train.shards import MasterShards

WEIGHTS = "unet_trainable.safetensors"
STATE = "train_state.json"


@dataclass
class TrainState:
    step: int
    global_batch: int
    world_size: int
    samples_seen: int = 0
    skipped_nonfinite: int = 0
    read_lanes: int = 1  # see tpo_ray.cache.store; 1 = plain epoch order (checkpoints from before lanes)

    @classmethod
    def start(cls, tc, world: int) -> TrainState:
        """A new run: the global batch and the read lanes are fixed now, by this worker count."""
        return cls(step=0, global_batch=tc.batch_size * tc.grad_accum_steps * world, world_size=world,
                   read_lanes=tc.read_lanes or world)


def trainable_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes (all U-Net parameters, or only the LoRA adapters), contiguous on CPU."""
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items() if k in names}


METRICS = "metrics.json"
# The run's final report (final eval included), written by the driver into the final checkpoint once
# the run ended well: a checkpoint that has it is a finished run; one at max_steps without it resumes
# to run the final eval again.
FINAL_METRICS = "final_metrics.json"
EMA_WEIGHTS = "ema.safetensors"


class NonFiniteWeightsError(RuntimeError):
    """The weights became NaN or inf: such a checkpoint is never written (a resume would load it)."""


def save_checkpoint(directory: Path, backend, state: TrainState, rank: int, ema: EMA | None = None,
                    metrics: dict[str, float] | None = None) -> None:
    """Every rank calls it: the weight and EMA gathers are collectives that leave the full tensors on
    rank 0 alone, which writes them."""
    if not backend.master_shards().all_finite():
        raise NonFiniteWeightsError(
            f"step {state.step}: the trained weights hold NaN or inf; not writing a checkpoint, so a rerun resumes "
            "from the last finite one. A non-finite step was applied: lower train.lr or set train.max_grad_norm")
    directory.mkdir(parents=True, exist_ok=True)
    weights = backend.full_state_dict()
    ema_full = ema.full_state() if ema is not None else None
    if rank == 0:
        save_file(weights, str(directory / WEIGHTS))
        (directory / STATE).write_text(json.dumps(asdict(state), indent=1))
        (directory / METRICS).write_text(json.dumps(metrics or {}, indent=1))
        if ema_full is not None:
            save_file({k: v.contiguous() for k, v in ema_full.items()}, str(directory / EMA_WEIGHTS))
    backend.save(directory, rank)
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")


def load_checkpoint(directory: Path, backend, rank: int, ema: EMA | None = None) -> TrainState:
    """Restore weights, optimizer, schedule (all through the backend: a ZeRO-3 engine loads its own
    partitions), the EMA share of this rank, and this rank's RNG streams."""
    state = TrainState(**json.loads((directory / STATE).read_text()))
    backend.load(directory)
    if ema is not None and (directory / EMA_WEIGHTS).exists():
        ema.load_full(load_file(str(directory / EMA_WEIGHTS)))
    rng = directory / f"rng-rank{rank}.pt"
    if rng.exists():  # a rank that did not exist before a rescale keeps its fresh seed
        set_rng_state(load_plain(rng))
    return state


def load_plain(path: Path):
    """`torch.load` of tensors and plain Python values only (`weights_only=True`): checkpoints may live
    on shared storage or `s3://`, and unpickling arbitrary objects from there would run whatever code
    whoever can write there put in. A file that holds anything else is refused, naming it."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: holds objects other than tensors and plain values; refusing to unpickle it "
                         f"(a checkpoint written by another tool, or tampered with): {str(err).splitlines()[0]}") from None


def rng_state() -> dict:
    """This process's torch, numpy and Python RNG states as tensors and plain values (see `load_plain`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(saved["python"])


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
    """Exponential moving average of the fp32 master weights, over this rank's share of them.

    `shards` (from `backend.master_shards()`) says which elements this rank owns: a balanced share of
    the weights when every rank holds all of them (one process, DDP), this rank's optimizer
    partition under ZeRO-1/2/3. Averaging the masters, not the module, matters under bf16: a bf16
    copy moves only when an update crosses a bf16 step, which most preference-tuning updates do not.
    The average lives where the masters live (the accelerator; the CPU under ZeRO-1/2 optimizer
    offload) and updates with fused in-place ops, so a step costs no communication and, except under
    ZeRO-3 offload (DeepSpeed hands its CPU partitions out as device copies), no host transfer.
    """

    def __init__(self, shards: MasterShards, decay: float) -> None:
        self.shards = shards
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in shards.local().items()}

    @torch.no_grad()
    def update(self) -> None:
        if not self.shadow:
            return
        live = self.shards.local()
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        torch._foreach_mul_(shadows, self.decay)
        torch._foreach_add_(shadows, [live[n].float() for n in names], alpha=1 - self.decay)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Full-shaped averages on rank 0 (None elsewhere); a collective when there are several ranks."""
        return self.shards.gather(self.shadow)

    def load_full(self, full: dict[str, torch.Tensor]) -> None:
        self.shadow = self.shards.share(full, like=self.shadow)
