"""`run_export`: a trained checkpoint -> a diffusers pipeline folder (safetensors) anyone can load.

The base pipeline (model.pretrained) supplies VAE, text encoders, tokenizers and scheduler; the
U-Net is the run's starting U-Net with the checkpoint's trainable weights, LoRA merged in.
`StableDiffusionPipeline.from_pretrained` / `StableDiffusionXLPipeline.from_pretrained` load it.

The export runs in a Ray task, never in the calling process. The caller is often a job's driver, and
KubeRay runs drivers on the head pod beside the GCS, the dashboard and the object store. A full fp32
pipeline plus the checkpoint is ~5 GB for SD1.5 and ~16 GB for SDXL: loaded there, it could OOM-kill
the head and every job with it. The task asks for 1 CPU (the head in `cluster/` offers none, so it
runs on a worker node) and for the memory the export will hold (`export.memory_gb`, else estimated
from the files), so Ray places it where that memory is free.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join, swapped_folder
from tpo_ray.eval.sampling import NO_SAFETY_CHECKER
from tpo_ray.runs import run_identity

log = logging.getLogger(__name__)

EXPORT_RECORD = "tpo_ray_export.json"  # in an export folder: what it was made from (`export_identity`)
GiB = 2**30


@dataclass
class ExportResult:
    output: Path
    checkpoint: str
    family: str
    seconds: float


def _local_checkpoint(path: str, cfg: TPOConfig) -> Path:
    if not is_uri(path):
        return Path(path)
    fs, p = filesystem_for(path)
    target = Path(cfg.output_dir) / "_export_checkpoint"
    fs.get(p.rstrip("/") + "/", str(target), recursive=True)
    return target


def _copy_slow_tokenizer_files(model_dir: Path, output: Path) -> None:
    """transformers 5 saves tokenizers as `tokenizer.json` only; keep the base's `vocab.json`/`merges.txt`
    too, so tools on older transformers (and anything reading the BPE files) load the export."""
    import shutil

    for sub in ("tokenizer", "tokenizer_2"):
        for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            src, dst = model_dir / sub / name, output / sub / name
            if src.is_file() and dst.parent.is_dir() and not dst.exists():
                shutil.copyfile(src, dst)


@contextmanager
def replaced_folder(output: Path) -> Iterator[Path]:
    """Write a pipeline into a staging folder next to `output`, then swap it in (`swapped_folder`).

    `save_pretrained` into an existing folder leaves the components the new pipeline lacks (an older
    export's `text_encoder_2/`, a safety checker) and a crash halfway leaves a mix; a swap leaves either
    the old folder or the whole new one. A non-empty folder that is not a pipeline is refused, not
    replaced: it may hold something else of the user's.
    """
    if output.exists() and any(output.iterdir()) and not (output / "model_index.json").is_file():
        raise FileExistsError(f"export.output {output} is a non-empty folder that holds no pipeline "
                              "(no model_index.json); choose an empty or new folder")
    with swapped_folder(output, "export") as staging:
        yield staging


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
VARIANT_MARKS = (".fp16.", ".non_ema.", ".ema.", ".bf16.")  # diffusers variants a default load does not read


def _loaded_files(files: dict[str, int]) -> int:
    """Bytes of the weight files a default `from_pretrained` of a pipeline or U-Net folder loads: per
    component folder its plain safetensors (its .bin twins only when it has none), not the fp16 / non-EMA
    variants or the single-file checkpoints at the root that hub snapshots carry beside them."""
    by_folder: dict[str, dict[str, int]] = {}
    for name, size in files.items():
        folder, _, base = name.rpartition("/")
        if base.endswith(WEIGHT_SUFFIXES) and not any(mark in base for mark in VARIANT_MARKS):
            by_folder.setdefault(folder, {})[base] = size
    total = 0
    for folder, found in by_folder.items():
        if folder == "" and len(by_folder) > 1:
            continue  # root-level single-file checkpoints of a pipeline folder
        safetensors = {n: s for n, s in found.items() if n.endswith(".safetensors")}
        total += sum((safetensors or found).values())
    return total


def _weights_bytes(path: str) -> int | None:
    """Bytes a default load of the folder (or file) at `path` reads, local or a URI; None where that cannot
    be known cheaply (a hub id: listing it asks the network)."""
    if is_uri(path):
        fs, p = filesystem_for(path)
        root = p.rstrip("/")
        return _loaded_files({name[len(root) + 1:] if name.startswith(root + "/") else name.rsplit("/", 1)[-1]: size
                              for name, size in fs.du(p, total=False).items()})
    folder = Path(path).expanduser()
    if not folder.exists():
        return None
    if folder.is_file():
        return folder.stat().st_size
    return _loaded_files({str(f.relative_to(folder)): f.stat().st_size for f in folder.rglob("*") if f.is_file()})


def export_identity(cfg: TPOConfig, checkpoint: str) -> dict:
    """What an export is made of, recorded in it (EXPORT_RECORD): a pipeline rerun skips the export only
    when all of it matches (the checkpoint, EMA or not, the base pipeline, the start U-Net, the adapters)."""
    return {"checkpoint": checkpoint, "use_ema": cfg.export.use_ema, "pretrained": cfg.model.pretrained,
            "init_from": cfg.train.init_from, "lora": cfg.model.lora.model_dump(mode="json")}


def export_memory(cfg: TPOConfig, checkpoint: str) -> int:
    """Bytes the export task reserves: `export.memory_gb`, or an estimate of its peak. The pipeline is
    held in fp32 (twice its files where they are fp16), the starting U-Net beside it while it is merged,
    and the checkpoint's weights; 1 GiB for the process. 0 (no request) when the base cannot be sized."""
    if cfg.export.memory_gb is not None:
        return int(cfg.export.memory_gb * GiB)
    base = _weights_bytes(cfg.model.pretrained)
    if base is None:
        log.info("export: %s cannot be sized here; set export.memory_gb for Ray to reserve memory for the "
                 "export", cfg.model.pretrained)
        return 0
    from tpo_ray.train.checkpoint import WEIGHTS

    unet = (_weights_bytes(cfg.train.init_from) or 0) if cfg.train.init_from else 0
    merged = _weights_bytes(join(checkpoint, "ema.safetensors" if cfg.export.use_ema else WEIGHTS)) or 0
    return 2 * base + 2 * unet + merged + GiB


def run_export(cfg: TPOConfig) -> ExportResult:
    """Export in a Ray task that reserves the memory it holds (see the module docstring)."""
    import ray

    from tpo_ray.ray_utils import ensure_ray

    ensure_ray()
    checkpoint = cfg.export.checkpoint or run_identity(cfg).latest_checkpoint()
    memory = export_memory(cfg, checkpoint)
    if memory and not os.environ.get("RAY_ADDRESS"):
        # a local Ray instance cannot grow: a request above its memory would wait forever
        memory = min(memory, int(ray.cluster_resources().get("memory", memory)))
    task = ray.remote(num_cpus=1, max_retries=0)(export_pipeline)
    options = {"memory": memory} if memory else {}
    log.info("export: a Ray task with 1 CPU%s", f" and {memory / GiB:.1f} GiB" if memory else "")
    return ray.get(task.options(name="tpo_ray.export", **options).remote(cfg.model_dump(mode="json"), checkpoint))


def export_pipeline(cfg_data: dict, checkpoint: str) -> ExportResult:
    """The export itself, in the process that calls it (the Ray task of `run_export`)."""
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from tpo_ray.models.loading import detect_family, resolve_model_dir
    from tpo_ray.models.reference import merge_checkpoint
    from tpo_ray.config import config_from_dict
    from tpo_ray.train.checkpoint import WEIGHTS

    start = time.perf_counter()
    cfg = config_from_dict(cfg_data, "export task config")
    local = _local_checkpoint(checkpoint, cfg)
    model_dir = resolve_model_dir(cfg.model)
    family = detect_family(model_dir)
    # fp32 throughout, whatever a component's config says (SDXL's text encoders say float16): the
    # export is the master copy; users cast when they load (`dtype=torch.float16`).
    unet = (UNet2DConditionModel.from_pretrained(cfg.train.init_from, dtype=torch.float32)
            if cfg.train.init_from else None)  # then the base U-Net is never loaded
    keeps_checker = (model_dir / "safety_checker").is_dir()
    extra = {} if family != "sd15" or keeps_checker else NO_SAFETY_CHECKER
    if family == "sd15" and not keeps_checker:
        log.info("export: %s has no safety_checker; the exported SD1.5 pipeline has none either", model_dir)
    pipe = DiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32,
                                             **({"unet": unet} if unet is not None else {}), **extra)
    weights_file = local / ("ema.safetensors" if cfg.export.use_ema else WEIGHTS)
    if not weights_file.exists():
        raise FileNotFoundError(f"{weights_file} missing" + (": the run kept no EMA (set train.ema_decay)"
                                                             if cfg.export.use_ema else ""))
    unet = merge_checkpoint(pipe.unet, weights_file, cfg.model.lora)  # the EMA holds exactly the trainable tensors
    unet.requires_grad_(True)
    pipe.unet = unet
    output = Path(cfg.export.output or join(cfg.output_dir, "export"))
    with replaced_folder(output) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        _copy_slow_tokenizer_files(model_dir, staging)
        (staging / EXPORT_RECORD).write_text(json.dumps(export_identity(cfg, checkpoint)))  # swapped in with it
    seconds = time.perf_counter() - start
    log.info("export: %s pipeline from %s -> %s (%.1f s)", family, checkpoint, output, seconds)
    return ExportResult(output, checkpoint, family, seconds)
