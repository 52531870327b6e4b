"""The Ray Train worker: validate config, build components, resume, run the one loop, report.

All `ray.train` calls of the project live in this module. Every rank runs the same sequence of
collectives and reports (Ray's report is a barrier), decided only by the step number.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tpo_ray.cache.reference import ReferenceErrors, eval_noise_seeds, train_noise_seeds
from tpo_ray.cache.store import CacheReader, ReadLanes, RowFilter
from tpo_ray.config import config_from_dict
from tpo_ray.eval.implicit import implicit_preference, model_errors
from tpo_ray.losses import LOSS_SPECS
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.models.loading import load_start_unet
from tpo_ray.models.reference import add_lora, build_reference
from tpo_ray.negatives.shards import stable_seed
from tpo_ray.train.backend import build_backend
from tpo_ray.train.batches import collate, data_layout, drop_captions, micro_batch_start
from tpo_ray.train.checkpoint import EMA, TrainState, load_checkpoint, save_checkpoint
from tpo_ray.train.loop import GuardState, optimizer_step
from tpo_ray.train.node_copy import node_local_copy
from tpo_ray.train.prefetch import StepPrefetcher
from tpo_ray.train.step import StepBatch, TrainingStep

log = logging.getLogger(__name__)


def _reduce(x: torch.Tensor, op) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=op)
    return x


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return _reduce(x, dist.ReduceOp.SUM)


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    return _reduce(x, dist.ReduceOp.MIN)


def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` concatenated (rank-major), differentiable: gradients flow back to their rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def roll_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` rolled by one row over the concatenation of every rank's `x` (rank-major): row 0 of rank r
    gets the last row of rank r - 1. Every rank calls it with the same row count."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return torch.roll(x, 1, dims=0)
    world, rank, n = dist.get_world_size(), dist.get_rank(), x.shape[0]
    gathered = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(gathered, x.contiguous())
    return torch.roll(torch.cat(gathered), 1, dims=0)[rank * n:(rank + 1) * n]


def load_unet(cfg, device: torch.device):
    """The U-Net to train: `train.init_from` if set (then the base U-Net is never loaded), else the base's."""
    unet, scheduler = load_start_unet(cfg.model, cfg.train.init_from)
    if cfg.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        add_lora(unet, lora.rank, lora.alpha, lora.target_modules)
    if cfg.train.channels_last:  # before the reference copy is taken: it runs in the same layout
        unet = unet.to(memory_format=torch.channels_last)
    return unet.to(device), scheduler


def compile_unet(unet: torch.nn.Module, enabled: bool, **options) -> torch.nn.Module:
    """`Module.compile` in place: the module, its parameters and its state-dict keys stay what they
    are (no `_orig_mod.` prefix in checkpoints); the first calls compile."""
    if enabled:
        unet.compile(**options)
    return unet


class StreamingSource:
    """Micro-batches from this worker's `ray.train.get_dataset_shard("train")`, epoch after epoch.

    Ray Data assigns blocks to workers dynamically, so no run, resumed or not, can say which samples a
    worker read: a resume keeps the step count and the epoch, not the samples. So it replays nothing.
    It starts a fresh pass (another shuffle seed) at the epoch the consumed batches reach, takes only
    what is left of that epoch (`batches_per_epoch`: this worker's share of the rows), then goes on.
    """

    def __init__(self, seed: int, micro: int, skip_batches: int, batches_per_epoch: int, shard=None) -> None:
        if shard is None:
            import ray.train

            shard = ray.train.get_dataset_shard("train")
        self.shard = shard
        self.seed, self.micro = seed, micro
        per_epoch = max(1, batches_per_epoch)
        self.epoch = skip_batches // per_epoch
        done = skip_batches % per_epoch
        self._resumed_epoch_left = per_epoch - done if done else None  # None: start at an epoch boundary
        self._resume_salt = skip_batches
        self._batch_epoch = self.epoch
        self._batches = self._epoch_batches()

    def _epoch_batches(self):
        while True:
            yielded = 0
            limit, salt = self._resumed_epoch_left, self._resume_salt if self._resumed_epoch_left else 0
            self._resumed_epoch_left = None
            for batch in self.shard.iter_batches(batch_size=self.micro, batch_format="pyarrow", drop_last=True,
                                                 local_shuffle_buffer_size=4 * self.micro,
                                                 local_shuffle_seed=self.seed + self.epoch + 1_000_003 * salt):
                yielded += 1
                self._batch_epoch = self.epoch
                yield batch.to_pylist()
                if limit is not None and yielded >= limit:
                    break
            self.epoch += 1
            if yielded == 0:
                raise ValueError(f"this worker's data shard holds fewer than {self.micro} rows")

    def rows(self, start: int, count: int) -> list[dict[str, Any]]:
        return next(self._batches)

    def epochs(self, start: int, count: int) -> list[int]:
        """The epoch of the rows `rows` returned last."""
        return [self._batch_epoch] * count


