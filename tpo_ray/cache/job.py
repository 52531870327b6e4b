"""`run_cache`: encode the training examples once with Ray Data (GPU actors when available).

A cache is keyed by the model fingerprint, kind, resolution, crop policy, the *content* of its
input (file names, sizes, hashes or ETags) and, for triplets, what else it computes (`cache_options`:
the near-synonym threshold, the reference margins' start U-Net, timesteps and seed): regenerated
negatives make a new cache, never reuse the old one. Skips the work when a complete cache for that key exists; a half-written cache (no
manifest) is rebuilt from scratch. Rows that make no example are quarantined in `quarantine/` with
their id and reason; rows in = cached + quarantined is checked, each counted on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpo_ray.cache.encoder import CacheEncoder
from tpo_ray.cache.examples import REQUIRED_COLUMNS
from tpo_ray.cache.store import CacheError, cache_dir, cache_fingerprint, read_manifest
from tpo_ray.config import TPOConfig
from tpo_ray.data.fingerprint import content_fingerprint, file_stats
from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, is_uri, join, read_parquet, uri_like
from tpo_ray.data.sources import is_hidden

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


def input_files(source: str) -> list[str]:
    """The parquet files a cache is built from (what `ray.data.read_parquet` reads there)."""
    fs, p = filesystem_for(source)
    if not fs.exists(p):
        raise FileNotFoundError(f"cache input {source} does not exist; run the stage that writes it first "
                                "(`tpo-ray negatives` for triplets) or set cache.input")
    if fs.isfile(p):
        return [source]
    names = [n for n in sorted(fs.find(p)) if n.endswith(".parquet") and not is_hidden(n[len(p):].lstrip("/"))]
    if not names:
        raise FileNotFoundError(f"cache input {source} holds no parquet files")
    return [uri_like(source, n) for n in names]


def margin_settings(cfg: TPOConfig) -> dict[str, Any]:
    """What a triplet's `ref_margin` depends on: the start U-Net's content (`train.init_from` or the base
    `unet/`, hashed like the precomputed reference errors' key), the noise schedule and prediction type,
    the timesteps (`eval.timesteps`, one noise draw) and the seed; `init_from` is where the actors load it."""
    from tpo_ray.cache.reference import start_unet_folder
    from tpo_ray.models.loading import resolve_model_dir

    folder = start_unet_folder(cfg)
    fs, p = filesystem_for(folder)
    files = sorted(f for f in fs.find(p) if not f.rsplit("/", 1)[-1].startswith("."))
    if not files:
        raise FileNotFoundError(f"cache.reference_margins: the start U-Net folder {folder} holds no files "
                                "(train.init_from names a diffusers U-Net folder, e.g. the SFT export's unet/)")
    schedule = (resolve_model_dir(cfg.model, ("scheduler",)) / "scheduler" / "scheduler_config.json").read_bytes()
    return {"reference": content_fingerprint(folder, [uri_like(folder, f) for f in files]),
            "scheduler": hashlib.sha256(schedule).hexdigest()[:16], "prediction_type": cfg.model.prediction_type,
            "timesteps": [int(t) for t in cfg.eval.timesteps], "noise_draws": 1, "seed": cfg.train.seed}


def cache_options(cfg: TPOConfig) -> dict[str, Any]:
    """What a triplet cache computes beyond the encodings, and with which settings (part of its key):
    `cache.max_text_similarity` (the quarantine threshold) and `cache.reference_margins`. Other kinds
    compute neither, so their key ignores both."""
    if cfg.data_kind() != "triplet":
        return {}
    cc, d = cfg.cache, cfg.data
    if d.hard_negatives is not None and d.hard_negatives_by == "reference" and not cc.reference_margins:
        # the margins are part of the key: this config could never find a cache that stores them
        raise ValueError("data.hard_negatives_by=reference ranks candidates by the start U-Net's margins: set "
                         "cache.reference_margins=true (the cache then stores them), or use "
                         "data.hard_negatives_by=clip or random")
    return {"max_text_similarity": cc.max_text_similarity,
            "reference_margins": margin_settings(cfg) if cc.reference_margins else None}


def cache_settings(cfg: TPOConfig) -> dict[str, Any]:
    """What a config's cache is built from, short of the input's content: two configs with equal
    settings read the same cache (how a Tune sweep checks its trials share one, before any exists)."""
    kind = cfg.data_kind()
    return {"kind": kind, "model": model_identity(cfg), "resolution": cfg.data.resolution,
            "center_crop": cfg.data.center_crop, "input": cache_input(cfg, kind), "options": cache_options(cfg)}


def _built_caches(cfg: TPOConfig, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Manifests of the complete caches under the cache root built with these settings, newest first."""
    fs, root = filesystem_for(cache_root(cfg))
    if not fs.exists(root):
        return []
    found = []
    for sub in fs.ls(root, detail=False):
        manifest = read_manifest(uri_like(cache_root(cfg), sub))
        if manifest and manifest.get("complete") and manifest.get("kind") == settings["kind"] \
                and manifest.get("source") == settings["input"] and manifest.get("resolution") == settings["resolution"] \
                and manifest.get("center_crop") == settings["center_crop"] \
                and manifest.get("model", {}).get("fingerprint") == settings["model"]["fingerprint"]:
            found.append(manifest)
    return sorted(found, key=lambda m: m.get("built_at", 0), reverse=True)


def input_content(cfg: TPOConfig, settings: dict[str, Any]) -> tuple[str, list[list] | None]:
    """(content fingerprint, file stats) of the cache input. Hashing is skipped when a cache built with
    these settings recorded the same file stats (size, times or ETag): every Tune trial and every
    training start would otherwise re-read the whole input. When the input is gone (the negatives were
    deleted after caching), the newest cache built from it is used, with a warning."""
    source = settings["input"]
    try:
        files = input_files(source)
    except FileNotFoundError:
        built = _built_caches(cfg, settings)
        if not built:
            raise
        log.warning("cache: the input %s is gone; using the cache built from it with content %s", source,
                    built[0]["input_fingerprint"])
        return built[0]["input_fingerprint"], None
    stats = file_stats(source, files)
    for manifest in _built_caches(cfg, settings):
        if manifest.get("input_stats") == stats:
            return manifest["input_fingerprint"], stats
    return content_fingerprint(source, files), stats


def expected_cache(cfg: TPOConfig) -> tuple[str, str, dict[str, Any]]:
    """(directory, fingerprint, what it is keyed on) for this config's cache."""
    settings = cache_settings(cfg)
    kind, model, source = settings["kind"], settings["model"], settings["input"]
    content, stats = input_content(cfg, settings)
    fp = cache_fingerprint(model["fingerprint"], kind, cfg.data.resolution, cfg.data.center_crop, content,
                           settings["options"])
    wanted = {"source": model["source"], "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop,
              "input": source, "input_fingerprint": content, "input_stats": stats, "options": settings["options"]}
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
    quarantine = join(directory, "quarantine")
    encoded = ds.map_batches(
        CacheEncoder,
        fn_constructor_kwargs={"model": cfg.model.model_dump(mode="json"), "kind": kind,
                               "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop,
                               "holdout_fraction": cfg.data.holdout_fraction, "seed": cfg.train.seed,
                               "quarantine_dir": quarantine, "max_image_pixels": cc.max_image_pixels,
                               "max_text_similarity": cc.max_text_similarity if kind == "triplet" else None,
                               "reference_margins": _margin_actor_settings(cfg, keyed["options"])},
        batch_size=cc.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cc.concurrency),
        num_gpus=1 if cc.use_gpu else 0,
    )
    encoded.write_parquet(directory, partition_cols=["split"], row_group_size=cc.row_group_size)
    rows = {split: _count_rows(join(directory, f"split={split}")) for split in ("train", "val")}
    rejected = _quarantine_reasons(quarantine)
    quarantined = sum(rejected.values())
    if rows_in != rows["train"] + rows["val"] + quarantined:
        raise CacheError(f"cache rows do not add up: {rows_in} rows in, {rows['train']} + {rows['val']} cached, "
                         f"{quarantined} quarantined ({directory}); rerun `tpo-ray cache` to rebuild it")
    manifest = {"complete": True, "fingerprint": fp, "kind": kind, "model": keyed["model"],
                "resolution": cfg.data.resolution, "center_crop": cfg.data.center_crop, "source": source,
                "input_fingerprint": keyed["input_fingerprint"], "input_stats": keyed["input_stats"],
                "options": keyed["options"], "built_at": time.time(), "shapes": shapes, "rows": rows,
                "rows_in": rows_in, "quarantined": quarantined, "rejected": rejected, "dtype": str(torch.float16)}
    fs.pipe(join(p, "manifest.json"), json.dumps(manifest, indent=1).encode())
    seconds = time.perf_counter() - start
    log.info("cache: %d train + %d val %s examples (%d quarantined%s) in %.1f s -> %s", rows["train"], rows["val"],
             kind, quarantined, f": {rejected}" if rejected else "", seconds, directory)
    return CacheResult(directory, manifest, False, seconds)


def _margin_actor_settings(cfg: TPOConfig, options: dict[str, Any]) -> dict[str, Any] | None:
    """What an encoder actor needs to compute `ref_margin` (None: the cache stores none)."""
    margins = options.get("reference_margins")
    if margins is None:
        return None
    return {"init_from": cfg.train.init_from, "timesteps": margins["timesteps"], "seed": margins["seed"]}


def _quarantine_reasons(directory: str) -> dict[str, int]:
    """Quarantined rows per reason, counted from the files the encoder actors wrote."""
    fs, p = filesystem_for(directory)
    counts: Counter[str] = Counter()
    for f in sorted(fs.glob(p + "/*.parquet")) if fs.exists(p) else []:
        counts.update(read_parquet(uri_like(directory, f)).column(schema.REASON).to_pylist())
    return dict(sorted(counts.items()))


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
