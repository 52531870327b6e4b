"""`run_sample` (`tpo-ray eval-sample`): images for a prompt set from one or more models, on Ray Data.

    <eval.output>/samples/<model>/<prompt id>_<k>.png     image k of a prompt
    <eval.output>/samples/index/*.parquet                 model, prompt_id, prompt, category, k, seed, path

Image k of a prompt has the same seed for every model (`sample_seed`), so models are compared on the
same starting noise. A Ray Data map with one pipeline replica per actor (`eval.concurrency`, one GPU
each with `eval.use_gpu`) renders batches of prompts; the index is written block by block as they
finish, and a rerun samples only what the index does not hold yet (a killed run resumes).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, join, read_parquet, uri_like
from tpo_ray.negatives.shards import stable_seed

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("model", "prompt_id", "prompt", "category", "k", "seed", "path")


@dataclass
class SampleResult:
    directory: str
    sampled: int  # images made now
    skipped: int  # already in the index
    seconds: float


def eval_dir(cfg: TPOConfig) -> str:
    return cfg.eval.output or join(cfg.output_dir, "eval")


def eval_models(cfg: TPOConfig) -> dict[str, str]:
    """The models to compare, name -> pipeline source; the base model when none is configured."""
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
    fs, p = filesystem_for(join(directory, "samples", "index"))
    if not fs.exists(p):
        return []
    return [r for f in sorted(fs.glob(p + "/*.parquet")) for r in read_parquet(uri_like(directory, f)).to_pylist()]


def current_index(cfg: TPOConfig) -> list[dict[str, Any]]:
    """The index rows this config's eval compares: its models and its prompts (not an earlier eval's)."""
    from tpo_ray.eval.prompt_sets import eval_prompts

    models, prompts = eval_models(cfg), {p.id for p in eval_prompts(cfg)}
    return [r for r in read_index(eval_dir(cfg)) if r["model"] in models and r["prompt_id"] in prompts]


def plan_samples(cfg: TPOConfig) -> tuple[list[dict[str, Any]], int]:
    """(rows still to sample, rows already in the index)."""
    from tpo_ray.eval.prompt_sets import eval_prompts

    prompts = eval_prompts(cfg)
    done = {(r["model"], r["prompt_id"], r["k"]) for r in read_index(eval_dir(cfg))}
    rows = [{"model": name, "source": source, "prompt_id": p.id, "prompt": p.text, "category": p.category, "k": k,
             "seed": sample_seed(cfg.train.seed, p.id, k)}
            for name, source in eval_models(cfg).items() for p in prompts for k in range(cfg.eval.images_per_prompt)]
    todo = [r for r in rows if (r["model"], r["prompt_id"], r["k"]) not in done]
    return todo, len(rows) - len(todo)


class SamplerActor:
    """Holds one pipeline at a time (rows arrive grouped by model) and renders a batch of rows."""

    def __init__(self, cfg_data: dict[str, Any], directory: str) -> None:
        import torch

        from tpo_ray.config import config_from_dict

        self.cfg = config_from_dict(cfg_data, "sample actor config")
        self.directory = directory
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model: str | None = None
        self.pipe = None

    def _pipeline(self, source: str):
        import torch
        from diffusers import DiffusionPipeline

        from tpo_ray.config import ModelConfig
        from tpo_ray.eval.sampling import NO_SAFETY_CHECKER
        from tpo_ray.models.loading import detect_family, resolve_model_dir

        folder = resolve_model_dir(ModelConfig(pretrained=source, cache_dir=self.cfg.model.cache_dir))
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.family = detect_family(folder)
        extra = NO_SAFETY_CHECKER if self.family == "sd15" else {}
        pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, **extra).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        for model in dict.fromkeys(r["model"] for r in rows):
            group = [r for r in rows if r["model"] == model]
            if model != self.model:
                self.pipe, self.model = self._pipeline(group[0]["source"]), model
            generators = [torch.Generator(self.device).manual_seed(int(r["seed"])) for r in group]
            ec, size = self.cfg.eval, self.cfg.data.resolution
            images = self.pipe([r["prompt"] for r in group], num_inference_steps=ec.num_inference_steps,
                               guidance_scale=ec.guidance(self.family), height=size, width=size, generator=generators,
                               output_type="pil").images
            for r, image in zip(group, images):
                path = join(self.directory, "samples", model, f"{r['prompt_id']}_{r['k']}.png")
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                fs, p = filesystem_for(path)
                fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
                fs.pipe(p, buf.getvalue())
                out.append({**{k: r[k] for k in INDEX_COLUMNS if k != "path"}, "path": path})
        return pa.Table.from_pylist(out, schema=pa.schema([
            ("model", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("category", pa.string()),
            ("k", pa.int32()), ("seed", pa.int64()), ("path", pa.string())]))


def run_sample(cfg: TPOConfig) -> SampleResult:
    import ray

    from tpo_ray.cluster import require_shared_paths
    from tpo_ray.ray_utils import ensure_ray

    start = time.perf_counter()
    directory = eval_dir(cfg)
    todo, skipped = plan_samples(cfg)
    if todo:
        ensure_ray()
        require_shared_paths({"eval.output": directory}, cfg.shared_filesystem)
        ec = cfg.eval
        log.info("eval: sampling %d images (%d models) -> %s; %d already there", len(todo),
                 len({r["model"] for r in todo}), directory, skipped)
        rows = sorted(todo, key=lambda r: (r["model"], r["prompt_id"], r["k"]))  # batches mostly of one model
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // ec.sample_batch_size))
        made = ds.map_batches(SamplerActor, fn_constructor_kwargs={"cfg_data": cfg.model_dump(mode="json"),
                                                                   "directory": directory},
                              batch_size=ec.sample_batch_size, batch_format="pyarrow",
                              compute=ray.data.ActorPoolStrategy(size=ec.concurrency), num_gpus=1 if ec.use_gpu else 0)
        made.write_parquet(join(directory, "samples", "index"))
    seconds = time.perf_counter() - start
    log.info("eval: %d images sampled, %d found, in %.1f s", len(todo), skipped, seconds)
    return SampleResult(directory, len(todo), skipped, seconds)
