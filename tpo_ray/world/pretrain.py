"""Pretraining of the world's base model on rendered scenes: `tpo-ray world pretrain --output DIR`.

Two phases, as SD was made: an AutoencoderKL learns to reconstruct 64x64 scenes from 4x8x8 latents, then
the text encoder and the U-Net learn, jointly, to denoise those latents under the captions (epsilon
prediction on SD1.5's schedule, a share of empty captions for classifier-free guidance). Captions come
from the training stream (`scenes.train_scene`: no held-out color/shape pair) and a share of them are
mismatched on one attribute, as web captions are, so the base leaves room for SFT and TDPO. The result is
saved as an SD1.5 diffusers folder with `pretrain.json` (settings, seconds, losses, held-out verifier
accuracy). Seeded: the same settings on the same torch build give the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tpo_ray.config import StrictModel
from tpo_ray.world import model as world_model
from tpo_ray.world.render import render_array
from tpo_ray.world.scenes import ATTRIBUTES, Scene, changed, train_scene

log = logging.getLogger(__name__)
MANIFEST = "pretrain.json"
VAE_SETTINGS = ("seed", "num_scenes", "vae_steps", "vae_lr", "vae_kl_weight", "batch_size")  # what makes the autoencoder


class PretrainConfig(StrictModel):
    seed: int = Field(0, description="Seed of the scenes, the mismatches, the initial weights and the noise.")
    num_scenes: int = Field(16384, ge=64, description="Rendered training scenes (drawn from the training stream).")
    vae_steps: int = Field(1200, ge=1, description="Autoencoder steps.")
    vae_lr: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0, description="KL weight of the autoencoder (small, as in SD's).")
    unet_steps: int = Field(3000, ge=1, description="Denoiser steps (text encoder and U-Net together).")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate of the denoiser (warm-up, then cosine to 10%).")
    warmup_steps: int = Field(200, ge=0)
    batch_size: int = Field(64, ge=1)
    mismatch_fraction: float = Field(0.15, ge=0, le=1, description="Share of captions with one attribute wrong.")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="EMA of the denoiser's weights; the EMA is saved.")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Share of empty captions (classifier-free guidance).")
    eval_prompts: int = Field(64, ge=0, description="Held-out prompts sampled and verified at the end (0 = none).")
    guidance_scale: float = Field(4.0, ge=0)
    num_inference_steps: int = Field(25, ge=1)


def render_batch(scenes: list[Scene], size: int = world_model.IMAGE_SIZE) -> torch.Tensor:
    """Images in [-1, 1], float32 [N, 3, size, size]."""
    pixels = np.stack([render_array(s, size) for s in scenes]).astype(np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0


def noisy_caption(scene: Scene, rng: np.random.Generator, mismatch: float, dropout: float) -> str:
    """The caption pretraining pairs with the scene's image: empty (dropout), one attribute wrong
    (mismatch; never a held-out color/shape pair), or true."""
    u = rng.random()
    if u < dropout:
        return ""
    if u < dropout + mismatch:
        attribute = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
        return changed(scene, attribute, seed=int(rng.integers(2**31)), allow_held_out=False).caption()
    return scene.caption()


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.unet_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_vae(images: torch.Tensor, cfg: PretrainConfig, progress: Callable[[str], None], saved: Path):
    """The autoencoder (MSE + a small KL), then its scaling factor: 1 / std of the latents it gives. It is
    saved to `saved` before the denoiser starts, and reused from there by a rerun (a killed pretraining
    resumes at the denoiser)."""
    from diffusers import AutoencoderKL

    settings = {k: getattr(cfg, k) for k in VAE_SETTINGS}
    record = saved / "pretrain_vae.json"
    if (saved / "config.json").is_file():
        made = json.loads(record.read_text()) if record.is_file() else None
        if made != settings:
            raise FileExistsError(f"{saved} holds an autoencoder made with {made}, not {settings}: pretrain into "
                                  "another --output, or delete that folder")
        vae = AutoencoderKL.from_pretrained(saved).eval()
        progress(f"autoencoder reused from {saved}")
        return vae, *latent_moments(vae, images), float("nan")
    vae = world_model.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for step in range(cfg.vae_steps):
        idx = torch.randint(len(images), (min(32, cfg.batch_size),), generator=gen)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            progress(f"vae step {step + 1}/{cfg.vae_steps} loss {np.mean(losses[-100:]):.5f}")
    vae.eval()
    mean, std = latent_moments(vae, images)
    scale = float(1.0 / (mean.pow(2).mean() + std.pow(2).mean()).sqrt())  # E[z^2] of z = mean + std * noise
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(saved, safe_serialization=True)
    record.write_text(json.dumps(settings))
    return vae, mean, std, float(np.mean(losses[-100:]))


@torch.no_grad()
def latent_moments(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the posterior of every image (unscaled latents)."""
    dists = [vae.encode(images[i:i + 256]).latent_dist for i in range(0, len(images), 256)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def train_denoiser(scenes: list[Scene], mean: torch.Tensor, std: torch.Tensor, scale: float, cfg: PretrainConfig,
                   progress: Callable[[str], None]):
    tokenizer = world_model.build_tokenizer()
    text_encoder, unet = world_model.build_text_encoder(tokenizer), world_model.build_unet()
    scheduler = world_model.training_scheduler()
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 2])
    ema = [p.detach().clone() for p in params]
    losses = []
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(scenes), (cfg.batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        captions = [noisy_caption(scenes[i], rng, cfg.mismatch_fraction, cfg.caption_dropout) for i in idx.tolist()]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        eps = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        x_t = scheduler.add_noise(z0, eps, t)
        pred = unet(x_t, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.ema_decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            progress(f"denoiser step {step + 1}/{cfg.unet_steps} loss {np.mean(losses[-100:]):.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return tokenizer, text_encoder.eval(), unet.eval(), float(np.mean(losses[-100:]))


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it (None outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run_pretrain(cfg: PretrainConfig, output: str | Path, progress: Callable[[str], None] = log.info) -> dict:
    """Pretrain and save the base model under `output` (an SD1.5 diffusers folder); returns the manifest."""
    from tpo_ray.world.accuracy import sample_and_verify

    start = time.perf_counter()
    commit = git_commit()  # the code that runs: read now, not after the hour it takes
    torch.manual_seed(cfg.seed)
    scenes = [train_scene(cfg.seed, i) for i in range(cfg.num_scenes)]
    images = render_batch(scenes)
    progress(f"rendered {len(scenes)} training scenes")
    output = Path(output)
    vae, mean, std, vae_loss = train_vae(images, cfg, progress, output / "vae")
    vae_seconds = time.perf_counter() - start
    tokenizer, text_encoder, unet, loss = train_denoiser(scenes, mean, std, vae.config.scaling_factor, cfg, progress)
    pipe = world_model.assemble_pipeline(vae.eval(), text_encoder, tokenizer, unet)
    output.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(output, safe_serialization=True)
    manifest = {"settings": cfg.model_dump(mode="json"), "commit": commit, "torch": torch.__version__,
                "vae_loss": vae_loss, "denoiser_loss": loss, "scaling_factor": vae.config.scaling_factor,
                "vae_seconds": round(vae_seconds, 1), "seconds": round(time.perf_counter() - start, 1)}
    if cfg.eval_prompts:
        manifest["held_out"] = sample_and_verify(pipe, cfg.eval_prompts, cfg.guidance_scale, cfg.num_inference_steps,
                                                 seed=cfg.seed)
        progress("held-out accuracy: " + ", ".join(f"{k} {v['accuracy']:.2f}"
                                                    for k, v in manifest["held_out"]["attributes"].items()))
    (output / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest

