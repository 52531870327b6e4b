"""Sampling with the model being trained or exported, and image grids for MLflow and reports; for `tpo-ray
eval sample`, what a model source is (`describe_models`: checked and stamped on the driver, before any
work) and the pipeline that samples it (`load_sampling_pipeline`: an export, a U-Net folder or a training
checkpoint merged in memory)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


def build_pipeline(model_dir, family: str, unet):
    """The base pipeline around `unet` (no copy: samples show the weights as they are now).

    VAE and text encoders load in the U-Net's dtype and move to its device. The dtype must be
    explicit: SDXL's published text-encoder configs say `torch_dtype: float16`, which transformers 5
    honours, and an fp16 encoder next to an fp32 (or bf16) U-Net fails in the first projection. The
    safety checker is left out: previews are for the person training, not for publication.
    """
    from diffusers import DiffusionPipeline

    extra = NO_SAFETY_CHECKER if family == "sd15" else {}
    pipe = DiffusionPipeline.from_pretrained(model_dir, unet=unet, dtype=unet.dtype, **extra)
    return pipe.to(unet.device)


@torch.no_grad()
def sample_grid(pipe, prompts: Sequence[str], steps: int, resolution: int, seed: int = 0) -> Image.Image:
    """One image per prompt from a fixed seed, so grids from different steps compare directly."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    images = pipe(list(prompts), num_inference_steps=steps, height=resolution, width=resolution,
                  generator=generator, output_type="pil").images
    return image_grid(images)


# --- model sources: what a name in eval.models points at, checked and stamped on the driver -------------

SOURCE_KINDS = ("pipeline", "unet", "checkpoint")


class ModelSourceError(ValueError):
    """One or more eval models cannot be sampled; the message lists each with what was found."""


@dataclass(frozen=True)
class ModelSource:
    """An eval model as the driver found it: what it is, where, and what identifies its weights now.

    `kind`: `pipeline` (an export or any diffusers pipeline: a folder, s3://, a hub id, tiny:...), `unet`
    (a diffusers U-Net folder, sampled inside the base pipeline `model.pretrained`) or `checkpoint` (a
    training checkpoint folder of this config's run, merged into its start U-Net inside the base
    pipeline). `stamp`: 16 hex digits over the weight files' names, sizes and mtimes (object storage:
    sizes and ETags; hub ids: the snapshot's commit; tiny:... its name), a checkpoint's together with
    its start U-Net's, the base's and the LoRA settings: retraining into the same folder changes it.
    `family`, `scheduler` and `scheduler_config` (a digest) are the sampling pipeline's."""

    name: str
    kind: str
    source: str
    stamp: str
    family: str
    scheduler: str
    scheduler_config: str


def model_source_kind(source: str) -> str:
    """`checkpoint` (a folder holding a training checkpoint's weights), `unet` (a diffusers U-Net folder) or
    `pipeline` (anything else: an export, a hub id, s3://, tiny:...), as `tpo-ray eval implicit` reads them."""
    from tpo_ray.data.io import is_uri
    from tpo_ray.train.checkpoint import WEIGHTS

    if is_uri(source) or ":" in source and not Path(source).exists():
        return "pipeline"
    folder = Path(source).expanduser()
    if (folder / WEIGHTS).is_file():
        return "checkpoint"
    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel":
        return "unet"
    return "pipeline"


def _digest(*parts: object) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def files_stamp(folder: Path) -> str:
    """A digest of every file's path, size and mtime under `folder` (stat only, no weight reads)."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in f.relative_to(folder).parts))
    return _digest(*(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files))


def _scheduler(model_index: dict, scheduler_config: dict) -> tuple[str, str]:
    """(scheduler class, digest of its config): the class model_index.json names and the config's values."""
    entry = model_index.get("scheduler")
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 else str(scheduler_config.get("_class_name"))
    values = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return cls, _digest(json.dumps(values, sort_keys=True))


def _family(model_index: dict) -> str:
    from tpo_ray.models.loading import SDXL_PIPELINES

    return "sdxl" if model_index.get("_class_name") in SDXL_PIPELINES or "text_encoder_2" in model_index else "sd15"


def _found(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())[:6]
    return f"a folder holding {names}" if names else "an empty folder"


def _local_pipeline(folder: Path, stamp: str | None = None) -> tuple[str, str, str, str]:
    if not (folder / "model_index.json").is_file():
        raise ModelSourceError(
            f"{_found(folder)}, without model_index.json (a diffusers pipeline such as an export), config.json of "
            "a UNet2DConditionModel (a U-Net folder) or unet_trainable.safetensors (a training checkpoint)")
    index = json.loads((folder / "model_index.json").read_text())
    sched = folder / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        raise ModelSourceError("a pipeline folder without scheduler/scheduler_config.json")
    return (stamp or files_stamp(folder), _family(index), *_scheduler(index, json.loads(sched.read_text())))


def _s3_pipeline(uri: str) -> tuple[str, str, str, str]:
    from tpo_ray.data.io import filesystem_for

    fs, root = filesystem_for(uri)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/model_index.json"):
        raise ModelSourceError("no model_index.json under this prefix (not a diffusers pipeline)")
    index = json.loads(fs.cat(f"{root}/model_index.json"))
    sched = json.loads(fs.cat(f"{root}/scheduler/scheduler_config.json"))
    listing = fs.find(root, detail=True)
    stamp = _digest(*(f"{k[len(root):]}:{v.get('size')}:{v.get('ETag') or v.get('LastModified') or v.get('mtime')}"
                      for k, v in sorted(listing.items())))
    return (stamp, _family(index), *_scheduler(index, sched))


def _hub_pipeline(repo_id: str, revision: str | None) -> tuple[str, str, str, str]:
    from huggingface_hub import hf_hub_download

    def get(name: str) -> Path:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=True))
        except Exception:  # not in the local cache: the network, where the pipeline itself would come from
            return Path(hf_hub_download(repo_id, name, revision=revision))

    try:
        index_file, sched_file = get("model_index.json"), get("scheduler/scheduler_config.json")
    except Exception as err:
        raise ModelSourceError(f"a hub id whose model_index.json is neither in the local Hugging Face cache nor "
                               f"downloadable ({err.__class__.__name__})") from None
    commit = index_file.parent.name  # .../snapshots/<commit>/model_index.json
    index = json.loads(index_file.read_text())
    return (_digest(repo_id, commit), _family(index), *_scheduler(index, json.loads(sched_file.read_text())))


def describe_pipeline(source: str, cache_dir: str, revision: str | None = None) -> tuple[str, str, str, str]:
    """(stamp, family, scheduler class, scheduler config digest) of a pipeline source, reading only
    model_index.json, the scheduler's config and file listings; `ModelSourceError` says what was found."""
    from tpo_ray.config import ModelConfig
    from tpo_ray.data.io import is_uri

    if source.startswith("tiny:"):
        from tpo_ray.models.loading import resolve_model_dir
        from tpo_ray.models.tiny import TINY_FAMILIES

        if source.removeprefix("tiny:") not in TINY_FAMILIES:
            raise ModelSourceError(f"tiny families are {[f'tiny:{f}' for f in TINY_FAMILIES]}")
        # built from code: the name is its content; materialised (small) to read its scheduler
        return _local_pipeline(resolve_model_dir(ModelConfig(pretrained=source, cache_dir=cache_dir)), _digest(source))
    if source.startswith("s3://"):
        return _s3_pipeline(source)
    if is_uri(source):
        raise ModelSourceError("a URI scheme other than s3://")
    local = Path(source).expanduser()
    if local.is_dir():
        return _local_pipeline(local)
    if local.exists():
        raise ModelSourceError("a file, not a folder")
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelSourceError("no such folder, and not a hub id of the form owner/name")
    return _hub_pipeline(source, revision)


def _unet_stamp(folder: Path) -> str:
    if not any(f.name.startswith("diffusion_pytorch_model") for f in folder.iterdir()):
        raise ModelSourceError(f"a U-Net folder ({folder}) without diffusion_pytorch_model weights")
    return files_stamp(folder)


