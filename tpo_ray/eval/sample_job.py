"""`run_sample` (`tpo-ray eval-sample`): images for a prompt set from one or more models, on Ray Data.

    <eval.output>/samples/<model>/<prompt id>_<k>.png     image k of a prompt
    <eval.output>/samples/index/*.parquet                 one row per image: model, prompt_id, prompt,
        category, k, seed, path, model_stamp (the model's weights when sampled), settings (canonical
        JSON: scheduler and its config digest, num_inference_steps, guidance_scale used, resolution,
        seed, dtype) and image_sha256 (of the PNG bytes written)

Image k of a prompt has the same seed for every model (`sample_seed`), so models are compared on the
same starting noise. A model is an export or any diffusers pipeline, a U-Net folder or a training
checkpoint (`sampling.describe_models`): each is checked and stamped on the driver before Ray starts,
and one error lists every model that cannot be sampled. A row is current when its model stamp,
settings and prompt text equal today's: a rerun samples only what has no current row (a killed run
resumes; a model retrained into the same folder, or other steps or guidance, is sampled again, with a
log line per model saying why), then rewrites the index with exactly one row per (model, prompt_id, k).
`current_index(cfg)` is what scoring and the report read. A Ray Data map with one pipeline replica per
actor (`eval.concurrency`, one GPU each with `eval.use_gpu`) renders batches of prompts; the folder is
held by `eval_lock` while it runs, so a second writer is refused instead of duplicating rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, join, read_parquet, uri_like, write_parquet_atomic
from tpo_ray.negatives.shards import stable_seed

if TYPE_CHECKING:
    from tpo_ray.eval.sampling import ModelSource

log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema([
    ("model", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("category", pa.string()),
    ("k", pa.int32()), ("seed", pa.int64()), ("path", pa.string()), ("model_stamp", pa.string()),
    ("settings", pa.string()), ("image_sha256", pa.string())])
INDEX_COLUMNS = tuple(INDEX_SCHEMA.names)


@dataclass
class SampleResult:
    directory: str
    sampled: int  # images made now
    skipped: int  # already in the index, current
    seconds: float


def eval_dir(cfg: TPOConfig) -> str:
    return cfg.eval.output or join(cfg.output_dir, "eval")


def eval_models(cfg: TPOConfig) -> dict[str, str]:
    """The models to compare, name -> source (a pipeline, a U-Net folder or a training checkpoint); the base
    model when none is configured."""
    return dict(cfg.eval.models) or {"base": cfg.model.pretrained}


def eval_baseline(cfg: TPOConfig) -> str:
    """The model every other is compared with: `eval.baseline`, or the first of `eval_models`; one that
    is not among them is an error naming both."""
    models = eval_models(cfg)
    baseline = cfg.eval.baseline or next(iter(models))
    if baseline not in models:
        raise ValueError(f"eval.baseline={baseline!r} is not one of eval.models {sorted(models)}")
    return baseline


def sample_seed(seed: int, prompt_id: str, k: int) -> int:
    """The seed of image k of a prompt: the same for every model."""
    return stable_seed(seed, "sample", prompt_id, k)


def read_index(directory: str) -> list[dict[str, Any]]:
    """Every row of the index as stored (older rows lack the stamp columns: None), stale ones included;
    stages that compare models read `current_index` instead."""
    fs, p = filesystem_for(join(directory, "samples", "index"))
    if not fs.exists(p):
        return []
    rows = [r for f in sorted(fs.glob(p + "/*.parquet")) for r in read_parquet(uri_like(directory, f)).to_pylist()]
    return [{c: r.get(c) for c in INDEX_COLUMNS} for r in rows]


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["model"], row["prompt_id"], int(row["k"])


def wanted_rows(cfg: TPOConfig, models: dict[str, ModelSource]) -> list[dict[str, Any]]:
    """Every image this config compares, with what must produce it (source, kind, stamp, settings)."""
    from tpo_ray.eval.prompt_sets import eval_prompts
    from tpo_ray.eval.sampling import sampling_settings, settings_json

    prompts = eval_prompts(cfg)
    return [{"model": name, "source": m.source, "kind": m.kind, "prompt_id": p.id, "prompt": p.text,
             "category": p.category, "k": k, "seed": sample_seed(cfg.train.seed, p.id, k), "model_stamp": m.stamp,
             "settings": settings_json(sampling_settings(cfg, m))}
            for name, m in models.items() for p in prompts for k in range(cfg.eval.images_per_prompt)]


def _settings_change(old: str, new: str) -> str:
    try:
        before = json.loads(old)
    except ValueError:
        before = {}
    after = json.loads(new)
    changed = [f"{k} {before.get(k, 'unset')} -> {after.get(k, 'unset')}" for k in sorted({*before, *after})
               if before.get(k) != after.get(k)]
    return "settings changed: " + ", ".join(changed)


def stale_reason(row: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why an index row does not show what `wanted` would produce today; None when it does."""
    if not row.get("model_stamp") or not row.get("settings") or not row.get("image_sha256"):
        return "sampled before images were stamped with their model and settings"
    if row["model_stamp"] != wanted["model_stamp"]:
        return f"model changed (stamp {row['model_stamp'][:8]} -> {wanted['model_stamp'][:8]})"
    if row["settings"] != wanted["settings"]:
        return _settings_change(row["settings"], wanted["settings"])
    if row["prompt"] != wanted["prompt"] or int(row["seed"]) != int(wanted["seed"]):
        return "prompt text or seed changed"
    return None


