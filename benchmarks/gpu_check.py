"""The GPU check: training throughput, MFU and peak memory per backend and reference, sampling speed,
and the negatives job's vLLM tokens/s, on random-weight models built from the published configs.

Nothing is downloaded. SD1.5 at 512² and SDXL at 1024² come from `tests/assets/sd-configs` (random
weights, bf16; SDXL with gradient checkpointing, as its recipes). Training runs the trainer's own code
(`build_backend`, `TrainingStep`, `optimizer_step`) for DDP (the torch backend), ZeRO-2 and ZeRO-3, each
with the online reference (a frozen copy) and the precomputed one (stored errors read with the batch).
MFU = pairs/s x forward-equivalents per pair (8 with a reference forward, 6 without) x the U-Net's
forward FLOPs per sample (counted with `torch.utils.flop_counter`) / the device's peak dense bf16.
Sampling runs the diffusers pipeline the eval uses. The negatives job runs its real Ray Data path
(`ray.data.llm`, vLLM, guided JSON) with a small random-weight chat model built and saved locally.
One JSON file, one table.

    bash benchmarks/gpu_check.sh                       # one H100/H200: within 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke --output /tmp/gpu_check.json   # CI: reduced sizes, CPU

`--cpu-smoke` runs every path at a reduced size on CPU (channels / 8, one transformer layer per block,
64², one step); the vLLM
part then builds the local model and reports why it cannot run (no CUDA, or no `llm` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import (CONFIGS, build_models, forward_flops, make_inputs, peak_tflops,  # noqa: E402
                        reference_errors, subset, tpo_batch, unet_kwargs)

BACKENDS = {"ddp": {"backend": "ddp"},
            "zero2": {"backend": "deepspeed", "deepspeed": {"zero_stage": 2}},
            "zero3": {"backend": "deepspeed", "deepspeed": {"zero_stage": 3}}}
REFERENCES = {"online": "frozen_copy", "precomputed": "precomputed"}
FORWARDS = {"online": 8, "precomputed": 6}  # policy 2 forwards + 2x2 backward, reference 2 forwards


@dataclass
class Size:
    family: str
    resolution: int
    batch: int  # pairs per step
    divisor: int  # channel divisor of the published configs (1: the real architecture)
    checkpointing: bool
    warmup: int
    steps: int
    sample_steps: int
    sample_batch: int


def sizes(smoke: bool) -> list[Size]:
    if smoke:
        return [Size("sd15", 64, 2, 8, False, 0, 1, 2, 2), Size("sdxl", 64, 1, 8, False, 0, 1, 2, 1)]
    return [Size("sd15", 512, 4, 1, False, 2, 4, 20, 4), Size("sdxl", 1024, 1, 1, True, 2, 4, 20, 2)]


def _init_process_group(device: torch.device) -> None:
    """One rank: DeepSpeed needs a process group even alone (it meets itself through a file)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    rendezvous = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "rendezvous"
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                            rank=0, world_size=1)


