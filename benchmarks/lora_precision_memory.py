"""Memory and step time of a DDP-backend LoRA step on the real SD1.5 U-Net, fp32 vs bf16.

Builds the U-Net from the published SD1.5 config (tests/assets/sd-configs, random weights), attaches
the default LoRA adapters and runs a few optimizer steps through `TorchBackend` (the trainer's DDP
path without Ray) at a small latent size, each precision in a fresh process so the peak resident
memory (ru_maxrss) is its own. Prints one line per precision.

    python benchmarks/lora_precision_memory.py                 # 64 px, batch 2, 3 steps
    python benchmarks/lora_precision_memory.py --resolution 256 --batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "sd-configs" / "sd15"


def one(precision: str, resolution: int, batch: int, steps: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from tpo_ray.config import LoRAConfig, TrainConfig
    from tpo_ray.models.reference import add_lora
    from tpo_ray.train.backend import TorchBackend

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "unet"))
    lora = LoRAConfig()
    add_lora(unet, lora.rank, lora.alpha, lora.target_modules)
    backend = TorchBackend(unet, TrainConfig(mixed_precision=precision), wrap=lambda m: m)
    weights_gb = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**30
    latent = resolution // 8
    times = []
    for _ in range(steps):
        x = torch.randn(batch, 4, latent, latent)
        cond = torch.randn(batch, 77, unet.config.cross_attention_dim)
        t0 = time.perf_counter()
        with backend.autocast(torch.device("cpu")):
            pred = unet(x, torch.randint(0, 1000, (batch,)), cond).sample
        backend.backward((pred.float() - x).pow(2).mean(), 1)
        backend.update()
        times.append(time.perf_counter() - t0)
    return {"precision": precision, "weights_gb": round(weights_gb, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "step_s": round(min(times[1:] or times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", choices=["no", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.resolution, args.batch, args.steps)))
        return
    print(f"SD1.5 U-Net (published config, random weights) + LoRA, DDP backend, {args.resolution} px, "
          f"batch {args.batch}, {args.steps} steps")
    for precision in ("no", "bf16"):
        out = subprocess.run([sys.executable, __file__, "--one", precision, "--resolution", str(args.resolution),
                              "--batch", str(args.batch), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"mixed_precision={r['precision']:<5} weights {r['weights_gb']:.2f} GiB  peak RSS "
              f"{r['peak_rss_gb']:.2f} GiB  step {r['step_s']:.2f} s")


if __name__ == "__main__":
    main()