def _current(index: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> tuple[dict, dict]:
    """({key: the current index row}, {key: why the key's rows are stale}) for the wanted keys."""
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for r in index:
        by_key.setdefault(_key(r), []).append(r)
    current, stale = {}, {}
    for w in wanted:
        rows = by_key.get(_key(w), [])
        reasons = [stale_reason(r, w) for r in rows]
        if None in reasons:
            current[_key(w)] = rows[reasons.index(None)]
        elif rows:
            stale[_key(w)] = reasons[-1]
    return current, stale


def current_index(cfg: TPOConfig) -> list[dict[str, Any]]:
    """The index rows this config's eval compares: for each of its models, prompts (`eval_prompts`) and
    images k < `eval.images_per_prompt`, the one row whose model stamp, settings and prompt equal today's;
    an image that is missing or stale (sampled from other weights or settings) has no row. Models are
    checked and stamped as `run_sample` does (an unusable model is a `ModelSourceError`)."""
    from tpo_ray.eval.sampling import describe_models

    wanted = wanted_rows(cfg, describe_models(cfg))
    current, _ = _current(read_index(eval_dir(cfg)), wanted)
    return [current[_key(w)] for w in wanted if _key(w) in current]


def plan_samples(cfg: TPOConfig, models: dict[str, ModelSource] | None = None) -> tuple[list[dict[str, Any]], int]:
    """(rows still to sample, rows already in the index and current); logs per model how many images are
    sampled again and why (model changed, settings changed, ...)."""
    from tpo_ray.eval.sampling import describe_models

    wanted = wanted_rows(cfg, models if models is not None else describe_models(cfg))
    current, stale = _current(read_index(eval_dir(cfg)), wanted)
    todo = [w for w in wanted if _key(w) not in current]
    for (model, reason), n in Counter((key[0], reason) for key, reason in stale.items()).items():
        log.info("eval: %s: %d images resampled: %s", model, n, reason)
    return todo, len(wanted) - len(todo)


def compact_index(directory: str, wanted: list[dict[str, Any]]) -> int:
    """Rewrite the index with one row per (model, prompt_id, k) this config compares: the current row of
    each wanted key (its stale rows dropped), and every distinct row of other keys (an earlier eval's
    models or prompts: the config that compares them picks its current one). The new file is written atomically before the old ones are removed, so a crash between
    leaves duplicates `current_index` resolves, never a lost row. Returns the rows dropped."""
    fs, p = filesystem_for(join(directory, "samples", "index"))
    if not fs.exists(p):
        return 0
    files = sorted(fs.glob(p + "/*.parquet"))
    index = [{c: r.get(c) for c in INDEX_COLUMNS} for f in files for r in read_parquet(uri_like(directory, f)).to_pylist()]
    current, _ = _current(index, wanted)
    kept = list(current.values())
    seen: set[str] = set()
    for r in index:  # keys this config does not compare: every distinct row (another config picks its own)
        row = json.dumps(r, sort_keys=True, default=str)
        if _key(r) not in current and row not in seen:
            seen.add(row)
            kept.append(r)
    if len(files) == 1 and len(kept) == len(index):
        return 0
    target = join(directory, "samples", "index", f"index-{uuid.uuid4().hex[:12]}.parquet")
    write_parquet_atomic(pa.Table.from_pylist(sorted(kept, key=_key), schema=INDEX_SCHEMA), target)
    for f in files:
        fs.rm(f)
    return len(index) - len(kept)


class SamplerActor:
    """Holds one pipeline at a time (rows arrive grouped by model) and renders a batch of rows with the
    settings each row carries (the driver's `sampling_settings`), so the index records what was used."""

    def __init__(self, cfg_data: dict[str, Any], directory: str) -> None:
        from tpo_ray.config import config_from_dict

        self.cfg = config_from_dict(cfg_data, "sample actor config")
        self.directory = directory
        self.device = "cuda" if self.cfg.eval.use_gpu else "cpu"
        self.model: str | None = None
        self.pipe = None

    def _render(self, group: list[dict[str, Any]]) -> list:
        import torch

        from tpo_ray.eval.sampling import load_sampling_pipeline

        settings = json.loads(group[0]["settings"])
        if group[0]["model"] != self.model:
            dtype = getattr(torch, settings["dtype"])
            self.pipe = load_sampling_pipeline(self.cfg, group[0]["kind"], group[0]["source"], self.device, dtype)
            self.model = group[0]["model"]
            if type(self.pipe.scheduler).__name__ != settings["scheduler"]:
                raise RuntimeError(f"eval: {self.model}: the pipeline's scheduler is {type(self.pipe.scheduler).__name__}"
                                   f", the driver planned {settings['scheduler']}: was {group[0]['source']} replaced "
                                   "while sampling?")
        generators = [torch.Generator(self.device).manual_seed(int(r["seed"])) for r in group]
        size = settings["resolution"]
        return self.pipe([r["prompt"] for r in group], num_inference_steps=settings["num_inference_steps"],
                         guidance_scale=settings["guidance_scale"], height=size, width=size, generator=generators,
                         output_type="pil").images

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        for model in dict.fromkeys(r["model"] for r in rows):
            group = [r for r in rows if r["model"] == model]
            for r, image in zip(group, self._render(group)):
                path = join(self.directory, "samples", model, f"{r['prompt_id']}_{r['k']}.png")
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                data = buf.getvalue()
                fs, p = filesystem_for(path)
                fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
                fs.pipe(p, data)
                out.append({**{k: r[k] for k in INDEX_COLUMNS if k in r}, "path": path,
                            "image_sha256": hashlib.sha256(data).hexdigest()})
        return pa.Table.from_pylist(out, schema=INDEX_SCHEMA)


def run_sample(cfg: TPOConfig) -> SampleResult:
    """Sample what the index lacks (or holds stale) for this config's models and prompts, then compact the
    index. Every model is checked before Ray starts; the eval folder is locked for the run."""
    import ray

    from tpo_ray.cluster import require_shared_paths
    from tpo_ray.eval.lock import eval_lock
    from tpo_ray.eval.sampling import describe_models
    from tpo_ray.ray_utils import ensure_ray

    start = time.perf_counter()
    directory = eval_dir(cfg)
    models = describe_models(cfg)  # every model checked and stamped once, before any work
    with eval_lock(directory, "sample"):
        todo, skipped = plan_samples(cfg, models)
        if todo:
            ensure_ray()
            require_shared_paths({"eval.output": directory}, cfg.shared_filesystem)
            ec = cfg.eval
            log.info("eval: sampling %d images (%d models) -> %s; %d already there", len(todo),
                     len({r["model"] for r in todo}), directory, skipped)
            rows = sorted(todo, key=_key)  # batches mostly of one model
            ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // ec.sample_batch_size))
            made = ds.map_batches(SamplerActor, fn_constructor_kwargs={"cfg_data": cfg.model_dump(mode="json"),
                                                                       "directory": directory},
                                  batch_size=ec.sample_batch_size, batch_format="pyarrow",
                                  compute=ray.data.ActorPoolStrategy(size=ec.concurrency),
                                  num_gpus=1 if ec.use_gpu else 0)
            made.write_parquet(join(directory, "samples", "index"))
        dropped = compact_index(directory, wanted_rows(cfg, models))
        if dropped:
            log.info("eval: index rewritten with one row per image, %d stale or repeated rows dropped", dropped)
    seconds = time.perf_counter() - start
    log.info("eval: %d images sampled, %d found, in %.1f s", len(todo), skipped, seconds)
    return SampleResult(directory, len(todo), skipped, seconds)