def _fresh_unet(size: Size, device: torch.device):
    """The same random U-Net every call (seeded), built on the device."""
    from diffusers import UNet2DConditionModel

    from train_step import _divided, load_config

    groups = 32 if size.divisor == 1 else max(64 // size.divisor, 8)
    cfg = _divided(load_config(size.family, "unet"), size.divisor, ("block_out_channels",), groups)
    if size.divisor > 1:
        cfg.update(_REDUCED_UNET[size.family])
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(cfg)
    if size.checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


_REDUCED_UNET: dict[str, dict] = {}  # cross-attention and added-embedding sizes of the reduced encoders


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(size: Size, models, inputs, backend: str, reference: str, device: torch.device,
                     unet_flops: int, peak: float | None) -> dict:
    from tpo_ray.config import TDPOLossConfig, TrainConfig
    from tpo_ray.models.reference import build_reference
    from tpo_ray.train.backend import build_backend
    from tpo_ray.train.loop import GuardState, optimizer_step
    from tpo_ray.train.step import TrainingStep

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    loss_cfg = TDPOLossConfig(beta=500.0)
    unet = _fresh_unet(size, device)
    ids = [str(i) for i in range(size.batch)]
    errors = None
    if reference == "precomputed":  # what `tpo-ray reference` stores, from the start weights
        with torch.autocast(device.type, dtype=torch.bfloat16):
            errors = [reference_errors(models, unet, inputs, ids, epoch, loss_cfg) for epoch in (0, 1)]
    holder = build_reference(REFERENCES[reference], unet)
    cfg = TrainConfig(**{**BACKENDS[backend], "mixed_precision": "bf16", "batch_size": size.batch, "lr": 1e-6,
                         "max_grad_norm": 1.0})
    engine = build_backend(unet, cfg, 1, use_gpu=device.type == "cuda", wrap=lambda m: m)
    holder.place(engine.prepare_frozen)
    step = TrainingStep(engine.model, holder, models.scheduler, loss_cfg)
    guard = GuardState()

    def run(i: int) -> dict:
        batch = tpo_batch(inputs, ids, i % 2, None if errors is None else errors[i % 2]).to(device)

        def step_fn(b, generator):
            with engine.autocast(device):
                return step(b, generator)

        return optimizer_step(step_fn, [batch], engine, guard=guard, max_consecutive_nonfinite=10**6, step_index=i + 1)

    for i in range(size.warmup):
        run(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(size.steps):
        out = run(size.warmup + i)
    _sync(device)
    seconds = (time.perf_counter() - start) / size.steps
    pairs = size.batch / seconds
    row = {"family": size.family, "resolution": size.resolution, "backend": backend, "reference": reference,
           "pairs_per_step": size.batch, "s_per_step": seconds, "pairs_per_s": pairs,
           "mfu": pairs * FORWARDS[reference] * unet_flops / (peak * 1e12) if peak else None,
           "peak_gib": (_peak_bytes(device) or 0) / 2**30 if device.type == "cuda" else None,
           "loss_finite": bool(out.get("skipped_nonfinite", 0) == 0)}
    return row


def measure_sampling(size: Size, models, device: torch.device) -> dict:
    """img/s of the diffusers pipeline the eval samples with, bf16, `sample_steps` denoising steps."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    unet = _fresh_unet(size, device).to(torch.bfloat16).eval()
    scheduler = EulerDiscreteScheduler.from_pretrained(CONFIGS / size.family, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(CONFIGS / size.family / "tokenizer")
    parts = {"vae": models.vae.to(torch.bfloat16), "text_encoder": models.text.to(torch.bfloat16),
             "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}
    if size.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        parts.update(text_encoder_2=models.text_2.to(torch.bfloat16),
                     tokenizer_2=CLIPTokenizer.from_pretrained(CONFIGS / size.family / "tokenizer_2"))
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cube to the left of a blue sphere"] * size.sample_batch

    def sample() -> None:
        with torch.no_grad():
            pipe(prompts, num_inference_steps=size.sample_steps, height=size.resolution, width=size.resolution,
                 generator=torch.Generator(device).manual_seed(0), output_type="np")

    sample()  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    sample()
    _sync(device)
    seconds = time.perf_counter() - start
    row = {"family": size.family, "resolution": size.resolution, "images": size.sample_batch,
           "steps": size.sample_steps, "seconds": seconds, "images_per_s": size.sample_batch / seconds,
           "peak_gib": (_peak_bytes(device) or 0) / 2**30 if device.type == "cuda" else None}
    return row


def build_local_llm(folder: Path) -> Path:
    """A small random-weight chat model (Qwen2 layout, byte-level BPE tokenizer with a chat template), saved
    where vLLM can load it: the engine's path is measured, not the model's answers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tpo_ray.data.synthetic import synthetic_captions

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [r["caption"] for r in synthetic_captions(2000)] + ['{"negative": "", "principle": "", "edits": []}']
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def measure_negatives(folder: Path, captions: int, device: torch.device) -> dict:
    """Tokens/s of `tpo-ray negatives --editor vllm` on the local model, through the job's own pipeline."""
    build_local_llm(folder / "llm")
    if device.type != "cuda":
        return {"skipped": "no CUDA device: vLLM needs one", "model_built": True}
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vllm is not installed (pip install -e '.[llm]')", "model_built": True}
    import pyarrow as pa
    import ray
    from transformers import AutoTokenizer

    from tpo_ray.config import load_config
    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.data.sources import plan_source
    from tpo_ray.data.synthetic import synthetic_captions
    from tpo_ray.negatives.editors import build_editor
    from tpo_ray.negatives.job import build_pipeline
    from tpo_ray.negatives.layout import OutputLayout

    model = folder / "llm"
    source = folder / "captions.parquet"
    write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(captions))), source)
    cfg = load_config(None, [f"output_dir={folder}", f"negatives.input={source}", f"negatives.output={folder}/neg",
                             "negatives.editor=vllm", f"negatives.llm.model={model}", "negatives.retries=0",
                             "negatives.llm.max_new_tokens=64", "tracking.enabled=false", "negatives.shard_size=500",
                             "negatives.llm.batch_size=64"])
    plan = plan_source(str(source), cfg.negatives.shard_size)
    items = [{"item": {"spec": s.to_dict(), "duplicates": []}} for s in plan.shards]
    tokenizer = AutoTokenizer.from_pretrained(model)
    ray.init(ignore_reinit_error=True)
    start, first_s, tokens, first_tokens = time.perf_counter(), None, 0, 0
    for batch in build_pipeline(items, cfg, build_editor(cfg.negatives), OutputLayout(f"{folder}/neg").root,
                                plan.columns).iter_batches(batch_format="pyarrow", batch_size=None):
        for raw, failed in zip(batch.column("raw_output").to_pylist(), batch.column("editor_reason").to_pylist()):
            if not failed:
                tokens += len(tokenizer(raw or "", add_special_tokens=False).input_ids)
        if first_s is None:
            first_s, first_tokens = time.perf_counter() - start, tokens
    seconds = time.perf_counter() - start
    steady = seconds - (first_s or 0)
    return {"captions": captions, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "steady_tokens_per_s": (tokens - first_tokens) / steady if steady > 0 else None}


