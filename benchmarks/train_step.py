"""One TDPO training step three ways, on the same model and batch: pairs/s and the ratios.

    (a) naive        what the public reference scripts do each step: VAE-encode the image, text-encode
                     c_w and c_l, separate policy forwards for c_w and c_l, a frozen reference U-Net
                     (two more forwards), torch AdamW
    (b) tpo_ray      the trainer's step with its default settings (`TrainingStep` + `TorchBackend`):
                     cached latents and text embeddings, one policy forward over [c_w; c_l], the
                     reference as a frozen copy
    (c) precomputed  (b) with `model.reference: precomputed`: r_w, r_l read with the batch, no
                     reference U-Net and no reference forward

On CPU: a reduced SD1.5-shaped U-Net, VAE and text encoder (every channel width of the published
configs divided by `--divisor`, same blocks and depths), so the VAE-to-U-Net cost ratio stays SD1.5's;
both ratios are measured with `torch.utils.flop_counter` and printed. On GPU: the real SD1.5
(512²) or SDXL (1024²) configs with random weights, bf16, and MFU = pairs/s x 8 x (U-Net forward
FLOPs, counted) / peak, 8 forward-equivalents per pair being TDPO's model FLOPs with a reference.

    python benchmarks/train_step.py --quick           # CPU, within a minute on 2 cores; prints (c)/(a) last
    python benchmarks/train_step.py --quick --model sdxl   # CPU: the reduced SDXL-shaped path (two text encoders)
    python benchmarks/train_step.py --model sd15      # GPU: real SD1.5 at 512²
    python benchmarks/train_step.py --model sdxl --batch 2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "sd-configs"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
FORWARDS_PER_PAIR = 8  # policy: 2 forwards + 2x2 backward; reference: 2 forwards


def _divided(config: dict, divisor: int, keys: tuple[str, ...], groups: int) -> dict:
    out = dict(config)
    for key in keys:
        value = out.get(key)
        if isinstance(value, (list, tuple)):
            out[key] = [max(v // divisor, groups) for v in value]
        elif isinstance(value, int):
            out[key] = max(value // divisor, 8)
    if "norm_num_groups" in out:
        out["norm_num_groups"] = groups
    return out


def load_config(family: str, part: str) -> dict:
    return json.loads((CONFIGS / family / part / "config.json").read_text())


@dataclass
class Models:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text: torch.nn.Module
    scheduler: object
    resolution: int
    family: str
    text_2: torch.nn.Module | None = None  # SDXL's second encoder (with projection: the pooled embedding)


def _text_encoder(family: str, part: str, divisor: int):
    """A CLIP text encoder from the published config; reduced: widths / divisor and one layer (77 tokens do
    not shrink with the image, so a full-depth reduced encoder would weigh far more than in the real step)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = {k: v for k, v in load_config(family, part).items() if not k.startswith("_")}
    if divisor > 1:
        hidden = cfg["hidden_size"] // divisor
        cfg.update(hidden_size=hidden, intermediate_size=4 * hidden, projection_dim=hidden, num_hidden_layers=1,
                   num_attention_heads=max(cfg["num_attention_heads"] // divisor, 1))
    cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
    return cls(CLIPTextConfig(**cfg))


def build_models(family: str, divisor: int, resolution: int, device: torch.device, dtype: torch.dtype) -> Models:
    """Random-weight U-Net, VAE and text encoder(s) from the published configs, widths divided by `divisor`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    groups = 32 if divisor == 1 else max(64 // divisor, 8)  # divides every reduced width
    torch.manual_seed(0)
    text = _text_encoder(family, "text_encoder", divisor)
    text_2 = _text_encoder(family, "text_encoder_2", divisor) if family == "sdxl" else None
    unet_cfg = _divided(load_config(family, "unet"), divisor, ("block_out_channels",), groups)
    if divisor > 1:  # the U-Net reads what the reduced encoders produce
        unet_cfg["cross_attention_dim"] = text.config.hidden_size + (text_2.config.hidden_size if text_2 else 0)
        if text_2 is not None:
            unet_cfg["addition_time_embed_dim"] = unet_cfg["addition_time_embed_dim"] // divisor
            unet_cfg["projection_class_embeddings_input_dim"] = (text_2.config.projection_dim
                                                                 + 6 * unet_cfg["addition_time_embed_dim"])
    vae_cfg = _divided(load_config(family, "vae"), divisor, ("block_out_channels",), groups)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = AutoencoderKL.from_config(vae_cfg)
    scheduler = DDPMScheduler.from_pretrained(CONFIGS / family, subfolder="scheduler")
    for frozen in (vae, text, text_2):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(device, dtype)
    return Models(unet.to(device), vae, text, scheduler, resolution, family, text_2)


def encode_text(models: Models, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeddings, pooled or None) as the pipelines compute them (SDXL: penultimate layers of both)."""
    if models.text_2 is None:
        return models.text(tokens)[0], None
    first = models.text(tokens, output_hidden_states=True).hidden_states[-2]
    second = models.text_2(tokens, output_hidden_states=True)
    return torch.cat([first, second.hidden_states[-2]], dim=-1), second.text_embeds


def unet_kwargs(emb: torch.Tensor, pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> dict:
    kwargs: dict = {"encoder_hidden_states": emb}
    if pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return kwargs


def published_ratios(family: str, resolution: int) -> tuple[float, float]:
    """(VAE encode, text encode) FLOPs over U-Net forward FLOPs of the published model, counted on the meta device."""
    with torch.device("meta"):
        models = build_models(family, 1, resolution, torch.device("meta"), torch.float32)
        latent = resolution // 8
        tokens = torch.zeros(1, 77, dtype=torch.long)
        emb, pooled = encode_text(models, tokens)
        time_ids = torch.zeros(1, 6) if pooled is not None else None
        u = forward_flops(lambda: models.unet(torch.zeros(1, 4, latent, latent), torch.tensor([500]),
                                              **unet_kwargs(emb, pooled, time_ids)))
        v = forward_flops(lambda: models.vae.encode(torch.zeros(1, 3, resolution, resolution)))
        t = forward_flops(lambda: encode_text(models, tokens))
    return v / u, t / u


def forward_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@dataclass
class Inputs:
    images: torch.Tensor  # [B, 3, R, R] in [-1, 1]
    tokens_w: torch.Tensor  # [B, 77]
    tokens_l: torch.Tensor
    x0: torch.Tensor  # cached latents
    emb_w: torch.Tensor  # cached text embeddings
    emb_l: torch.Tensor
    pooled_w: torch.Tensor | None = None  # SDXL: pooled embeddings and micro-conditioning time ids
    pooled_l: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None


def make_inputs(models: Models, batch: int, device: torch.device, dtype: torch.dtype) -> Inputs:
    g = torch.Generator().manual_seed(1)
    images = (torch.rand((batch, 3, models.resolution, models.resolution), generator=g) * 2 - 1).to(device, dtype)
    vocab = models.text.config.vocab_size
    tokens_w = torch.randint(0, vocab, (batch, 77), generator=g).to(device)
    tokens_l = tokens_w.clone()
    tokens_l[:, 5] = (tokens_l[:, 5] + 1) % vocab  # a minimal edit of the caption
    with torch.no_grad():
        x0 = models.vae.encode(images).latent_dist.sample() * models.vae.config.scaling_factor
        (emb_w, pooled_w), (emb_l, pooled_l) = encode_text(models, tokens_w), encode_text(models, tokens_l)
    time_ids = None
    if pooled_w is not None:  # original size, crop top-left, target size
        r = float(models.resolution)
        time_ids = torch.tensor([[r, r, 0.0, 0.0, r, r]] * batch, device=device)
    as_float = (lambda x: None if x is None else x.float())  # noqa: E731
    return Inputs(images, tokens_w, tokens_l, x0.float(), emb_w.float(), emb_l.float(), as_float(pooled_w),
                  as_float(pooled_l), time_ids)


def subset(inputs: Inputs, rows: list[int]) -> Inputs:
    """The examples at `rows` (a step's batch out of a dataset)."""
    return Inputs(*(None if x is None else x[rows] for x in (
        inputs.images, inputs.tokens_w, inputs.tokens_l, inputs.x0, inputs.emb_w, inputs.emb_l, inputs.pooled_w,
        inputs.pooled_l, inputs.time_ids)))


def naive_step(policy, reference, optimizer, models: Models, inputs: Inputs, beta: float, autocast) -> None:
    """As the reference scripts: encode every step, one forward per caption, a frozen reference U-Net."""
    import torch.nn.functional as F

    sched = models.scheduler
    with torch.no_grad():
        x0 = models.vae.encode(inputs.images).latent_dist.sample() * models.vae.config.scaling_factor
        (emb_w, pooled_w), (emb_l, pooled_l) = encode_text(models, inputs.tokens_w), encode_text(models, inputs.tokens_l)
    x0 = x0.float()
    noise = torch.randn_like(x0)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    x_t = sched.add_noise(x0, noise, t)

    def err(unet, emb, pooled):
        pred = unet(x_t, t, **unet_kwargs(emb, pooled, inputs.time_ids)).sample
        return F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))

    with autocast():
        m_w, m_l = err(policy, emb_w, pooled_w), err(policy, emb_l, pooled_l)
        with torch.no_grad():
            r_w, r_l = err(reference, emb_w, pooled_w), err(reference, emb_l, pooled_l)
        loss = -F.logsigmoid(-0.5 * beta * ((m_w - r_w) - (m_l - r_l))).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def naive_runner(models: Models, policy, dtype: torch.dtype, autocast):
    """`step(inputs, beta)` as the reference scripts run it, with its own frozen reference and AdamW."""
    reference = copy.deepcopy(policy).requires_grad_(False).eval().to(dtype)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    return lambda inputs, beta: naive_step(policy, reference, optimizer, models, inputs, beta, autocast)


def tpo_batch(inputs: Inputs, ids: list[str], epoch: int, ref_errors: torch.Tensor | None = None):
    """The trainer's batch for these examples: cached tensors, per-example noise seeds, stored errors."""
    from tpo_ray.cache.reference import train_noise_seeds
    from tpo_ray.models.conditioning import Conditioning
    from tpo_ray.train.step import triplet_batch

    batch = triplet_batch(inputs.x0, Conditioning(inputs.emb_w, inputs.pooled_w, inputs.time_ids),
                          Conditioning(inputs.emb_l, inputs.pooled_l, inputs.time_ids))
    batch.ids, batch.sample_seeds = ids, train_noise_seeds(0, ids, [epoch] * len(ids))
    batch.ref_errors = ref_errors
    return batch


def reference_errors(models: Models, unet, inputs: Inputs, ids: list[str], epoch: int, loss_cfg) -> torch.Tensor:
    """What `tpo-ray reference` stores for these examples at this epoch, computed with the reference U-Net."""
    from tpo_ray.models.denoise import denoising_errors
    from tpo_ray.models.reference import NoReference
    from tpo_ray.train.step import TrainingStep

    batch = tpo_batch(inputs, ids, epoch)
    x_t, t, target = TrainingStep(unet, NoReference(), models.scheduler, loss_cfg).noised(batch)
    with torch.no_grad():
        return denoising_errors(unet, x_t, t, batch.cond, target).float()


def trainer_step(models: Models, policy, start_weights, precision: str, loss_cfg, reference_kind: str,
                 device: torch.device, settings: dict | None = None):
    """`step(inputs, ids, epoch, ref_errors)`: one optimizer step of the trainer's code path (no Ray), from
    the start weights, with the reference held as `reference_kind` and `settings` (train.* fields, e.g.
    the speed switches) applied as the worker applies them."""
    from tpo_ray.config import TrainConfig
    from tpo_ray.models.reference import build_reference
    from tpo_ray.train.backend import TorchBackend
    from tpo_ray.train.step import TrainingStep

    from tpo_ray.train.worker import compile_unet

    cfg = TrainConfig(**{"mixed_precision": precision, "lr": 1e-6, **(settings or {})})
    policy.load_state_dict(start_weights)
    if cfg.channels_last:
        policy.to(memory_format=torch.channels_last)
    holder = build_reference(reference_kind, policy)
    compile_unet(policy, cfg.compile and policy._compiled_call_impl is None)
    backend = TorchBackend(policy, cfg, wrap=lambda m: m)
    holder.place(backend.prepare_frozen)
    step_fn = TrainingStep(backend.model, holder, models.scheduler, loss_cfg)

    def run(inputs: Inputs, ids: list[str], epoch: int, ref_errors: torch.Tensor | None = None) -> None:
        with backend.autocast(device):
            out = step_fn(tpo_batch(inputs, ids, epoch, ref_errors))
        backend.backward(out.loss, 1)
        backend.update()

    return run


def timed(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> tuple[float, int]:
    """(seconds per step after `warmup` untimed steps (compilation, allocator warm-up), peak GPU bytes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return (time.perf_counter() - start) / steps, peak


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--quick", action="store_true", help="CPU: small reduced model, few steps (< 1 minute)")
    parser.add_argument("--divisor", type=int, default=None, help="channel divisor (CPU default 8, GPU 1)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (CPU default 128, GPU 512/1024)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (CPU default 2, GPU 8)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--precision", choices=["no", "bf16"], default=None, help="default: bf16 on GPU, no on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOPS for MFU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a train.* setting for (b) and (c), e.g. channels_last=true, compile=true, "
                        "fused_optimizer=false; repeat for several. Measure each against a run without it "
                        "(compilation happens in the warm-up steps)")
    args = parser.parse_args()

    from tpo_ray.config import TDPOLossConfig
    from tpo_ray.train.backend import PRECISION

    import yaml

    settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    divisor = args.divisor or (1 if gpu else 8)
    resolution = args.resolution or ((1024 if args.model == "sdxl" else 512) if gpu else 128)
    batch = args.batch or (8 if gpu else 2)
    steps = args.steps or (10 if gpu else (4 if args.quick else 8))
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    precision = args.precision or ("bf16" if gpu else "no")
    dtype = PRECISION[precision]

    print(f"# python benchmarks/train_step.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()} {torch.cuda.get_device_name(device) if gpu else platform.processor() or 'cpu'}"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = build_models(args.model, divisor, resolution, device, dtype)
    inputs = make_inputs(models, batch, device, dtype)
    latent = inputs.x0.shape[-1]
    first = subset(inputs, [0])
    unet_flops = forward_flops(lambda: models.unet(first.x0, torch.tensor([500], device=device),
                                                   **unet_kwargs(first.emb_w, first.pooled_w, first.time_ids)))
    vae_flops = forward_flops(lambda: models.vae.encode(first.images.to(dtype)))
    text_flops = forward_flops(lambda: encode_text(models, first.tokens_w))
    print(f"model: {args.model} channels/{divisor}, image {resolution}² (latent {latent}²), {batch} pairs per step, "
          f"precision {precision}, settings for (b) and (c): {' '.join(args.set) or 'defaults'}")
    print(f"FLOPs per sample (counted): U-Net forward {unet_flops / 1e9:.2f} G, VAE encode {vae_flops / 1e9:.2f} G "
          f"({vae_flops / unet_flops:.2f}x the U-Net), text encoder {text_flops / 1e9:.3f} G "
          f"({text_flops / unet_flops:.3f}x)")
    if divisor > 1:
        side = 1024 if args.model == "sdxl" else 512
        vae_ratio, text_ratio = published_ratios(args.model, side)
        print(f"published {args.model} at {side}² (meta device): VAE encode {vae_ratio:.2f}x, text encoders "
              f"{text_ratio:.3f}x the U-Net forward")

    loss_cfg = TDPOLossConfig(beta=500.0)
    start_weights = copy.deepcopy(models.unet.state_dict())
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype, enabled=dtype != torch.float32)

    # (a) naive
    policy = models.unet
    step_a = naive_runner(models, policy, dtype, autocast)
    t_naive, m_naive = timed(lambda i: step_a(inputs, 500.0), warmup, steps, device)

    ids = [str(i) for i in range(batch)]
    # (b) tpo_ray defaults: frozen-copy reference
    step_b = trainer_step(models, policy, start_weights, precision, loss_cfg, "frozen_copy", device,
                          settings)
    t_tpo, m_tpo = timed(lambda i: step_b(inputs, ids, i % 2), warmup, steps, device)
    # (c) precomputed reference errors (computed with the start weights, as `tpo-ray reference` does)
    policy.load_state_dict(start_weights)
    with autocast():
        errors = [reference_errors(models, policy, inputs, ids, epoch, loss_cfg) for epoch in (0, 1)]
    step_c = trainer_step(models, policy, start_weights, precision, loss_cfg, "precomputed", device,
                          settings)
    t_pre, m_pre = timed(lambda i: step_c(inputs, ids, i % 2, errors[i % 2]), warmup, steps, device)

    rows = [("(a) naive reference-script step", t_naive, m_naive),
            (f"(b) tpo_ray step, {' '.join(args.set) or 'defaults'}", t_tpo, m_tpo),
            ("(c) tpo_ray step, precomputed reference", t_pre, m_pre)]
    peak = peak_tflops(device, args.peak_tflops)
    for name, seconds, peak_bytes in rows:
        pairs = batch / seconds
        line = f"{name:42s} {seconds * 1000:9.1f} ms/step  {pairs:8.2f} pairs/s"
        if peak:
            line += f"  MFU {pairs * FORWARDS_PER_PAIR * unet_flops / (peak * 1e12):6.1%}"
        if gpu:
            line += f"  peak {peak_bytes / 2**30:5.1f} GiB"
        print(line)
    if gpu:
        print("peak: the most GPU memory allocated while the variant ran (earlier variants' models stay resident)")
    print(f"ratio (b)/(a) = {t_naive / t_tpo:.2f}")
    print(f"ratio (c)/(a) = {t_naive / t_pre:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
