"""Weak scaling of the TDPO training step under Ray Train: global pairs/s at 1, 2, 4, 8 workers and the efficiency.

Weak scaling: every worker keeps the same micro-batch (`--batch` pairs per step), so N workers do N
times the work per step. Ideal scaling keeps the step time constant; what N > 1 adds is DDP's
gradient all-reduce (gloo on CPU, NCCL on GPU) and the step-to-step synchronisation it implies. That
is the cost this benchmark measures:

    pairs/s (global)   = workers x batch x steps / seconds (the slowest worker's timed steps)
    efficiency         = pairs/s(N) / (N x pairs/s(1))

Each run is a real Ray Train `TorchTrainer` with N workers. In each worker the U-Net goes through
`ray.train.torch.prepare_model` (DDP when N > 1, as `tpo_ray/train/worker.py` does) into the
trainer's `TorchBackend`, and every step is the trainer's `TrainingStep` (the batch from
`benchmarks/train_step.py`: cached latents and text embeddings, per-example noise seeds). The
reference is `model.reference: precomputed` by default (r_w, r_l come with the batch, computed in the
worker before timing, as `tpo-ray reference` would store them) or a frozen copy (`--reference
frozen_copy`). `--warmup` steps run untimed, then `--steps` timed ones.

On CPU the model is the reduced SD1.5-shaped U-Net of train_step.py (channels / `--divisor`), fp32,
and each worker runs `torch.set_num_threads(1)`, so N workers use N cores: the machine's core count
limits the worker counts (those above it are skipped and printed with the command to run them). When N
equals the core count, Ray's own processes and the driver share those cores, which the efficiency
then includes (e.g. 2 workers on 2 cores). On
GPU: the real SD1.5 U-Net (divisor 1) at 512², bf16, one GPU per worker, NCCL.

    python benchmarks/scaling.py --quick                    # CPU: 1 and 2 workers, 36 s on 2 cores
    python benchmarks/scaling.py                            # CPU: 1 2 4 8 workers, those the cores allow
    python benchmarks/scaling.py --workers 1 2 4 8          # GPU node: as many GPUs as it has
    ray job submit --working-dir . -- python benchmarks/scaling.py --address auto --workers 1 2 4 8  # a cluster

With `--address` the script joins that cluster and takes the worker counts from its resources (GPUs,
or CPUs) instead of this machine's.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))


def scaling_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the trainer's step on its own micro-batch, DDP-wrapped; reports the timing."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    # Ray workers do not share the driver's sys.path: find train_step.py next to this file, or under the
    # job's working directory (`ray job submit --working-dir .`).
    for folder in (config["benchmarks_dir"], str(Path.cwd() / "benchmarks")):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    from train_step import build_models, make_inputs, reference_errors, tpo_batch

    from tpo_ray.config import TDPOLossConfig, TrainConfig
    from tpo_ray.models.reference import build_reference
    from tpo_ray.train.backend import PRECISION, TorchBackend
    from tpo_ray.train.step import TrainingStep

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = config["precision"]
    dtype = PRECISION[precision]
    batch = config["batch"]

    models = build_models(config["family"], config["divisor"], config["resolution"], device, dtype)
    inputs = make_inputs(models, batch, device, dtype)
    ids = [f"{rank}-{i}" for i in range(batch)]  # each worker its own examples (their own noise)
    loss_cfg = TDPOLossConfig(beta=500.0)
    unet = models.unet
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype, enabled=dtype != torch.float32)
    errors = None
    if config["reference"] == "precomputed":
        with autocast():  # what `tpo-ray reference` stores: the start weights' errors at each epoch's noise
            errors = [reference_errors(models, unet, inputs, ids, epoch, loss_cfg) for epoch in (0, 1)]
    holder = build_reference(config["reference"], unet)  # before DDP wraps the policy, as the trainer does
    backend = TorchBackend(unet, TrainConfig(mixed_precision=precision, lr=1e-6),
                           wrap=ray.train.torch.prepare_model)
    holder.place(backend.prepare_frozen)
    step_fn = TrainingStep(backend.model, holder, models.scheduler, loss_cfg)

    def step(i: int) -> None:
        epoch = i % 2
        with backend.autocast(device):
            out = step_fn(tpo_batch(inputs, ids, epoch, errors[epoch] if errors else None))
        backend.backward(out.loss, 1)
        backend.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if world > 1:
            dist.barrier()

    for i in range(config["warmup"]):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(config["steps"]):
        step(config["warmup"] + i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    fastest = seconds.clone()
    if world > 1:
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the global batch is done when the slowest worker is
        dist.all_reduce(fastest, op=dist.ReduceOp.MIN)
    ray.train.report({"seconds": float(seconds), "fastest_seconds": float(fastest),
                      "pairs": world * batch * config["steps"], "threads": torch.get_num_threads(),
                      "ddp": isinstance(backend.model, torch.nn.parallel.DistributedDataParallel)})


def available_workers(gpu: bool, joined: bool) -> tuple[int, str]:
    """How many workers this machine (or the joined cluster) can hold, and what limits it."""
    import ray

    if joined:
        resources = ray.cluster_resources()
        if gpu:
            return int(resources.get("GPU", 0)), "GPUs in the cluster"
        return int(resources.get("CPU", 0)), "CPUs in the cluster"
    if gpu:
        return torch.cuda.device_count(), "GPUs on this machine"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, "CPU cores on this machine (one per worker, one thread each)"


def run_one(workers: int, gpu: bool, config: dict[str, Any], storage: str) -> dict[str, Any]:
    """Rank 0's report of one `TorchTrainer.fit()` with `workers` workers.

    Ray Train V2 keeps only checkpoint-attached metrics in `Result.metrics`; a report without a
    checkpoint reaches the driver through the trainer's own relay (a callback on the Train controller
    putting rank 0's metrics on a Ray queue, tpo_ray/train/reporting.py).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from tpo_ray.train.reporting import ReportRelay

    queue = Queue(maxsize=100, actor_options={"num_cpus": 0})
    try:
        trainer = TorchTrainer(
            scaling_worker,
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu,
                                                   resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=f"scaling-{workers}w-{int(time.time())}", storage_path=storage,
                                           callbacks=[ReportRelay(queue)]),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        )
        trainer.fit()
        reports = [queue.get_nowait() for _ in range(queue.qsize())]
    finally:
        queue.shutdown()
    if not reports:
        raise RuntimeError(f"the {workers}-worker run finished without a report")
    return reports[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CPU: 1 and 2 workers, divisor 8, 128², 1 warm-up and 3 timed steps (under a minute)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 1 2 4 8)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto); default: a local Ray")
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15", help="sdxl: GPU only")
    parser.add_argument("--divisor", type=int, default=None, help="channel divisor (CPU default 8, GPU 1)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (CPU default 128, GPU 512/1024)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per worker per step (CPU default 2, GPU 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU default 5, GPU 20; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    parser.add_argument("--reference", choices=["precomputed", "frozen_copy"], default="precomputed")
    parser.add_argument("--precision", choices=["no", "bf16"], default=None, help="default: bf16 on GPU, no on CPU")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="GPU workers (default: if this machine, or the joined cluster, has GPUs)")
    parser.add_argument("--storage-path", default=None,
                        help="Ray Train's RunConfig.storage_path (default: a temporary folder, removed at the end; "
                             "on a multi-node cluster give shared storage)")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray_tmp = None
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        from tpo_ray.ray_utils import LOCAL_NODE_IP

        ray_tmp = tempfile.mkdtemp(prefix="ray-scaling-", dir="/tmp")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=ray_tmp, _node_ip_address=LOCAL_NODE_IP,
                 log_to_driver=False)
    storage = args.storage_path or tempfile.mkdtemp(prefix="scaling-runs-")
    try:
        gpu = args.gpu if args.gpu is not None else (
            ray.cluster_resources().get("GPU", 0) > 0 if args.address else torch.cuda.is_available())
        if args.model == "sdxl" and not gpu:
            raise SystemExit("SDXL needs GPU workers; on CPU the benchmark uses a reduced SD1.5-shaped model")
        divisor = args.divisor or (1 if gpu else 8)
        resolution = args.resolution or ((1024 if args.model == "sdxl" else 512) if gpu else 128)
        batch = args.batch or (8 if gpu else 2)
        steps = args.steps or (20 if gpu else (3 if args.quick else 5))
        warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
        precision = args.precision or ("bf16" if gpu else "no")
        wanted = args.workers or ([1, 2] if args.quick else [1, 2, 4, 8])
        limit, what = available_workers(gpu, bool(args.address))
        counts = [n for n in wanted if n <= limit]
        skipped = [n for n in wanted if n > limit]

        print(f"# python benchmarks/scaling.py {' '.join(sys.argv[1:])}".rstrip())
        machine = torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else (
            f"{platform.processor() or platform.machine() or 'cpu'}, {os.cpu_count()} CPUs")
        print(f"# {datetime.date.today()} {platform.node()} {machine}, torch {torch.__version__}, ray {ray.__version__}")
        print(f"model: {args.model} U-Net channels/{divisor}, image {resolution}², {batch} pairs per worker per step "
              f"(weak scaling), precision {precision}, reference {args.reference}, {warmup} warm-up + {steps} timed "
              f"steps")
        print(f"workers: Ray Train TorchTrainer, {'NCCL, 1 GPU' if gpu else 'gloo, 1 CPU'} per worker, "
              f"prepare_model (DDP when > 1 worker)"
              + ("" if gpu else "; torch.set_num_threads(1) in each worker, so N workers use N cores"))
        if not counts:
            raise SystemExit(f"none of the worker counts {wanted} fits: {limit} {what}")
        config = {"family": args.model, "divisor": divisor, "resolution": resolution, "batch": batch,
                  "steps": steps, "warmup": warmup, "reference": args.reference, "precision": precision,
                  "threads": 0 if gpu else 1, "benchmarks_dir": str(BENCHMARKS)}

        rows = []
        for n in counts:
            start = time.perf_counter()
            metrics = run_one(n, gpu, copy.deepcopy(config), storage)
            rows.append((n, metrics, time.perf_counter() - start))

        base = rows[0][1]["pairs"] / rows[0][1]["seconds"] / rows[0][0]  # pairs/s per worker at the smallest count
        print()
        print(f"{'workers':>7}  {'pairs/s':>9}  {'per worker':>10}  {'efficiency':>10}  {'s/step':>7}  "
              f"{'fastest':>7}  {'fit wall s':>10}  {'DDP':>3}  {'threads':>7}")
        for n, m, wall in rows:
            pairs_s = m["pairs"] / m["seconds"]
            print(f"{n:>7}  {pairs_s:>9.2f}  {pairs_s / n:>10.2f}  {pairs_s / (n * base):>10.1%}  "
                  f"{m['seconds'] / steps:>7.3f}  {m['fastest_seconds'] / steps:>7.3f}  {wall:>10.1f}  "
                  f"{'yes' if m['ddp'] else 'no':>3}  {m['threads']:>7}")
        n0 = rows[0][0]
        ideal = "N x pairs/s(1)" if n0 == 1 else f"N/{n0} x pairs/s({n0})"
        print(f"pairs/s = workers x {batch} pairs x {steps} steps / the slowest worker's timed seconds; efficiency = "
              f"pairs/s(N) / ({ideal}); s/step: slowest and fastest worker; fit wall s: the whole "
              "TorchTrainer.fit (worker start, model build, warm-up); DDP, threads: as rank 0 reported them")
        if rows[0][0] != 1:
            print(f"note: efficiency is relative to {rows[0][0]} workers (1 was not run)")
        if skipped:
            print(f"skipped {skipped}: {limit} {what}. Run them where there are enough, e.g. on a Ray cluster:")
            print("    ray job submit --working-dir . -- python benchmarks/scaling.py --address auto --workers "
                  + " ".join(str(n) for n in wanted))
            if not gpu:
                print("  or on a machine with >= "
                      f"{max(skipped)} cores: python benchmarks/scaling.py --workers {' '.join(str(n) for n in wanted)}")
    finally:
        ray.shutdown()
        if args.storage_path is None:
            shutil.rmtree(storage, ignore_errors=True)
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
