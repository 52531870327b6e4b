"""Load SD1.5- or SDXL-family components from a diffusers-layout folder, wherever it lives.

Sources: a local folder; `s3://bucket/prefix` (copied once to `cache_dir`, keyed by the URI);
a hub id (resolved from the local Hugging Face cache first, for users who have the weights);
`tiny:sd15` / `tiny:sdxl` (built from configs, saved under `cache_dir`, then loaded from disk like
any other folder). The family is read from `model_index.json` so the trainer never branches on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tpo_ray.config import ModelConfig

log = logging.getLogger(__name__)

SDXL_PIPELINES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
REQUIRED_SUBFOLDERS = {"sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                       "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")}


class ModelLoadError(RuntimeError):
    """The model source cannot be resolved or is not a usable diffusers folder."""


@dataclass
class DiffusionComponents:
    """Everything training needs from a pipeline folder; the U-Net is the only trainable part."""

    family: str
    source_dir: Path
    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]
    noise_scheduler: DDPMScheduler

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)

    def fingerprint(self) -> str:
        """Hash of the frozen encoders' configs and weights files: a cache built from other encoders differs."""
        return model_fingerprint(self.source_dir)


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(path))


# What each part needs from a pipeline folder (the scheduler and model_index.json always come along).
PART_SUBFOLDERS = {"unet": ("unet",), "vae": ("vae",),
                   "text": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}
ENCODER_SUBFOLDERS = PART_SUBFOLDERS["vae"] + PART_SUBFOLDERS["text"]  # the cache's inputs (and fingerprint)


