"""Under real ZeRO-3 partitioning: the frozen reference is sharded too, and held-out evaluation over an
uneven split (3 rows on 2 ranks) finishes with the same accuracies as one plain process.

Each ZeRO-3 forward gathers parameters collectively: ranks that run different numbers of forwards
wait on each other forever, so the old `i % world` split hung here (hence the timeout).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.test_deepspeed_sharded import run_ranks
from tpo_ray.cache.tensors import pack
from tpo_ray.config import config_from_dict

SHAPES = {"x0": [4, 8, 8], "cond": [77, 32], "pooled": None}
ROWS = 3  # uneven over 2 ranks


class Rows:
    """A held-out split in the cache's row format (fp16-packed tensors)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.items = [{"x0": pack(torch.randn(4, 8, 8, generator=g)), "cond_w": pack(torch.randn(77, 32, generator=g)),
                       "cond_l": pack(torch.randn(77, 32, generator=g)), "example": f"r{i}"} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, start: int, count: int) -> list[dict]:
        return self.items[start:start + count]


def _cfg(backend: str) -> dict:
    train = {"backend": backend, "batch_size": 1, "eval_max_pairs": ROWS, "loss": {"name": "tdpo"}}
    if backend == "deepspeed":
        train["deepspeed"] = {"zero_stage": 3, "param_persistence_threshold": 0}
    return {"train": train, "eval": {"timesteps": [300, 700], "noise_draws": 1}, "tracking": {"enabled": False}}


def _evaluate(cfg, unet, rank: int, world: int, wrap=lambda m: m):
    from diffusers import DDPMScheduler

    from tpo_ray.models.reference import build_reference
    from tpo_ray.models.tiny import build_tiny_pipeline
    from tpo_ray.train.backend import build_backend
    from tpo_ray.train.worker import evaluate

    reference = build_reference("frozen_copy", unet)
    backend = build_backend(unet, cfg.train, world, use_gpu=False, wrap=wrap)
    reference.place(backend.prepare_frozen)
    scheduler = DDPMScheduler.from_config(build_tiny_pipeline("sd15").scheduler.config)
    result = evaluate(cfg, Rows(ROWS), "triplet", SHAPES, backend.model, reference, scheduler, rank, world,
                      torch.device("cpu"))
    return backend, reference, result


def _rank(rank: int, out_file: str) -> None:
    import torch.distributed as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from tpo_ray.models.tiny import build_tiny_pipeline

    torch.set_num_threads(1)
    cfg = config_from_dict(_cfg("deepspeed"))
    backend, reference, result = _evaluate(cfg, build_tiny_pipeline("sd15").unet, rank, dist.get_world_size())
    for module in (backend.unet, reference.unet.module):  # the policy and the reference: both sharded
        p = module.conv_in.weight
        assert p.data.numel() == 0 and p.ds_status == ZeroParamStatus.NOT_AVAILABLE, "not partitioned"
    if rank == 0:
        with open(out_file, "w") as fh:
            json.dump(result, fh)


@pytest.mark.timeout(600)
def test_zero3_uneven_eval_with_a_sharded_reference_matches_one_process(tmp_path) -> None:
    from tpo_ray.models.tiny import build_tiny_pipeline

    _, _, expected = _evaluate(config_from_dict(_cfg("ddp")), build_tiny_pipeline("sd15").unet, 0, 1)
    out = tmp_path / "result.json"
    run_ranks(_rank, str(out), world=2)
    got = json.loads(out.read_text())
    assert set(got) == {"val/model_acc", "val/ref_acc", "val/implicit_acc"}
    assert got == pytest.approx(expected, abs=1e-9)
    assert got["val/implicit_acc"] == 0.5  # policy == reference at initialisation: every pair ties