def make_source(cfg, cache_dir: str, rank: int, world: int, micro: int, done_steps: int, lanes: ReadLanes,
                train_rows: int):
    tc = cfg.train
    if tc.data_loader == "ray_data":  # filtered by the driver's dataset (see driver._streaming_datasets)
        per_epoch = train_rows // (micro * world)  # this worker's share of an epoch, in micro-batches
        return StreamingSource(stable_seed(tc.seed, "stream", rank), micro, done_steps * tc.grad_accum_steps,
                               per_epoch)
    return CacheReader(cache_dir, "train", seed=tc.seed, lanes=lanes, keep=RowFilter.from_data_config(cfg.data))


class MetricMeter:
    """Sums the metrics the loss actually returned between reports; `reduce` averages them over steps and ranks.

    Keys come from the step outputs, not from a list: SFT reports no preference metrics, TKTO its
    `m`/`r`, RPO its own. A skipped step returns only its counters, so each key is averaged over the
    steps that produced it. Every rank calls `reduce` at the same step with the same keys (same
    loss, same skip decisions); the keys go in sorted order and a count check catches a mismatch.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] += v
            self.counts[k] += 1

    def reduce(self, device: torch.device, world: int = 1) -> dict[str, float]:
        keys = sorted(self.sums)
        local = [self.sums[k] for k in keys] + [float(self.counts[k]) for k in keys] + [float(len(keys))]
        values = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).cpu()
        if int(values[-1]) != len(keys) * world:
            raise RuntimeError(f"ranks report different metric keys (this rank: {keys}); every rank must run the "
                               "same loss and agree on skipped steps")
        n = len(keys)
        self.sums.clear()
        self.counts.clear()
        return {k: float(values[i]) / max(float(values[n + i]), 1.0) for i, k in enumerate(keys)}


def eval_share(n: int, world: int, rank: int, batch_size: int) -> list[list[int]]:
    """This rank's held-out positions in batches; every rank gets the same number of batches.

    Under ZeRO-3 each forward is a collective (parameters are gathered layer by layer), so ranks that
    ran different numbers of forwards would wait on each other forever. A contiguous share of
    ceil(n / world) rows, cut into batches of `batch_size`; a rank whose share runs out gets empty
    batches, which the caller replaces with a padding batch whose result it drops.
    """
    per_rank = -(-n // world)
    mine = list(range(rank * per_rank, min((rank + 1) * per_rank, n)))
    count = -(-per_rank // batch_size)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(count)]


def evaluate(cfg, reader: CacheReader | None, kind: str, shapes, unet, reference, scheduler, rank: int,
             world: int, device: torch.device, store: ReferenceErrors | None = None) -> dict[str, float]:
    """Held-out implicit preference, batched, split across ranks and all-reduced (triplet/image-pair caches).

    Each pair's noise comes from its id (`eval_noise_seeds`); with a `store` the reference errors are
    read from it instead of computed."""
    if reader is None or len(reader) == 0 or kind not in ("triplet", "image_pair"):
        return {}
    n = min(cfg.train.eval_max_pairs, len(reader))
    ref = None
    if LOSS_SPECS[cfg.train.loss.name].needs_reference:
        ref = (lambda b: store.val(b.ids)) if store is not None else reference.errors
    sums = torch.zeros(4, dtype=torch.float64)
    was_training = unet.training
    unet.eval()
    try:
        for positions in eval_share(n, world, rank, cfg.train.batch_size):
            rows = [reader.rows(i, 1)[0] for i in positions] or reader.rows(0, 1)  # padding: same forwards
            batch = collate(rows, kind, shapes).to(device)  # fp32: the U-Net call casts what enters it
            batch.sample_seeds = eval_noise_seeds(cfg.train.seed, batch.ids)
            out = implicit_preference(model_errors(unet), ref, scheduler, [batch], cfg.eval.timesteps,
                                      cfg.eval.noise_draws, seed=cfg.train.seed, stored_reference=store is not None)
            if positions:
                pairs = out["pref/pairs"]
                sums += torch.tensor([out["pref/model_acc"] * pairs, out.get("pref/ref_acc", 0.0) * pairs,
                                      out.get("pref/implicit_acc", 0.0) * pairs, pairs], dtype=torch.float64)
    finally:
        unet.train(was_training)
    sums = all_reduce_sum(sums.to(device)).cpu()
    total = max(float(sums[3]), 1.0)
    result = {"val/model_acc": float(sums[0]) / total}
    if ref is not None:
        result.update({"val/ref_acc": float(sums[1]) / total, "val/implicit_acc": float(sums[2]) / total})
    return result


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config["cfg"], "train worker config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(stable_seed(cfg.train.seed, "init", rank))
    manifest = config["cache_manifest"]
    kind, shapes = manifest["kind"], manifest["shapes"]

    unet, scheduler = load_unet(cfg, device)
    reference = build_reference(cfg.resolved_reference(), unet)  # before DDP/DeepSpeed wrap the policy
    compile_unet(unet, cfg.train.compile)  # after the copy: the frozen reference stays eager
    store = None
    if cfg.resolved_reference() == "precomputed":
        store = ReferenceErrors(config["reference_dir"], config["reference_key"], config["reference_epochs"])
    backend = build_backend(unet, cfg.train, world, cfg.train.scaling.use_gpu, wrap=ray.train.torch.prepare_model)
    reference.place(backend.prepare_frozen)
    ema = EMA(backend.master_shards(), cfg.train.ema_decay) if cfg.train.ema_decay else None
    tc = cfg.train
    state = TrainState.start(tc, world)
    checkpoint = resume_checkpoint(config.get("resume_from"))
    if checkpoint is not None:
        with node_local_copy(checkpoint, ctx.get_local_rank(), _barrier) as d:
            state = load_checkpoint(d, backend, rank, ema)
        if rank == 0:
            log.info("resumed at step %d (was %d workers, now %d)", state.step, state.world_size, world)
    micro, lanes = data_layout(state, tc.grad_accum_steps, world, manifest["rows"]["train"])
    source = None  # resumed at max_steps (after a failed final eval): only the final eval is left to run
    if state.step < tc.max_steps:
        source = make_source(cfg, config["cache_dir"], rank, world, micro, state.step, lanes,
                             config.get("train_rows", manifest["rows"]["train"]))  # after data.* filters
    val_reader = CacheReader(config["cache_dir"], "val", seed=tc.seed, shuffle=False)
    null = None
    if getattr(tc.loss, "caption_dropout", 0) > 0:
        from safetensors.torch import load_file

        raw = load_file(str(Path(config["cache_dir"]) / "null_cond.safetensors"))
        null = Conditioning(raw["cond"][None], raw["pooled"][None] if "pooled" in raw else None)
    training_step = TrainingStep(backend.model, reference, scheduler, tc.loss, all_reduce_sum=all_reduce_sum,
                                 roll_across_ranks=roll_across_ranks, gather_across_ranks=gather_across_ranks)

    def step_fn(batch, generator):
        with backend.autocast(device):
            return training_step(batch, generator)

    guard, meter = GuardState(skipped_total=state.skipped_nonfinite), MetricMeter()
    tracker = _worker_tracker(cfg, config.get("run_id") if config.get("sample_grids", True) else None, rank)
    grids = SampleGrids(cfg, tracker, manifest["model"]["family"], enabled=config.get("sample_grids", True))

    def read_step(step: int) -> list[tuple[int, StepBatch]]:  # on the prefetch thread
        starts = [micro_batch_start(step, a, rank, world, micro, tc.grad_accum_steps)
                  for a in range(tc.grad_accum_steps)]
        out = []
        for start in starts:
            batch = collate(source.rows(start, micro), kind, shapes)
            epochs = source.epochs(start, micro)
            batch.sample_seeds = train_noise_seeds(tc.seed, batch.ids, epochs)
            if store is not None:
                batch.ref_errors = store.train(batch.ids, epochs)
            out.append((start, batch))
        return out

    def held_out() -> dict[str, float]:
        with backend.autocast(device):
            return evaluate(cfg, val_reader, kind, shapes, backend.model, reference, scheduler, rank, world, device,
                            store)

    last_report, examples_since = time.perf_counter(), 0
    with StepPrefetcher(read_step, state.step + 1, tc.max_steps) as prefetch:
        for step in range(state.step + 1, tc.max_steps + 1):
            batches, generators = [], []
            for start, batch in prefetch.get(step):
                gen = torch.Generator().manual_seed(stable_seed(tc.seed, "dropout", start))
                batch = batch.to(device)  # fp32 (see denoising_errors)
                if null is not None:
                    batch = drop_captions(batch, null.to(device), tc.loss.caption_dropout, gen)
                batches.append(batch)
                generators.append(gen)
            metrics = optimizer_step(step_fn, batches, backend, guard=guard, step_index=step,
                                     generators=generators, max_consecutive_nonfinite=tc.max_consecutive_nonfinite,
                                     all_reduce_min=all_reduce_min)
            if ema is not None:
                ema.update()
            meter.add(metrics)
            examples_since += state.global_batch
            state.step, state.samples_seen = step, step * state.global_batch
            state.skipped_nonfinite = guard.skipped_total
            final = step == tc.max_steps
            do_log = step % tc.log_every_steps == 0 or final
            do_ckpt = step % tc.checkpoint_every_steps == 0 or final
            do_eval = not final and bool(tc.eval_every_steps) and step % tc.eval_every_steps == 0
            if not (do_log or do_ckpt or do_eval):
                continue
            report = {f"train/{k}": v for k, v in meter.reduce(device, world).items()}
            now = time.perf_counter()
            report["perf/examples_per_s"] = examples_since / max(now - last_report, 1e-9)
            last_report, examples_since = now, 0
            if do_eval:
                report.update(held_out())
            report["step"] = step
            if rank == 0:
                if do_eval:
                    grids.log(step, unet)
                _log_report(report, tc.max_steps)
            if do_ckpt:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(Path(tmp), backend, state, rank, ema, metrics=report)
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)
    # The final eval runs once the final checkpoint is stored: if it fails (or a worker dies in it),
    # the eval is lost, not the last stretch of training; a rerun resumes at max_steps to run it again.
    # Its report holds the eval alone (the training metrics of this step went with the checkpoint).
    final_report = {**held_out(), "step": state.step}
    if rank == 0:
        grids.log(state.step, unet)
        _log_report(final_report, tc.max_steps)
    ray.train.report(final_report)


def resume_checkpoint(chosen: str | None):
    """What to resume from: after a worker-group restart within this run, the latest checkpoint Ray
    registered in it; at the run's start, the one the driver chose on disk (see `train/resume.py`;
    the driver deletes Ray's own checkpoint list, which may name a damaged or stale one)."""
    import ray.train

    registered = ray.train.get_checkpoint()
    if registered is not None:
        return registered
    return ray.train.Checkpoint(chosen) if chosen else None


