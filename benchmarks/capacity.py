"""Capacity plan for a GPU cluster, computed on a CPU: FLOPs, memory per GPU, micro-batch, pairs/s.

Why: to choose GPUs, ZeRO stage, reference mode and micro-batch before renting the GPUs. What depends
on the model is measured, not assumed: FLOPs with torch's FlopCounterMode and the tensors autograd
saves for backward, both on the meta device from the real SD1.5 / SDXL U-Net configs (shapes only, no
weights, so it runs in seconds on 2 CPU cores); model-state memory comes from DeepSpeed's own ZeRO
estimators. The arithmetic that turns measurements into a plan is pure functions checked against
hand-computed values in tests/unit/test_capacity.py.

Not modelled: communication (gradient reduce, ZeRO-3 gathers), the data loader, allocator
fragmentation, the CUDA context and kernels' temporary buffers (the headroom fraction is for those),
LoRA and optimizer offload. Latents and text embeddings come from the cache, so no VAE or text
encoder is on the GPU.

    python benchmarks/capacity.py [--model sd15|sdxl|all] [--mfu 0.4] [--headroom 0.9] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "sd-configs"
GiB = 2**30
MiB = 2**20
TEXT_TOKENS = 77
BF16_BYTES = 2
GPUS_PER_NODE = 8
NODES = 1
ZERO_STAGES = (1, 2, 3)


@dataclass(frozen=True)
class Method:
    """U-Net rows one training example costs: policy rows run forward and backward, reference rows
    forward only (under no_grad, in a frozen copy), and none with `model.reference: precomputed`."""

    policy_rows: int
    reference_rows: int


# Kept as data, not derived from the loss registry, because the registry says *whether* a method
# needs reference errors, not how many U-Net rows an example is: that is the batch layout of
# tpo_ray/train/step.py (the policy runs once on winners and losers concatenated, the reference once
# on the same rows). An example is a pair for paired methods (tdpo/dpo/rpo/mapo: winner and loser;
# tkto: a triplet's image under its true and its edited caption, labelled +1/-1) and one sample for
# sft and kto. KTO's default reference point (kl_mode=batch) reuses these rows; kl_mode=rolled adds
# one no-grad policy and one reference forward per row, not counted here. The unit test checks the
# table names exactly the registered losses and gives reference rows exactly to those needing them.
METHODS: dict[str, Method] = {
    "sft": Method(policy_rows=1, reference_rows=0),
    "tdpo": Method(policy_rows=2, reference_rows=2),
    "dpo": Method(policy_rows=2, reference_rows=2),
    "rpo": Method(policy_rows=2, reference_rows=2),
    "tkto": Method(policy_rows=2, reference_rows=2),
    "kto": Method(policy_rows=1, reference_rows=1),
    "mapo": Method(policy_rows=2, reference_rows=0),
}


@dataclass(frozen=True)
class GPU:
    memory_bytes: int  # total memory as nvidia-smi reports it
    peak_flops: float  # dense bf16 tensor-core peak from NVIDIA's datasheet (no sparsity)


GPUS: dict[str, GPU] = {
    "A100 80GB": GPU(81920 * MiB, 312e12),
    "H100 SXM 80GB": GPU(81559 * MiB, 989e12),
    "H200 141GB": GPU(143771 * MiB, 989e12),
}


@dataclass(frozen=True)
class Family:
    """Training resolution and conditioning shapes of a model family (the trainer's cached inputs)."""

    latent_side: int  # image side / 8
    text_dim: int
    pooled_dim: int  # SDXL's pooled text embedding (added_cond_kwargs); 0 for SD1.5


FAMILIES: dict[str, Family] = {
    "sd15": Family(latent_side=64, text_dim=768, pooled_dim=0),
    "sdxl": Family(latent_side=128, text_dim=2048, pooled_dim=1280),
}


# ------------------------------------------------------------------------------------ pure arithmetic
def flops_per_example(method: Method, forward: float, backward: float, reference: bool) -> float:
    """Model FLOPs of one training example, from the per-row forward and backward FLOPs of the U-Net
    (rows scale linearly: FLOPs of batch b = b x FLOPs of batch 1). `reference=False` is the run with
    precomputed reference errors, where the trainer runs no reference forward."""
    policy = method.policy_rows * (forward + backward)
    return policy + (method.reference_rows * forward if reference else 0.0)


def examples_per_second(mfu: float, peak_flops: float, flops: float) -> float:
    """Examples (pairs) per second per GPU at model-FLOPs utilisation `mfu`: the achieved FLOP rate
    divided by the model FLOPs of one example."""
    return mfu * peak_flops / flops


def largest_micro_batch(gpu_bytes: int, headroom: float, fixed_bytes: float, bytes_per_example: float) -> int:
    """Most examples per GPU whose memory fits in `headroom` x the GPU: `fixed_bytes` is what does not
    grow with the batch (model states, reference weights), `bytes_per_example` what does (activations
    of all the example's policy rows). 0 when not even the fixed part fits."""
    return max(0, int((gpu_bytes * headroom - fixed_bytes) // bytes_per_example))


def zero_model_states_bytes(stage: int, params: int, largest_layer_params: int,
                            gpus_per_node: int, nodes: int) -> int:
    """Per-GPU bytes of bf16 params, gradients and fp32 Adam states (no offload), from DeepSpeed's own
    estimators. DeepSpeed has none for ZeRO-1, which is ZeRO-2 whose 16-bit gradients are not
    partitioned: its estimate plus the 2 bytes/param of gradients the other ranks' partitions hold."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        return estimate_zero3_model_states_mem_needs(
            params, largest_layer_params, gpus_per_node, nodes,
            cpu_offload=False, cpu_offload_params=False, zero_init=True)[1]
    zero2 = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=False)[1]
    gpus = gpus_per_node * nodes
    return zero2 if stage == 2 else zero2 + BF16_BYTES * params * (gpus - 1) // gpus


def reference_weights_bytes(stage: int, params: int, gpus: int, reference: bool) -> int:
    """The frozen reference U-Net in bf16: replicated under ZeRO-1/2, partitioned under ZeRO-3 (the
    backend shards it like the policy), absent with precomputed reference errors."""
    if not reference:
        return 0
    return BF16_BYTES * params // (gpus if stage == 3 else 1)


# ------------------------------------------------------------------------------------------ measuring
class FlashAttentionOnMeta(TorchFunctionMode):
    """Runs `F.scaled_dot_product_attention` as the flash kernel a GPU picks for bf16.

    On the meta device SDPA takes its math fallback, which materialises the [B, heads, S, S] fp32
    attention probabilities and saves them for backward (512 MiB per row in each SD1.5 64x64 layer);
    the GPU's flash kernel saves only q, k, v, the output and the fp32 logsumexp. Calling the aten
    flash op (it has meta kernels) makes the saved tensors those of a GPU step. Masked attention is
    left alone (the U-Nets here pass no mask)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None and len(args) == 3:
            dropout, causal = kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False)
            return torch.ops.aten._scaled_dot_product_flash_attention(
                *args, dropout, causal, scale=kwargs.get("scale"))[0]
        return func(*args, **kwargs)


class SavedStorages(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the storages autograd saves for backward, each storage once (views and tensors saved
    by several ops share one), parameters excluded (they are model states, counted by DeepSpeed).
    Storages are keyed by their C++ address and held, so no address is reused while counting."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.storages: dict[int, torch.UntypedStorage] = {}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in self.exclude:
            self.storages[s._cdata] = s
        return t

    @property
    def bytes(self) -> int:
        return storage_bytes(self.storages)


def storage_bytes(storages: dict[int, torch.UntypedStorage]) -> int:
    return sum(s.nbytes() for s in storages.values())


class CheckpointProbe:
    """Stands in for torch.utils.checkpoint in the blocks diffusers checkpoints, to measure what
    gradient checkpointing keeps: a checkpointed block holds only its inputs until backward, then
    recomputes its own saved tensors one block at a time. The block runs under its own hooks (the
    innermost hooks win, as checkpoint's own do), so the outer count sees only what is saved outside
    checkpointed blocks; `recompute_peak` is the largest block's saved tensors beyond its inputs."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.inputs: dict[int, torch.UntypedStorage] = {}
        self.recompute_peak = 0

    def __call__(self, module: torch.nn.Module, *args: Any) -> Any:
        storages = [a.untyped_storage() for a in args if isinstance(a, torch.Tensor)]
        inputs = {s._cdata: s for s in storages if s._cdata not in self.params}
        self.inputs.update(inputs)
        inner = SavedStorages(self.params | set(inputs))
        with inner:
            out = module(*args)
        self.recompute_peak = max(self.recompute_peak, inner.bytes)
        return out


def build_unet(family: str) -> UNet2DConditionModel:
    """The family's real U-Net config on the meta device, in bf16 as DeepSpeed's bf16 mode trains it."""
    config_dir = CONFIGS / family / "unet"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir))
    return unet.to(torch.bfloat16)


def example_inputs(family: str, rows: int) -> dict[str, Any]:
    """Meta-device U-Net inputs for `rows` rows at the family's training resolution."""
    f = FAMILIES[family]
    with torch.device("meta"):
        inputs: dict[str, Any] = {
            "sample": torch.empty(rows, 4, f.latent_side, f.latent_side, dtype=torch.bfloat16),
            "timestep": torch.zeros(rows, dtype=torch.long),
            "encoder_hidden_states": torch.empty(rows, TEXT_TOKENS, f.text_dim, dtype=torch.bfloat16),
        }
        if f.pooled_dim:
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(rows, f.pooled_dim, dtype=torch.bfloat16),
                "time_ids": torch.empty(rows, 6, dtype=torch.bfloat16),
            }
    return inputs


def count_flops(unet: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int]:
    """(forward, backward) model FLOPs of one U-Net call, a multiply-add counted as 2, backward
    measured by running it on meta (gradients of the parameters and of the activations, none for the
    inputs). Attention runs SDPA's math path here, whose matmuls are the attention's model FLOPs; the
    flash kernel's backward also recomputes the scores, hardware work that MFU does not count."""
    with FlopCounterMode(display=False) as forward:
        out = unet(**inputs).sample
    with FlopCounterMode(display=False) as backward:
        out.float().square().mean().backward()
    unet.zero_grad(set_to_none=True)
    return forward.get_total_flops(), backward.get_total_flops()


def parameter_storages(unet: torch.nn.Module) -> set[int]:
    return {p.untyped_storage()._cdata for p in unet.parameters()}


def saved_activation_bytes(unet: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """Bytes autograd keeps from the forward for the backward, without gradient checkpointing."""
    saved = SavedStorages(parameter_storages(unet))
    with FlashAttentionOnMeta(), saved:
        out = unet(**inputs)
    del out
    return saved.bytes


def checkpointed_activation_bytes(unet: UNet2DConditionModel, inputs: dict[str, Any]) -> tuple[int, int]:
    """(kept through the forward, extra peak while recomputing the largest block) with diffusers'
    gradient checkpointing, measured through `CheckpointProbe`."""
    params = parameter_storages(unet)
    probe = CheckpointProbe(params)
    unet.enable_gradient_checkpointing(probe)
    outside = SavedStorages(params)
    try:
        with FlashAttentionOnMeta(), outside:
            out = unet(**inputs)
        del out
    finally:
        unet.disable_gradient_checkpointing()
    return storage_bytes({**probe.inputs, **outside.storages}), probe.recompute_peak


def largest_layer_params(unet: torch.nn.Module) -> int:
    """Largest parameter count of one module's own parameters, as DeepSpeed's ZeRO-3 estimator
    defines it (its `model_to_params` dedupes by data_ptr, which is 0 for every meta tensor)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in unet.modules())


@dataclass(frozen=True)
class Measured:
    """Per-row figures of one family's U-Net (bytes are bf16 activations saved for backward)."""

    params: int
    largest_layer: int
    forward_flops: int
    backward_flops: int
    linear_flops: bool  # FLOPs of batch 2 == 2 x FLOPs of batch 1
    act_row: int
    act_fixed: int
    ckpt_row: int
    ckpt_fixed: int
    recompute_row: int
    recompute_fixed: int
    seconds: float


def measure(family: str) -> Measured:
    start = time.perf_counter()
    unet = build_unet(family)
    flops = {rows: count_flops(unet, example_inputs(family, rows)) for rows in (1, 2)}
    act = {rows: saved_activation_bytes(unet, example_inputs(family, rows)) for rows in (1, 2)}
    ckpt = {rows: checkpointed_activation_bytes(unet, example_inputs(family, rows)) for rows in (1, 2)}
    # Per-row slope from batch 1 and 2; what is left at batch 1 does not grow with the batch.
    act_row = act[2] - act[1]
    ckpt_row = ckpt[2][0] - ckpt[1][0]
    recompute_row = ckpt[2][1] - ckpt[1][1]
    return Measured(
        params=sum(p.numel() for p in unet.parameters()),
        largest_layer=largest_layer_params(unet),
        forward_flops=flops[1][0],
        backward_flops=flops[1][1],
        linear_flops=flops[2] == (2 * flops[1][0], 2 * flops[1][1]),
        act_row=act_row, act_fixed=act[1] - act_row,
        ckpt_row=ckpt_row, ckpt_fixed=ckpt[1][0] - ckpt_row,
        recompute_row=recompute_row, recompute_fixed=ckpt[1][1] - recompute_row,
        seconds=time.perf_counter() - start,
    )


# -------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str

    def render(self, markdown: bool) -> str:
        lines = [self.headers, *self.rows]
        if markdown:
            table = "\n".join("| " + " | ".join(r) + " |" for r in [self.headers, ["---"] * len(self.headers),
                                                                     *self.rows])
            return f"### {self.title}\n\n{table}\n\n{self.note}"
        widths = [max(len(r[i]) for r in lines) for i in range(len(self.headers))]
        table = "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in lines)
        return f"== {self.title}\n\n{table}\n\n{self.note}"


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def model_states(m: Measured, stage: int) -> int:
    return zero_model_states_bytes(stage, m.params, m.largest_layer, GPUS_PER_NODE, NODES)


def reference_weights(m: Measured, stage: int, reference: bool) -> int:
    return reference_weights_bytes(stage, m.params, GPUS_PER_NODE * NODES, reference)


def per_row_table(models: dict[str, Measured]) -> Table:
    rows = [[name, f"{m.params / 1e6:.1f}M", f"{m.largest_layer / 1e6:.1f}M", f"{m.forward_flops / 1e12:.3f}",
             f"{m.backward_flops / 1e12:.3f}", f"{m.backward_flops / m.forward_flops:.3f}",
             "yes" if m.linear_flops else "NO", gib(m.act_row), gib(m.act_fixed), gib(m.ckpt_row),
             gib(m.recompute_row), f"{m.seconds:.1f}"] for name, m in models.items()]
    return Table(
        "U-Net per row (meta device, bf16)",
        ["model", "params", "largest layer", "fwd TFLOP", "bwd TFLOP", "bwd/fwd", "linear in batch",
         "act GiB/row", "act GiB fixed", "ckpt act GiB/row", "ckpt recompute GiB/row", "measured in s"], rows,
        "FLOPs: torch.utils.flop_counter.FlopCounterMode, a multiply-add = 2 FLOPs, model FLOPs (no "
        "recompute); backward measured on meta, not assumed. act: storages autograd saves for backward "
        "with the flash-attention kernel a GPU runs (parameters excluded), per-row slope from batch 1 and "
        "2; fixed = what does not grow with the batch. ckpt: diffusers' gradient checkpointing; kept = "
        "inputs of checkpointed blocks + tensors saved outside them; recompute = extra peak while the "
        "largest block is recomputed in backward.")


def throughput_table(models: dict[str, Measured], mfu: float) -> Table:
    rows = []
    for name, m in models.items():
        for method, spec in METHODS.items():
            flops = [flops_per_example(spec, m.forward_flops, m.backward_flops, ref) for ref in (True, False)]
            rates = [examples_per_second(mfu, g.peak_flops, f) for f in flops for g in GPUS.values()]
            rows.append([name, method, str(spec.policy_rows), str(spec.reference_rows),
                         *[f"{f / 1e12:.2f}" for f in flops], *[f"{r:.1f}" for r in rates]])
    return Table(
        f"FLOPs per example and predicted examples/s per GPU at MFU {mfu:.2f}",
        ["model", "method", "policy rows", "ref rows", "TFLOP online ref", "TFLOP precomputed ref",
         *[f"{g} /s online" for g in GPUS], *[f"{g} /s precomputed" for g in GPUS]], rows,
        "An example is a pair (winner, loser rows) except for sft and kto (one sample). Model FLOPs "
        "only: gradient checkpointing recomputes about one more forward per policy row, which costs "
        "time but is not counted in MFU. Per-GPU rates assume no communication stalls (data parallel). "
        "Peak bf16 dense TFLOPS: " + ", ".join(f"{g} {gpu.peak_flops / 1e12:.0f}" for g, gpu in GPUS.items())
        + ".")


def memory_table(models: dict[str, Measured]) -> Table:
    rows = [[name, str(stage), gib(model_states(m, stage)), gib(reference_weights(m, stage, True)),
             gib(reference_weights(m, stage, False)), gib(2 * m.act_row),
             gib(2 * (m.ckpt_row + m.recompute_row))]
            for name, m in models.items() for stage in ZERO_STAGES]
    return Table(
        f"Memory per GPU, full fine-tuning, {NODES} node x {GPUS_PER_NODE} GPUs, bf16 + fp32 Adam (GiB)",
        ["model", "ZeRO", "model states (DeepSpeed)", "reference online", "reference precomputed",
         "act per pair", "ckpt act per pair"], rows,
        "Model states: DeepSpeed estimate_zero2/zero3_model_states_mem_needs (no offload, zero_init); "
        "ZeRO-1 = the ZeRO-2 estimate + unpartitioned 16-bit gradients. Reference: frozen bf16 U-Net, "
        "replicated under ZeRO-1/2, partitioned under ZeRO-3. A pair is 2 policy rows; the reference "
        "forward runs under no_grad and keeps no activations.")


def micro_batch_table(models: dict[str, Measured], headroom: float) -> Table:
    rows = []
    for name, m in models.items():
        for ref in (True, False):
            for ckpt in (False, True):
                row_bytes = m.ckpt_row + m.recompute_row if ckpt else m.act_row
                fixed_act = m.ckpt_fixed + m.recompute_fixed if ckpt else m.act_fixed
                for stage in ZERO_STAGES:
                    fixed = model_states(m, stage) + reference_weights(m, stage, ref) + fixed_act
                    fits = [largest_micro_batch(g.memory_bytes, headroom, fixed, 2 * row_bytes)
                            for g in GPUS.values()]
                    rows.append([name, "online" if ref else "precomputed", "yes" if ckpt else "no",
                                 str(stage), *map(str, fits)])
    return Table(
        f"Largest micro-batch per GPU in pairs (2 policy rows each), headroom {headroom:.2f}",
        ["model", "reference", "grad ckpt", "ZeRO", *GPUS], rows,
        "Fits when model states + reference + activations <= headroom x GPU memory (nvidia-smi total: "
        "A100 81920 MiB, H100 81559 MiB, H200 143771 MiB). sft and kto examples are one row: about "
        "twice these counts.")


def header() -> str:
    command = " ".join(["python", *sys.argv])
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "diffusers", "deepspeed"))
    return f"`{command}` on {when}, {machine}, {versions}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--mfu", type=float, default=0.40, help="model-FLOPs utilisation for pairs/s")
    parser.add_argument("--headroom", type=float, default=0.9, help="fraction of GPU memory to plan for")
    parser.add_argument("--markdown", action="store_true", help="markdown tables for docs/performance.md")
    args = parser.parse_args(argv)
    # The plan runs on the CPU; this also keeps DeepSpeed's accelerator-detection warning off stdout,
    # whose first line must be the command that produced the figures.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    start = time.perf_counter()
    families = list(FAMILIES) if args.model == "all" else [args.model]
    models = {family: measure(family) for family in families}
    tables = [per_row_table(models), throughput_table(models, args.mfu), memory_table(models),
              micro_batch_table(models, args.headroom)]
    print("\n\n".join([header(), *(t.render(args.markdown) for t in tables)]))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