def describe_models(cfg) -> dict[str, ModelSource]:
    """Every model of `eval_models(cfg)` checked and stamped, before any work: one `ModelSourceError` lists
    every model that cannot be sampled with what was found, so no good model's images wait on a bad one."""
    from tpo_ray.eval.sample_job import eval_models
    from tpo_ray.train.checkpoint import WEIGHTS

    mc = cfg.model
    base: tuple[str, str, str, str] | str | None = None
    out: dict[str, ModelSource] = {}
    bad: list[str] = []
    for name, source in eval_models(cfg).items():
        kind = model_source_kind(source)
        local = Path(source).expanduser()
        where = str(local.resolve()) if kind != "pipeline" or local.exists() else source
        try:
            if kind == "pipeline":
                revision = mc.revision if source == mc.pretrained else None
                stamp, family, sched, sched_cfg = describe_pipeline(source, mc.cache_dir, revision)
            else:
                if base is None:
                    try:
                        base = describe_pipeline(mc.pretrained, mc.cache_dir, mc.revision)
                    except ModelSourceError as err:
                        base = str(err)
                if isinstance(base, str):
                    raise ModelSourceError(f"a {kind} folder, sampled inside model.pretrained={mc.pretrained!r}, "
                                           f"which is {base}")
                base_stamp, family, sched, sched_cfg = base
                if mc.family != "auto":
                    family = mc.family
                if kind == "unet":
                    stamp = _digest("unet", base_stamp, _unet_stamp(local))
                else:
                    init = cfg.train.init_from
                    if init and not Path(init).is_dir():
                        raise ModelSourceError(f"a training checkpoint whose start U-Net train.init_from={init!r} "
                                               "is not a folder")
                    weights = local / WEIGHTS
                    stamp = _digest("checkpoint", base_stamp, _unet_stamp(Path(init)) if init else "",
                                    f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}",
                                    mc.lora.model_dump_json() if mc.lora.enabled else "no lora")
            out[name] = ModelSource(name, kind, where, stamp, family, sched, sched_cfg)
        except ModelSourceError as err:
            bad.append(f"{name}={source!r}: {err}")
    if bad:
        raise ModelSourceError(f"eval.models: {len(bad)} of {len(out) + len(bad)} cannot be sampled, nothing was "
                               "sampled: " + "; ".join(bad) + ". Point each at an export (a diffusers pipeline "
                               "folder), a U-Net folder, a training checkpoint folder, s3://, a hub id or tiny:sd15")
    return out


def settings_json(settings: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces): equal settings give equal strings."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def sampling_settings(cfg, model: ModelSource) -> dict[str, Any]:
    """What, besides the weights, decides an image: scheduler and its config, steps, the guidance used (the
    family's when `eval.guidance_scale` is null), resolution, seed and dtype (fp16 on GPUs, fp32 on CPUs)."""
    ec = cfg.eval
    return {"scheduler": model.scheduler, "scheduler_config": model.scheduler_config,
            "num_inference_steps": ec.num_inference_steps, "guidance_scale": float(ec.guidance(model.family)),
            "resolution": cfg.data.resolution, "seed": cfg.train.seed,
            "dtype": "float16" if ec.use_gpu else "float32"}


def load_sampling_pipeline(cfg, kind: str, source: str, device: str, dtype: torch.dtype):
    """The diffusers pipeline that samples a model source, on `device` in `dtype`, without writing anything.

    `pipeline`: the folder (or s3://, hub id, tiny:...) itself. `unet`: the base pipeline
    (`model.pretrained`) with that U-Net. `checkpoint`: the base pipeline with the run's start U-Net
    (`train.init_from`, else the base's) and the checkpoint's trainable weights merged in fp32 (LoRA
    fused), exactly the U-Net `tpo-ray export` would write. No safety checker for SD1.5: eval images
    are scored, not published."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from tpo_ray.config import ModelConfig
    from tpo_ray.models.loading import detect_family, resolve_model_dir
    from tpo_ray.models.reference import merge_checkpoint
    from tpo_ray.train.checkpoint import WEIGHTS

    unet = None
    if kind == "pipeline":
        folder = resolve_model_dir(ModelConfig(pretrained=source, cache_dir=cfg.model.cache_dir))
    else:
        folder = resolve_model_dir(cfg.model)
        if kind == "unet":
            unet = UNet2DConditionModel.from_pretrained(Path(source), dtype=torch.float32)
        else:
            start = Path(cfg.train.init_from) if cfg.train.init_from else folder / "unet"
            unet = merge_checkpoint(UNet2DConditionModel.from_pretrained(start, dtype=torch.float32),
                                    Path(source) / WEIGHTS, cfg.model.lora)
        unet = unet.requires_grad_(False).to(dtype)
    extra = NO_SAFETY_CHECKER if detect_family(folder) == "sd15" else {}
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, **({"unet": unet} if unet is not None else {}),
                                             **extra).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
