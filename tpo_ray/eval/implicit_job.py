"""`run_implicit` (`tpo-ray eval implicit`): held-out implicit preference of several models, broken down.

    <eval.output>/implicit/errors.parquet   model, example, principle, num_edits, timestep, draw, m_w, m_l
    <eval.output>/implicit/summary.json     per model: overall, by principle, by timestep, by edit count

Every model sees the same held-out pairs of the config's cache (triplets, or image pairs), the same
timesteps (`eval.timesteps`) and the same noise: each pair's noise at (timestep, draw) comes from its
example key (`cache.reference.eval_noise_seeds`), exactly as the trainer's held-out eval draws it, so
`overall.acc` of a training run's export equals the run's final `val/model_acc` on the same pairs.
The VAE and text encoders are frozen in every method here, so one cache serves every model; only the
U-Nets differ. A Ray Data map holds every model's U-Net in each actor (`eval.concurrency` actors, one
GPU each with `eval.use_gpu`) and returns the per-pair errors; the summary is computed from them.

The pairs are the first `eval.max_pairs` held-out rows in the order the trainer's eval reads them (all
by default), so with `eval.max_pairs` equal to `train.eval_max_pairs`, and the run's precision
(`train.mixed_precision`), a checkpoint scores the run's final `val/*` figures.

Two quantities, one name each (docs/evaluation.md): the **caption accuracy** `acc` (MLflow
`val/model_acc`), the share of comparisons where the model itself prefers the true caption (m_w < m_l),
and the **implicit reward accuracy** `implicit_acc` (MLflow `val/implicit_acc`), the share where the
model's DPO implicit reward against the reference (`eval.baseline`, default the first model) prefers it:
(m_l - r_l) - (m_w - r_w) > 0, the quantity the DPO-family losses optimise. Ties count one half;
`margin` / `implicit_margin` are the mean margins. Every accuracy carries a 95% percentile bootstrap
interval over held-out examples (`acc_interval`, `implicit_acc_interval`): a pair's comparisons at
several timesteps and noise draws share its image and captions, so they are resampled together and
never counted as independent evidence.
A rerun with the same models, cache and settings finds the summary and returns it; with another
`eval.baseline` (or a summary of an older format) it re-summarises the stored errors (no U-Net runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, is_uri, join, read_parquet, write_parquet_atomic
from tpo_ray.eval.sample_job import eval_baseline, eval_dir, eval_models
from tpo_ray.eval.sampling import model_source_kind as unet_source_kind  # one rule for every eval stage

log = logging.getLogger(__name__)

PAIRED = ("triplet", "image_pair")
ERROR_COLUMNS = ("model", schema.EXAMPLE, schema.PRINCIPLE, schema.NUM_EDITS, "timestep", "draw", "m_w", "m_l")


@dataclass
class ImplicitResult:
    directory: str  # <eval.output>/implicit
    summary: dict[str, Any]
    pairs: int
    reused: bool
    seconds: float


def implicit_dir(cfg: TPOConfig) -> str:
    return join(eval_dir(cfg), "implicit")


# --- the summary: pure functions of the per-pair errors ------------------------------------------------

SUMMARY_FORMAT = 2  # 2: bootstrap intervals over examples, `pairs` per group, weight stamps per model
CONFIDENCE = 0.95
RESAMPLES = 1000


def _accuracy(margins: np.ndarray) -> float:
    return float(((margins > 0).sum() + 0.5 * (margins == 0).sum()) / max(len(margins), 1))


def example_interval(margins: np.ndarray, examples: np.ndarray, confidence: float = CONFIDENCE,
                     resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """[low, high]: percentile bootstrap interval of the accuracy of `margins` (> 0 wins, 0 half), resampling
    held-out examples (`examples`, one key per margin) with all their comparisons, not the comparisons one
    by one: the timesteps and noise draws of one pair are correlated, and counting them as independent
    would shrink the interval by up to sqrt(timesteps x draws)."""
    keys, inverse = np.unique(np.asarray(examples, dtype=object).astype(str), return_inverse=True)
    if len(keys) == 0:
        return [float("nan"), float("nan")]
    score = (margins > 0) + 0.5 * (margins == 0)
    wins = np.bincount(inverse, weights=score, minlength=len(keys))
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    rng = np.random.default_rng(seed)
    rates = []
    for start in range(0, resamples, 200):  # chunks bound the memory at 200 x examples counts
        draws = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=min(200, resamples - start))
        rates.append(draws @ wins / (draws @ counts))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(np.concatenate(rates), [tail, 1.0 - tail])
    return [float(low), float(high)]


def group_figures(m_w: np.ndarray, m_l: np.ndarray, r_w: np.ndarray | None, r_l: np.ndarray | None,
                  examples: np.ndarray | None = None) -> dict[str, Any]:
    """Figures of one group of comparisons (a pair at one timestep and noise draw each): `n` of them, the
    model's caption accuracy, and its implicit reward accuracy against the reference when given; with
    `examples` (each comparison's pair) the number of `pairs` and the bootstrap intervals over them."""
    out: dict[str, Any] = {"n": int(len(m_w)), "acc": _accuracy(m_l - m_w),
                           "margin": float(np.mean(m_l - m_w)) if len(m_w) else 0.0}
    if examples is not None:
        out.update(pairs=int(len(set(map(str, examples)))), acc_interval=example_interval(m_l - m_w, examples))
    if r_w is not None:
        implicit = (m_l - r_l) - (m_w - r_w)
        out.update({"implicit_acc": _accuracy(implicit), "implicit_margin": float(np.mean(implicit)) if len(m_w) else 0.0})
        if examples is not None:
            out["implicit_acc_interval"] = example_interval(implicit, examples)
    return out


BREAKDOWNS = {"by_principle": schema.PRINCIPLE, "by_timestep": "timestep", "by_edits": schema.NUM_EDITS}
NONE = "none"  # the group of rows without a principle or edit count (image pairs, older triplets)


def summarise(errors: pa.Table, reference: str) -> dict[str, Any]:
    """{model: {overall, by_principle, by_timestep, by_edits}} from the per-pair errors of every model.

    Rows of different models are matched on (example, timestep, draw), so the reference's errors pair
    with each model's whatever order the job returned them in."""
    data = errors.to_pydict()
    slot = list(zip(data[schema.EXAMPLE], data["timestep"], data["draw"]))
    models = list(dict.fromkeys(data["model"]))
    if reference not in models:
        raise ValueError(f"eval.baseline={reference!r} is not among the evaluated models {models}")
    rows = {m: [i for i, name in enumerate(data["model"]) if name == m] for m in models}
    ref_at = {slot[i]: i for i in rows[reference]}
    m_w_all, m_l_all = np.asarray(data["m_w"], np.float64), np.asarray(data["m_l"], np.float64)
    example_all = np.asarray(data[schema.EXAMPLE], dtype=object)
    out: dict[str, Any] = {}
    for model in models:
        idx = np.asarray(rows[model])
        if model != reference and {slot[i] for i in idx} != set(ref_at):
            raise ValueError(f"model {model!r} was evaluated on other pairs than the reference {reference!r}")
        ref_idx = None if model == reference else np.asarray([ref_at[slot[i]] for i in idx])

        def figures(mask: np.ndarray, idx: np.ndarray = idx, ref_idx: np.ndarray | None = ref_idx) -> dict[str, float]:
            sel = idx[mask]
            r = None if ref_idx is None else ref_idx[mask]
            return group_figures(m_w_all[sel], m_l_all[sel], None if r is None else m_w_all[r],
                                 None if r is None else m_l_all[r], example_all[sel])

        entry: dict[str, Any] = {"overall": figures(np.ones(len(idx), bool))}
        for name, column in BREAKDOWNS.items():
            values = np.asarray([NONE if data[column][i] is None else data[column][i] for i in idx], dtype=object)
            keys = sorted(set(values), key=lambda v: (v == NONE, str(type(v)), v))
            entry[name] = {str(k): figures(values == k) for k in keys}  # rows without a value: the "none" group
        out[model] = entry
    return out


# --- which U-Net a model source names ----------------------------------------------------------------


def resolve_sources(models: dict[str, str]) -> dict[str, tuple[str, str]]:
    """name -> (kind, source) decided on the driver: a local folder becomes an absolute path, so actors on
    any node (or in another working directory) read the folder the user meant."""
    out = {}
    for name, source in models.items():
        kind = unet_source_kind(source)
        local = Path(source).expanduser()
        out[name] = (kind, str(local.resolve()) if kind != "pipeline" or local.exists() else source)
    return out


def load_model_unet(cfg: TPOConfig, source: str, kind: str | None = None):
    """The U-Net a model source names, in fp32. A checkpoint is read as `tpo-ray export` reads it: this
    config's start U-Net (`train.init_from` or the base) with the checkpoint's trainable weights, LoRA
    merged."""
    import torch
    from diffusers import UNet2DConditionModel

    from tpo_ray.config import ModelConfig
    from tpo_ray.models.loading import load_start_unet, resolve_model_dir
    from tpo_ray.models.reference import merge_checkpoint
    from tpo_ray.train.checkpoint import WEIGHTS

    kind = kind or unet_source_kind(source)
    if kind == "unet":
        return UNet2DConditionModel.from_pretrained(Path(source).expanduser(), dtype=torch.float32)
    if kind == "pipeline":
        folder = resolve_model_dir(ModelConfig(pretrained=source, cache_dir=cfg.model.cache_dir), ("unet",))
        return UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32)
    unet, _ = load_start_unet(cfg.model, cfg.train.init_from)
    return merge_checkpoint(unet, Path(source).expanduser() / WEIGHTS, cfg.model.lora).float()


