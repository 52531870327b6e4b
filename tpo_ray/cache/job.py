"""`run_cache`: encode the training examples once with Ray Data (GPU actors when available).

Skips the work when a complete cache for the same model fingerprint, kind, resolution and crop
policy exists; a half-written cache (no manifest) is rebuilt from scratch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpo_ray.cache.encoder import CacheEncoder
from tpo_ray.cache.examples import REQUIRED_COLUMNS
from tpo_ray.cache.store import cache_dir, cache_fingerprint, read_manifest
from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join

log = logging.getLogger(__name__)


@dataclass
class CacheResult:
    directory: str
    manifest: dict[str, Any]
    reused: bool
    seconds: float


def cache_root(cfg: TPOConfig) -> str:
    return cfg.cache.output or join(cfg.output_dir, "cache")


def cache_input(cfg: TPOConfig, kind: str) -> str:
    """The rows to encode, as an absolute path or URI (it is part of the cache key)."""
    if cfg.cache.input:
        source = cfg.cache.input
    else:
        defaults = {"triplet": join(cfg.negatives.output or join(cfg.output_dir, "negatives"), "triplets"),
                    "single": cfg.captions_source()}
        if kind not in defaults:
            raise ValueError(f"cache.input is required for {kind!r} examples (no default source)")
        source = defaults[kind]
    return source if is_uri(source) else str(Path(source).expanduser().absolute())


def model_identity(cfg: TPOConfig) -> dict[str, Any]:
    from tpo_ray.models.loading import ENCODER_SUBFOLDERS, detect_family, model_fingerprint, resolve_model_dir

    model_dir = resolve_model_dir(cfg.model, ENCODER_SUBFOLDERS)
    return {"source": cfg.model.pretrained, "family": detect_family(model_dir),
            "fingerprint": model_fingerprint(model_dir)}


def expected_cache(cfg: TPOConfig) -> tuple[str, str, dict[str, Any]]:
    """(directory, fingerprint, what it is keyed on) for this config's cache."""
    kind = cfg.data_kind()
    model = model_identity(cfg)
    source = cache_input(cfg, kind)
    fp = cache_fingerprint(model["fingerprint"], kind, cfg.data.resolution, cfg.data.center_crop, source)
    wanted = {"source": model["source"], "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop,
              "input": source}
    return cache_dir(cache_root(cfg), kind, fp), fp, {**wanted, "model": model}


def _shapes_and_null(cfg: TPOConfig, directory: str) -> dict[str, Any]:
    """Tensor shapes of the cache and the empty-caption conditioning, computed in a Ray task.

    The driver never holds a VAE or text encoder (SDXL: ~3.5 GB next to every encoder actor); the
    task runs where the encoders run (a GPU when `cache.use_gpu`).
    """
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.cache.use_gpu else 0)(_shapes_and_null_task)
    return ray.get(task.remote(cfg.model_dump(mode="json"), directory))


def _shapes_and_null_task(cfg_data: dict[str, Any], directory: str) -> dict[str, Any]:
    from safetensors.torch import save

    from tpo_ray.config import config_from_dict
    from tpo_ray.models.encoding import encode_captions
    from tpo_ray.models.loading import load_components

    cfg = config_from_dict(cfg_data, "cache task config")
    comps = load_components(cfg.model, parts=("vae", "text"))
    null = encode_captions(comps, [""])
    factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
    side = cfg.data.resolution // factor
    tensors = {"cond": null.prompt_embeds[0].contiguous()}
    if null.pooled is not None:
        tensors["pooled"] = null.pooled[0].contiguous()
    fs, p = filesystem_for(join(directory, "null_cond.safetensors"))
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe(p, save(tensors))
    return {
        "x0": [int(comps.vae.config.latent_channels), side, side],
        "cond": list(null.prompt_embeds.shape[1:]),
        "pooled": list(null.pooled.shape[1:]) if null.pooled is not None else None,
        "emb": [int(null.prompt_embeds.shape[-1])],
        "family": comps.family,
    }


def run_cache(cfg: TPOConfig) -> CacheResult:
    import ray

    from tpo_ray.cluster import require_shared_paths
    from tpo_ray.ray_utils import ensure_ray

    start = time.perf_counter()
    kind = cfg.data_kind()
    directory, fp, keyed = expected_cache(cfg)
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("complete"):
        log.info("cache: reusing %s (%s rows)", directory, manifest["rows"])
        return CacheResult(directory, manifest, True, time.perf_counter() - start)
    fs, p = filesystem_for(directory)
    if fs.exists(p):
        log.warning("cache: %s has no complete manifest (interrupted build); rebuilding", directory)
        fs.rm(p, recursive=True)
    source = cache_input(cfg, kind)
    ensure_ray()
    require_shared_paths({"cache.input": source, "cache.output": cache_root(cfg)}, cfg.shared_filesystem)
    ds = ray.data.read_parquet(source)
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in ds.schema().names]
    if missing:
        raise ValueError(f"cache input {source} lacks columns {missing} needed for {kind!r} examples "
                         f"(needs {list(REQUIRED_COLUMNS[kind])})")
    rows_in = ds.count()
    shapes = _shapes_and_null(cfg, directory)
    cc = cfg.cache
    encoded = ds.map_batches(
        CacheEncoder,
        fn_constructor_kwargs={"model": cfg.model.model_dump(mode="json"), "kind": kind,
                               "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop,
                               "holdout_fraction": cfg.data.holdout_fraction, "seed": cfg.train.seed},
        batch_size=cc.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cc.concurrency),
        num_gpus=1 if cc.use_gpu else 0,
    )
    encoded.write_parquet(directory, partition_cols=["split"], row_group_size=cc.row_group_size)
    rows = {split: _count_rows(join(directory, f"split={split}")) for split in ("train", "val")}
    manifest = {"complete": True, "fingerprint": fp, "kind": kind, "model": keyed["model"],
                "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop, "source": source,
                "shapes": shapes, "rows": rows, "rows_in": rows_in,
                "skipped": rows_in - rows["train"] - rows["val"], "dtype": str(torch.float16)}
    fs.pipe(join(p, "manifest.json"), json.dumps(manifest, indent=1).encode())
    seconds = time.perf_counter() - start
    log.info("cache: %d train + %d val %s examples (%d skipped) in %.1f s -> %s", rows["train"], rows["val"], kind,
             manifest["skipped"], seconds, directory)
    return CacheResult(directory, manifest, False, seconds)


def _count_rows(directory: str) -> int:
    import pyarrow.parquet as pq

    fs, p = filesystem_for(directory)
    if not fs.exists(p):
        return 0
    total = 0
    for f in fs.glob(p + "/*.parquet"):
        with fs.open(f, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total