def pipeline_components(index: dict[str, Any]) -> list[str]:
    """Component subfolders named in a model_index.json (not `_class_name` etc., not null components)."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[1] is not None]


def resolve_model_dir(cfg: ModelConfig, subfolders: Sequence[str] | None = None) -> Path:
    """Turn `cfg.pretrained` into a local diffusers folder, materialising it if needed.

    For `s3://` only `subfolders` are copied (None = every component): the cache driver that
    fingerprints the VAE and text encoders never downloads the U-Net (SDXL: ~10 GB), a training
    worker never downloads the VAE. Each subfolder arrives atomically, so a crash never leaves a
    half-copied component.
    """
    source = cfg.pretrained
    cache = _expand(cfg.cache_dir)
    if source.startswith("tiny:"):
        from tpo_ray.models.tiny import TINY_FAMILIES, save_tiny_model

        family = source.removeprefix("tiny:")
        if family not in TINY_FAMILIES:
            raise ModelLoadError(f"model.pretrained={source!r}: tiny families are {[f'tiny:{f}' for f in TINY_FAMILIES]}")
        target = cache / f"tiny-{family}"
        if not (target / "model_index.json").exists():
            _atomic_materialise(target, lambda tmp: save_tiny_model(tmp, family))
        return target
    if source.startswith("s3://"):
        target = cache / ("s3-" + hashlib.sha256(source.encode()).hexdigest()[:16])
        _materialise_from_s3(source, target, subfolders)
        return target
    local = _expand(source)
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(f"model.pretrained={source!r} is a folder without model_index.json (not a diffusers pipeline)")
        return local
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"model.pretrained={source!r}: no such folder, and not a hub id of the form owner/name")
    return _from_hub(source, cfg.revision)


def _atomic_materialise(target: Path, fill) -> None:
    """Write into a temp sibling and rename, so a crash never leaves a half-written model folder."""
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if target.exists():  # another process won the race; theirs is complete
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _materialise_from_s3(uri: str, target: Path, subfolders: Sequence[str] | None) -> None:
    from tpo_ray.data.io import filesystem_for

    fs, root = filesystem_for(uri)
    root = root.rstrip("/")
    if not (target / "model_index.json").exists():
        if not fs.exists(f"{root}/model_index.json"):
            raise ModelLoadError(f"{uri}: no model_index.json under this prefix (not a diffusers pipeline)")

        def skeleton(tmp: Path) -> None:
            fs.get(f"{root}/model_index.json", str(tmp / "model_index.json"))
            fs.get(f"{root}/scheduler/", str(tmp / "scheduler"), recursive=True)

        _atomic_materialise(target, skeleton)
    index = json.loads((target / "model_index.json").read_text())
    components = pipeline_components(index)
    wanted = components if subfolders is None else [s for s in subfolders if s in components]
    for sub in wanted:
        if not (target / sub).is_dir():
            _atomic_materialise(target / sub, lambda tmp, sub=sub: fs.get(f"{root}/{sub}/", str(tmp), recursive=True))
            log.info("copied %s/%s to %s", uri, sub, target / sub)


def hub_allow_patterns() -> list[str]:
    """The files of a diffusers repo that loading needs: configs, tokenizer files and each component's
    full-precision safetensors (sharded or not). Not the root single-file checkpoints, fp16 variants,
    ONNX, OpenVINO or Flax weights that large repos also hold (+20 GB for SDXL)."""
    return ["model_index.json", "*/*.json", "*/*.txt", "*/diffusion_pytorch_model.safetensors",
            "*/diffusion_pytorch_model-*-of-*.safetensors", "*/model.safetensors", "*/model-*-of-*.safetensors"]


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = hub_allow_patterns()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception as cached_err:  # not in the local cache: try the network, say both if both fail
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except Exception as err:
            raise ModelLoadError(
                f"model.pretrained={repo_id!r}: not in the local Hugging Face cache ({cached_err.__class__.__name__}) "
                f"and not downloadable ({err.__class__.__name__}: {err}); pass a local folder or s3:// URI"
            ) from None


def detect_family(model_dir: Path) -> str:
    index = json.loads((model_dir / "model_index.json").read_text())
    if index.get("_class_name") in SDXL_PIPELINES or "text_encoder_2" in index:
        return "sdxl"
    return "sd15"


def model_fingerprint(model_dir: Path) -> str:
    """Stable hash over configs and weight file sizes of VAE and text encoders (cheap, no weight reads)."""
    h = hashlib.sha256()
    for sub in ENCODER_SUBFOLDERS:
        folder = model_dir / sub
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            h.update(f"{sub}/{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


ALL_PARTS = ("unet", "vae", "text")


def load_components(
    cfg: ModelConfig, dtype: torch.dtype = torch.float32, parts: tuple[str, ...] = ALL_PARTS
) -> DiffusionComponents:
    """Load U-Net, VAE, text encoder(s), tokenizer(s) and a DDPM training scheduler.

    `parts` limits what is loaded (the cache stage needs no U-Net; training from a cache needs only
    the U-Net). Frozen parts are put in eval mode with gradients off; the U-Net stays trainable.
    """
    needed = [sub for part in parts for sub in PART_SUBFOLDERS[part]]
    model_dir = resolve_model_dir(cfg, needed)
    family = detect_family(model_dir) if cfg.family == "auto" else cfg.family
    missing = [s for s in REQUIRED_SUBFOLDERS[family] if s in {"scheduler", *needed} and not (model_dir / s).is_dir()]
    if missing:
        raise ModelLoadError(f"{model_dir}: {family} pipeline folder lacks subfolders {missing}")
    scheduler_kwargs: dict[str, Any] = {}
    if cfg.prediction_type is not None:
        scheduler_kwargs["prediction_type"] = cfg.prediction_type
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler", **scheduler_kwargs)
    unet = vae = None
    encoders: list[torch.nn.Module] = []
    tokenizers: list[CLIPTokenizer] = []
    if "unet" in parts:
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=dtype)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
    if "vae" in parts:
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=dtype)
    if "text" in parts:
        encoders.append(CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=dtype))
        tokenizers.append(CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer"))
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder_2",
                                                                        dtype=dtype))
            tokenizers.append(CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer_2"))
    for frozen in [m for m in (vae, *encoders) if m is not None]:
        frozen.requires_grad_(False)
        frozen.eval()
    log.info("loaded %s model from %s (prediction_type=%s)", family, model_dir, scheduler.config.prediction_type)
    return DiffusionComponents(family, model_dir, unet, vae, encoders, tokenizers, scheduler)


def load_start_unet(cfg: ModelConfig, init_from: str | None = None):
    """(U-Net, training scheduler) a run starts from: `init_from` (a diffusers U-Net folder, e.g. the
    SFT export's unet/; the base U-Net is then never loaded) or the base model's. It is also the run's
    reference model."""
    comps = load_components(cfg, parts=() if init_from else ("unet",))
    unet = UNet2DConditionModel.from_pretrained(init_from) if init_from else comps.unet
    return unet, comps.noise_scheduler