def _stamp(source: str) -> str:
    """What identifies a model source's current weights: a local folder's weight files (size, mtime), or the
    source string itself (hub ids and URIs name fixed content by convention)."""
    folder = Path(source).expanduser()
    if is_uri(source) or not folder.exists():
        return source
    files = [f for f in sorted(folder.rglob("*")) if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file()]
    return source + ";" + ";".join(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


# --- the job --------------------------------------------------------------------------------------------

class ImplicitErrorsActor:
    """Holds every model's U-Net; maps held-out cache rows to (m_w, m_l) per model, timestep and draw."""

    def __init__(self, cfg_data: dict[str, Any], kind: str, shapes: dict[str, Any],
                 models: dict[str, tuple[str, str]]) -> None:
        import torch

        from tpo_ray.cache.reference import runs_under_autocast
        from tpo_ray.config import config_from_dict
        from tpo_ray.models.loading import load_components
        from tpo_ray.train.backend import PRECISION

        self.cfg = cfg = config_from_dict(cfg_data, "implicit eval actor config")
        self.kind, self.shapes = kind, shapes
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # the precision the trainer's held-out eval runs in (train.mixed_precision, autocast as its backend)
        self.dtype = PRECISION[cfg.train.mixed_precision]
        self.autocast = runs_under_autocast(cfg)
        self.scheduler = load_components(cfg.model, parts=()).noise_scheduler
        self.unets = {name: load_model_unet(cfg, source, kind).requires_grad_(False).eval().to(self.device, self.dtype)
                      for name, (kind, source) in models.items()}

    def __call__(self, table: pa.Table) -> pa.Table:
        import torch

        from tpo_ray.cache.reference import eval_noise_seeds
        from tpo_ray.eval.implicit import model_errors, preference_errors
        from tpo_ray.train.batches import collate

        rows = table.to_pylist()
        batch = collate(rows, self.kind, self.shapes).to(self.device)
        batch.sample_seeds = eval_noise_seeds(self.cfg.train.seed, batch.ids)
        ec = self.cfg.eval
        slots = [(t, d) for t in ec.timesteps for d in range(ec.noise_draws)]  # preference_errors' order
        out: dict[str, list] = {c: [] for c in ERROR_COLUMNS}
        for name, unet in self.unets.items():
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
                m_w, m_l = preference_errors(model_errors(unet), self.scheduler, batch, ec.timesteps,
                                             ec.noise_draws, self.cfg.train.seed)
            m_w = m_w.float().view(len(slots), len(rows)).cpu().numpy()
            m_l = m_l.float().view(len(slots), len(rows)).cpu().numpy()
            for s, (t, d) in enumerate(slots):
                for i, row in enumerate(rows):
                    out["model"].append(name)
                    out[schema.EXAMPLE].append(str(row[schema.EXAMPLE]))
                    out[schema.PRINCIPLE].append(row.get(schema.PRINCIPLE))
                    out[schema.NUM_EDITS].append(row.get(schema.NUM_EDITS))
                    out["timestep"].append(int(t))
                    out["draw"].append(d)
                    out["m_w"].append(float(m_w[s, i]))
                    out["m_l"].append(float(m_l[s, i]))
        return pa.table(out, schema=ERROR_SCHEMA)


ERROR_SCHEMA = pa.schema([("model", pa.string()), (schema.EXAMPLE, pa.string()), (schema.PRINCIPLE, pa.string()),
                          (schema.NUM_EDITS, pa.int32()), ("timestep", pa.int32()), ("draw", pa.int32()),
                          ("m_w", pa.float64()), ("m_l", pa.float64())])


def held_out_pairs(max_pairs: int | None, val_rows: int) -> int:
    """How many held-out pairs an eval reads: the first `max_pairs` positions of the held-out split (all
    with None). Training's eval (`train.worker.evaluate`) reads positions [0, min(train.eval_max_pairs,
    rows)) split across its workers, so equal caps read the same pairs whatever the worker count."""
    return val_rows if max_pairs is None else min(max_pairs, val_rows)


def implicit_key(cfg: TPOConfig, cache_directory: str, models: dict[str, str]) -> str:
    ec = cfg.eval
    fields = {"cache": cache_directory, "models": {n: _stamp(s) for n, s in models.items()},
              "timesteps": ec.timesteps, "draws": ec.noise_draws, "seed": cfg.train.seed, "max_pairs": ec.max_pairs,
              "init_from": cfg.train.init_from, "lora": cfg.model.lora.model_dump(mode="json"),
              "precision": cfg.train.mixed_precision, "backend": cfg.train.backend}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def run_implicit(cfg: TPOConfig) -> ImplicitResult:
    """Implicit preference of every eval model, under the eval folder's lock (one writer at a time)."""
    from tpo_ray.eval.lock import eval_lock

    with eval_lock(eval_dir(cfg), "implicit"):
        return _run_implicit(cfg)


def _run_implicit(cfg: TPOConfig) -> ImplicitResult:
    import ray

    from tpo_ray.cache.job import run_cache
    from tpo_ray.cluster import require_shared_paths
    from tpo_ray.ray_utils import ensure_ray

    start = time.perf_counter()
    kind = cfg.data_kind()
    if kind not in PAIRED:
        raise ValueError(f"tpo-ray eval implicit scores held-out pairs; this config's cache holds {kind!r} examples "
                         f"(train.loss.name={cfg.train.loss.name!r}): set cache.kind=triplet (or a preference loss)")
    models = eval_models(cfg)
    reference = eval_baseline(cfg)
    directory = implicit_dir(cfg)
    cache = run_cache(cfg)  # found by its key when it exists
    key = implicit_key(cfg, cache.directory, models)
    fs, summary_path = filesystem_for(join(directory, "summary.json"))
    if fs.exists(summary_path):
        previous = json.loads(fs.cat(summary_path))
        if previous.get("key") == key:
            if previous.get("reference") != reference or previous.get("format") != SUMMARY_FORMAT:
                # the same errors against another baseline, or summarised by an older version: no U-Net runs
                previous.update(reference=reference, figures=summarise(read_errors(directory), reference),
                                format=SUMMARY_FORMAT, stamps={n: _stamp(s) for n, s in models.items()})
                fs.pipe(summary_path, json.dumps(previous, indent=1).encode())
            log.info("eval implicit: %s already holds these models' figures", directory)
            return ImplicitResult(directory, previous, previous["pairs"], True, time.perf_counter() - start)
    ensure_ray()
    sources = resolve_sources(models)
    local = {f"eval.models.{n}": src for n, (kind, src) in sources.items() if kind != "pipeline"}
    require_shared_paths({"eval.output": directory, **local}, cfg.shared_filesystem)
    val_rows = cache.manifest["rows"].get("val", 0)
    if not val_rows:
        raise ValueError(f"the cache {cache.directory} holds no held-out rows: set data.holdout_fraction > 0")
    expected = held_out_pairs(cfg.eval.max_pairs, val_rows)
    trained = held_out_pairs(cfg.train.eval_max_pairs, val_rows)
    if expected != trained:
        log.warning("eval implicit: reads %d held-out pairs where training's final eval read %d "
                    "(train.eval_max_pairs=%d): a checkpoint's figures here will differ from its final val/* in "
                    "MLflow; set eval.max_pairs=%d to compare them", expected, trained, cfg.train.eval_max_pairs,
                    cfg.train.eval_max_pairs)
    ds = ray.data.read_parquet(join(cache.directory, "split=val"))
    if cfg.eval.max_pairs is not None and cfg.eval.max_pairs < val_rows:
        from tpo_ray.cache.store import CacheReader

        reader = CacheReader(cache.directory, "val", seed=cfg.train.seed, shuffle=False)
        chosen = {str(reader.rows(i, 1)[0][schema.EXAMPLE]) for i in range(cfg.eval.max_pairs)}
        ds = ds.filter(lambda row: str(row[schema.EXAMPLE]) in chosen)  # the pairs the trainer's eval reads first
    log.info("eval implicit: %d models x %s held-out pairs x %d timesteps x %d draws (reference %s)", len(models),
             expected, len(cfg.eval.timesteps), cfg.eval.noise_draws, reference)
    computed = ds.map_batches(
        ImplicitErrorsActor, fn_constructor_kwargs={"cfg_data": cfg.model_dump(mode="json"), "kind": kind,
                                                    "shapes": cache.manifest["shapes"], "models": sources},
        batch_size=cfg.eval.implicit_batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.eval.concurrency), num_gpus=1 if cfg.eval.use_gpu else 0)
    tables = list(computed.iter_batches(batch_size=None, batch_format="pyarrow"))
    errors = pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()
    write_parquet_atomic(errors, join(directory, "errors.parquet"))
    pairs = len(set(errors.column(schema.EXAMPLE).to_pylist()))
    if pairs != expected:  # e.g. two held-out rows with one example key: the trainer counts rows, not keys
        raise RuntimeError(f"eval implicit read {pairs} distinct held-out pairs where {expected} were planned "
                           f"(eval.max_pairs={cfg.eval.max_pairs}, {val_rows} held-out rows in {cache.directory}); "
                           "its figures would not be those of training's eval: rebuild the cache")
    summary = {"key": key, "format": SUMMARY_FORMAT, "reference": reference, "models": models,
               "stamps": {n: _stamp(s) for n, s in models.items()}, "cache": cache.directory, "pairs": pairs,
               "train_eval_pairs": trained, "max_pairs": cfg.eval.max_pairs,
               "timesteps": cfg.eval.timesteps, "noise_draws": cfg.eval.noise_draws,
               "figures": summarise(errors, reference)}
    fs.makedirs(summary_path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe(summary_path, json.dumps(summary, indent=1).encode())
    seconds = time.perf_counter() - start
    log.info("eval implicit: %d pairs, %d models in %.1f s -> %s", pairs, len(models), seconds, directory)
    return ImplicitResult(directory, summary, pairs, False, seconds)


def read_errors(directory: str) -> pa.Table:
    return read_parquet(join(directory, "errors.parquet"))