def _unet_flops(size: Size, models, inputs, device: torch.device) -> int:
    first = subset(inputs, [0])
    unet = _fresh_unet(size, device)
    flops = forward_flops(lambda: unet(first.x0, torch.tensor([500], device=device),
                                       **unet_kwargs(first.emb_w, first.pooled_w, first.time_ids)))
    return flops


def _reduced_unet_fields(models, size: Size) -> dict:
    """The reduced encoders' widths, which the reduced U-Net must read (as `train_step.build_models` sets)."""
    if size.divisor == 1:
        return {}
    fields = {"cross_attention_dim": models.unet.config.cross_attention_dim,
              "transformer_layers_per_block": 1}  # SDXL's 10-deep blocks: minutes per ZeRO-3 step on CPU
    if size.family == "sdxl":
        fields.update(addition_time_embed_dim=models.unet.config.addition_time_embed_dim,
                      projection_class_embeddings_input_dim=models.unet.config.projection_class_embeddings_input_dim)
    return fields


def print_table(result: dict) -> None:
    print(f"# {result['device']}  torch {result['torch']}  deepspeed {result['deepspeed']}  ({result['date']})")
    print(f"{'model':14s} {'backend':7s} {'reference':12s} {'pairs/s':>9s} {'s/step':>8s} {'MFU':>7s} {'peak GiB':>9s}")
    for r in result["training"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['family'] + ' ' + str(r['resolution']) + '²':14s} {r['backend']:7s} {r['reference']:12s} "
              f"{r['pairs_per_s']:9.2f} {r['s_per_step']:8.3f} {mfu:>7s} {peak:>9s}")
    for r in result["sampling"]:
        print(f"sampling {r['family']} {r['resolution']}²: {r['images']} images x {r['steps']} steps in "
              f"{r['seconds']:.2f} s = {r['images_per_s']:.2f} img/s")
    neg = result["negatives"]
    if "skipped" in neg:
        print(f"negatives (vLLM): skipped: {neg['skipped']}")
    else:
        print(f"negatives (vLLM): {neg['tokens']} tokens for {neg['captions']} captions in {neg['seconds']:.1f} s = "
              f"{neg['tokens_per_s']:.0f} tokens/s ({neg['steady_tokens_per_s'] or 0:.0f} after the first block)")
    print(f"total {result['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on CPU (CI)")
    parser.add_argument("--output", default=None, help="the JSON file (default: $OUT/gpu_check.json, else "
                        "demo-output/gpu_check.json)")
    parser.add_argument("--captions", type=int, default=None, help="captions for the vLLM part (default 1000)")
    parser.add_argument("--families", default="sd15,sdxl")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        sys.exit("no CUDA device: run with --cpu-smoke for the reduced CPU check")
    device = torch.device("cuda" if gpu else "cpu")
    output = Path(args.output or Path(os.environ.get("OUT", "demo-output")) / "gpu_check.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    _init_process_group(device)
    import deepspeed

    peak = peak_tflops(device, None)
    result = {"command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if gpu else f"CPU {platform.processor() or platform.machine()}",
              "peak_bf16_tflops": peak, "torch": torch.__version__, "deepspeed": deepspeed.__version__,
              "smoke": args.cpu_smoke, "training": [], "sampling": [], "negatives": {}}
    for size in sizes(args.cpu_smoke):
        if size.family not in args.families.split(","):
            continue
        with torch.device(device):  # random init on the GPU: seconds, not a minute of CPU init for SDXL
            models = build_models(size.family, size.divisor, size.resolution, device, torch.bfloat16)
        _REDUCED_UNET[size.family] = _reduced_unet_fields(models, size)
        inputs = make_inputs(models, size.batch, device, torch.bfloat16)
        models.unet = models.unet.to("meta") if gpu else models.unet  # the check builds its own U-Nets
        flops = _unet_flops(size, models, inputs, device)
        for backend in BACKENDS:
            for reference in REFERENCES:
                row = measure_training(size, models, inputs, backend, reference, device, flops, peak)
                print(json.dumps(row), flush=True)
                result["training"].append(row)
        result["sampling"].append(measure_sampling(size, models, device))
        del models, inputs
    with tempfile.TemporaryDirectory(prefix="gpu-check-llm-") as tmp:
        result["negatives"] = measure_negatives(Path(tmp), args.captions or (1000 if gpu else 8), device)
    result["seconds"] = time.perf_counter() - began
    output.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {output}")
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