def _log_report(report: dict[str, float], max_steps: int) -> None:
    shown = {k: v for k, v in report.items() if k.startswith(("train/loss", "val/", "train/implicit"))}
    log.info("step %d/%d %s", report["step"], max_steps, " ".join(f"{k}={v:.4g}" for k, v in shown.items()))


class SampleGrids:
    """Rank 0 samples `train.sample_prompts` with the current U-Net and logs the grid to MLflow."""

    def __init__(self, cfg, tracker, family: str, enabled: bool = True) -> None:
        self.cfg, self.tracker, self.family = cfg, tracker, family
        self.pipe = None
        # ZeRO-3 shards the parameters: one rank alone cannot run the U-Net.
        self.enabled = (enabled and tracker.active and bool(cfg.train.sample_prompts)
                        and not (cfg.train.backend == "deepspeed" and cfg.train.deepspeed.zero_stage == 3))

    def log(self, step: int, unet) -> None:
        if not self.enabled:
            return
        from tpo_ray.eval.sampling import build_pipeline, sample_grid
        from tpo_ray.models.loading import resolve_model_dir

        try:
            if self.pipe is None:
                self.pipe = build_pipeline(resolve_model_dir(self.cfg.model), self.family, unet)
            was_training = unet.training
            unet.eval()
            grid = sample_grid(self.pipe, self.cfg.train.sample_prompts, self.cfg.eval.num_inference_steps,
                               self.cfg.data.resolution, seed=self.cfg.train.seed)
            unet.train(was_training)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"samples_step{step:07d}.png"
                grid.save(path)
                self.tracker.log_artifact(path, "samples")
        except Exception as err:  # a failed preview must not stop training, but must be seen
            log.warning("sample grid at step %d failed: %s: %s", step, type(err).__name__, err)
            self.tracker.set_tags({"tpo_ray.sample_grid_error": f"step {step}: {type(err).__name__}: {err}"[:4000]})


def _worker_tracker(cfg, run_id: str | None, rank: int):
    """Rank 0 logs sample grids into the run the driver opened (the driver owns its lifecycle and logs
    the metrics, see `train/reporting.py`)."""
    from tpo_ray.tracking import Tracker, tracking_uri

    if rank != 0 or not run_id or not cfg.tracking.enabled:
        return Tracker(None, cfg.tracking.fail_on_error)
    import mlflow

    uri = tracking_uri(cfg.tracking, cfg.output_dir)
    try:
        mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception as err:
        if cfg.tracking.fail_on_error:
            raise
        log.warning("MLflow unavailable on rank 0 (%s); no sample grids (metrics still go through the driver)", err)
        return Tracker(None, False)
    return Tracker(run_id, cfg.tracking.fail_on_error, uri)
