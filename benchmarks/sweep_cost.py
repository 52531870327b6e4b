"""Compute time of an 8-trial TDPO sweep (one beta per trial), three ways, on the same model and data:

    naive              every trial runs as the reference scripts do: VAE and text encoders every step,
                       a frozen reference U-Net forward every step (benchmarks/train_step.py (a))
    shared cache       the encoders run once for the whole sweep (`tpo-ray cache`), each trial still
                       runs its reference forwards (the trainer's default step)
    shared cache + precomputed reference
                       the encoders once, the reference errors once (`tpo-ray reference`, included in
                       the total), every trial reads both (model.reference=precomputed)

Every number is measured: the trials really run, one after another, each from the same start weights.
It times compute only (no Ray scheduling), which is what sharing saves; `tests/e2e/test_tune.py` runs
the real Tune sweep. On CPU the model is the reduced SD1.5-shaped one of train_step.py.

    python benchmarks/sweep_cost.py --quick      # CPU, about a minute on 2 cores; prints the ratio last
    python benchmarks/sweep_cost.py --examples 64 --steps 32 --trials 8
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import (build_models, make_inputs, naive_runner, reference_errors, subset,  # noqa: E402
                        trainer_step)


def batches(examples: int, batch: int, steps: int) -> list[tuple[list[int], int]]:
    """(rows, epoch) of each step: the examples in order, wrapping into the next epoch."""
    out = []
    for step in range(steps):
        positions = range(step * batch, (step + 1) * batch)
        out.append(([p % examples for p in positions], (step * batch) // examples))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU: 8 examples, 4 steps per trial")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--examples", type=int, default=None, help="training examples (default 8 quick, 32)")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--steps", type=int, default=None, help="steps per trial (default 4 quick, 16)")
    parser.add_argument("--divisor", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()

    from tpo_ray.config import TDPOLossConfig

    examples = args.examples or (8 if args.quick else 32)
    steps = args.steps or (4 if args.quick else 16)
    device, dtype = torch.device("cpu"), torch.float32
    print(f"# python benchmarks/sweep_cost.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()} {platform.processor() or 'cpu'} torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    models = build_models("sd15", args.divisor, args.resolution, device, dtype)
    data = make_inputs(models, examples, device, dtype)
    plan = batches(examples, args.batch, steps)
    epochs = sorted({epoch for _, epoch in plan})
    betas = [500.0 * 2 ** (i / 2) for i in range(args.trials)]
    start_weights = copy.deepcopy(models.unet.state_dict())
    print(f"sweep: {args.trials} trials x {steps} steps x {args.batch} pairs over {examples} examples "
          f"({len(epochs)} epochs), reduced SD1.5 channels/{args.divisor} at {args.resolution}²")

    # naive: every trial from the start weights, encoders and reference every step
    start = time.perf_counter()
    for beta in betas:
        models.unet.load_state_dict(start_weights)
        step = naive_runner(models, models.unet, dtype, lambda: torch.autocast("cpu", enabled=False))
        for rows, _ in plan:
            step(subset(data, rows), beta)
    naive = time.perf_counter() - start

    # the shared cache: encoders once for all trials (what `tpo-ray cache` does, timed)
    start = time.perf_counter()
    cached = make_inputs(models, examples, device, dtype)
    encode = time.perf_counter() - start
    ids = [str(i) for i in range(examples)]

    def run_trials(kind: str, stored: dict[int, torch.Tensor] | None) -> float:
        begin = time.perf_counter()
        for beta in betas:
            step = trainer_step(models, models.unet, start_weights, "no", TDPOLossConfig(beta=beta), kind, device)
            for rows, epoch in plan:
                errors = None if stored is None else stored[epoch][rows + [examples + r for r in rows]]
                step(subset(cached, rows), [ids[r] for r in rows], epoch, errors)
        return time.perf_counter() - begin

    shared = encode + run_trials("frozen_copy", None)

    # precomputed reference errors: once for the sweep, every epoch the trials read (stored [r_w; r_l])
    models.unet.load_state_dict(start_weights)
    start = time.perf_counter()
    stored = {epoch: reference_errors(models, models.unet, cached, ids, epoch, TDPOLossConfig()) for epoch in epochs}
    precompute = time.perf_counter() - start
    both = encode + precompute + run_trials("precomputed", stored)

    print(f"{'naive (per-trial encoders, online reference)':52s} {naive:8.1f} s")
    print(f"{'shared cache, online reference':52s} {shared:8.1f} s  (encode {encode:.1f} s once)")
    print(f"{'shared cache + precomputed reference':52s} {both:8.1f} s  (encode {encode:.1f} s, reference "
          f"{precompute:.1f} s, once)")
    print(f"ratio shared cache / naive = {shared / naive:.2f}")
    print(f"ratio shared cache + precomputed reference / naive = {both / naive:.2f}")


if __name__ == "__main__":
    main()
