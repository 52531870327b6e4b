"""Which fp32 elements of each trainable weight this rank owns, and how to assemble the full tensors.

The trained model is the fp32 master copy: under DeepSpeed bf16 the module holds bf16 roundings,
and at preference-tuning learning rates most updates are smaller than one bf16 step, so anything
read from the module (an EMA, a checkpoint) loses them. Each backend describes its masters as
`Slice`s, one per trainable weight this rank owns:

- plain torch (one process or DDP): every rank holds every fp32 weight; each weight is owned by one
  rank (balanced by size), so the EMA's work and memory are split over the ranks;
- ZeRO-1/2: the fragment of the flattened weight inside this rank's fp32 optimizer partition
  (`param._hp_mapping`); a weight may straddle two ranks;
- ZeRO-3: this rank's contiguous partition of the flattened weight (the last one zero-padded).

`MasterShards.gather` assembles full tensors on rank 0 alone, one weight at a time (a reduce of
disjoint pieces), so no other rank ever holds a full copy and rank 0 holds one weight's buffer
besides its result. The same slices serve the EMA (`checkpoint.EMA`), the checkpoint's weights and
the fp32 start weights written into the masters after DeepSpeed built them from bf16 copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Slice:
    """Elements [start, start + numel) of one flattened fp32 weight. `read` returns them (at least
    `numel` elements, flat); `assign` overwrites them in the master (None: `read` is a live view)."""

    start: int
    numel: int
    read: Callable[[], torch.Tensor]
    assign: Callable[[torch.Tensor], None] | None = None


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def full_numel(p: torch.nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def full_shape(p: torch.nn.Parameter) -> torch.Size:
    return torch.Size(getattr(p, "ds_shape", p.shape))


class MasterShards:
    """This rank's slices of the trainable fp32 weights (see the module docstring)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], slices: dict[str, Slice]) -> None:
        self.params = params  # every trainable weight, in the same order on every rank
        self.slices = slices  # the ones this rank owns a part of
        dist = _dist()
        self.rank = dist.get_rank() if dist else 0
        self.world = dist.get_world_size() if dist else 1

    def local(self) -> dict[str, torch.Tensor]:
        """This rank's live fp32 pieces (flat), on the device where the masters live."""
        return {name: s.read()[: s.numel] for name, s in self.slices.items()}

    @torch.no_grad()
    def gather(self, pieces: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Full-shaped fp32 CPU tensors from every rank's `pieces` (shaped like `local()`), on rank 0;
        None elsewhere. A collective: every rank calls it, with the same weights in the same order."""
        dist = _dist()
        device = _reduce_device()
        out: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            buffer = torch.zeros(full_numel(p), dtype=torch.float32, device=device)
            s = self.slices.get(name)
            if s is not None and s.numel:
                buffer[s.start: s.start + s.numel] = pieces[name][: s.numel].to(device, torch.float32)
            if dist is not None and self.world > 1:
                dist.reduce(buffer, dst=0, op=dist.ReduceOp.SUM)  # the pieces are disjoint
            if self.rank == 0:
                out[name] = buffer.view(full_shape(p)).cpu()
        return out if self.rank == 0 else None

    def share(self, full: dict[str, torch.Tensor], like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This rank's pieces cut out of full tensors (from a checkpoint written by any number of
        ranks), fp32, on the device of `like`'s tensors (or the masters')."""
        like = like if like is not None else self.local()
        out = {}
        for name, s in self.slices.items():
            flat = full[name].flatten()[s.start: s.start + s.numel]
            out[name] = flat.to(like[name].device, torch.float32).clone()
        return out

    def all_finite(self) -> bool:
        """Whether every rank's masters are finite (a collective). DeepSpeed's own guard against applying
        a NaN step is missing in older releases and some ZeRO/precision combinations."""
        local = all(bool(torch.isfinite(t).all()) for t in self.local().values())
        flag = torch.tensor([1.0 if local else 0.0], device=_reduce_device())
        dist = _dist()
        if dist is not None and self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def write(self, full: dict[str, torch.Tensor]) -> None:
        """Overwrite this rank's masters with the matching pieces of `full` (no communication)."""
        with torch.no_grad():
            for name, s in self.slices.items():
                if not s.numel:
                    continue
                values = full[name].flatten()[s.start: s.start + s.numel]
                if s.assign is not None:
                    s.assign(values)
                else:
                    s.read()[: s.numel].copy_(values)


def _reduce_device() -> torch.device:
    """Where gathers run: the accelerator's current device (NCCL reduces device tensors, gloo CPU ones)."""
    if _dist() is None:
        return torch.device("cpu")
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def replicated_shards(module: torch.nn.Module) -> MasterShards:
    """Every rank holds every fp32 weight: each weight goes to the rank with the fewest elements so
    far (largest first), the same assignment on every rank."""
    params = trainable(module)
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    load = [0] * world
    slices = {}
    for name in sorted(params, key=lambda n: (-params[n].numel(), n)):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += params[name].numel()
        if owner == rank:
            p = params[name]  # reshape: a channels_last weight is not a flat view (the read is then a copy)
            slices[name] = Slice(0, p.numel(), lambda p=p: p.detach().reshape(-1),
                                 assign=lambda values, p=p: p.data.copy_(values.view(p.shape)))
    return MasterShards(params, {n: slices[n] for n in params if n in slices})


def zero12_shards(module: torch.nn.Module) -> MasterShards:
    """ZeRO-1/2: the fragment of each weight inside this rank's fp32 optimizer partition."""
    params = trainable(module)
    slices = {}
    for name, p in params.items():
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is not None:
            address = mapping.lp_fragment_address
            slices[name] = Slice(int(address.start), int(address.numel),
                                 lambda p=p: p._hp_mapping.get_hp_fragment().view(-1))
    return MasterShards(params, slices)


def zero3_shards(module: torch.nn.Module) -> MasterShards:
    """ZeRO-3: rank r owns elements [r * size, (r + 1) * size) of each flattened weight, in the
    optimizer's fp32 partition (`get_local_fp32_param`; the module's `ds_tensor` is the bf16 copy)."""
    params = trainable(module)
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    slices = {}
    for name, p in params.items():
        size = int(p.ds_tensor.ds_numel if hasattr(p.ds_tensor, "ds_numel") else p.ds_tensor.numel())
        start = rank * size
        numel = max(0, min(size, int(p.ds_numel) - start))
        slices[name] = Slice(start, numel, lambda p=p: p._z3_optimizer.get_local_fp32_param(p).view(-1),
                             assign=lambda values, p=p, size=size: _assign_zero3(p, values, size))
    return MasterShards(params, slices)


def _assign_zero3(p: torch.nn.Parameter, values: torch.Tensor, size: int) -> None:
    """Write this rank's partition (`values`, unpadded) into the fp32 master, wherever it lives (a
    read of an offloaded partition is a copy, so writes go through DeepSpeed's setter)."""
    padded = torch.zeros(size, dtype=torch.float32, device=values.device)
    padded[: values.numel()] = values
    p._z3_optimizer.set_local_hp_param(padded, p)
