"""The DeepSpeed config generated from `TrainConfig` (users never write DeepSpeed JSON by hand), and
resuming a ZeRO checkpoint on another number of ranks through DeepSpeed's universal checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from tpo_ray.config import TrainConfig

log = logging.getLogger(__name__)


def _zero_section(cfg: TrainConfig, use_gpu: bool) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "overlap_comm": use_gpu, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.param_persistence_threshold is not None and ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.param_persistence_threshold
    return zero


def _optimizer_section(cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's own AdamW, the same hyper-parameters as `optim.build_optimizer`.

    ZeRO-Offload refuses a client (torch) optimizer; from this section DeepSpeed builds its CPU
    Adam (the `cpu_adam` op, JIT-built with g++ on first use and cached in TORCH_EXTENSIONS_DIR).
    """
    return {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "eps": cfg.adam_eps,
                                        "betas": [0.9, 0.999]}}


def uses_deepspeed_optimizer(cfg: TrainConfig) -> bool:
    """Offloading needs DeepSpeed's optimizer; otherwise a torch AdamW avoids any op build on CPU."""
    return cfg.deepspeed.offload_optimizer


def deepspeed_config(cfg: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world_size,
        "zero_optimization": _zero_section(cfg, use_gpu),
        "steps_per_print": 10**9,  # progress goes through our logger
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if uses_deepspeed_optimizer(cfg):
        config["optimizer"] = _optimizer_section(cfg)
    if cfg.max_grad_norm:
        config["gradient_clipping"] = cfg.max_grad_norm
    if cfg.mixed_precision == "bf16":
        config["bf16"] = {"enabled": True}
        # Gradients summed over micro-batches in fp32, as under autocast with fp32 weights: a bf16 sum
        # drops every addend below 2**-8 of the running total (128 micro-batches in the paper's recipes).
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        if cfg.deepspeed.zero_stage == 1:  # ZeRO-1 then runs BF16_Optimizer, which all-reduces in bf16 by default
            config["communication_data_type"] = "fp32"
    elif cfg.mixed_precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def frozen_zero3_config(cfg: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """ZeRO-3 for a model that is never trained (the frozen reference copy): the policy's partitioning
    and precision, no optimizer, no optimizer offload, no clipping."""
    config = deepspeed_config(cfg, world_size, use_gpu)
    config.pop("optimizer", None)
    config.pop("gradient_clipping", None)
    config["zero_optimization"].pop("offload_optimizer", None)
    return config


def saved_world_size(tag_dir: Path) -> int:
    """Data-parallel ranks that wrote a ZeRO checkpoint: each wrote one optimizer-state file."""
    count = len(list(tag_dir.glob("*optim_states.pt")))
    if count == 0:
        raise FileNotFoundError(f"{tag_dir} holds no DeepSpeed optimizer states (*optim_states.pt); was the checkpoint "
                                "written with train.backend='deepspeed'?")
    return count


def _deepspeed_checkpoint_globals() -> list:
    """The only non-tensor classes DeepSpeed 0.x puts in its ZeRO checkpoints (found by loading real
    ZeRO-2/3 bf16 checkpoints with `weights_only=True` until nothing was refused)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loads():
    """Within the block, every `torch.load` (DeepSpeed's own included) unpickles tensors and plain values
    only (`weights_only=True`) plus DeepSpeed's few checkpoint classes.

    DeepSpeed reads its checkpoints with `torch.load(weights_only=False)`, and checkpoints may live on
    `s3://`: whoever can write there could run code on every worker at resume. DeepSpeed offers no
    option for this, so `torch.load` is wrapped for the duration of a load (workers load nothing else
    meanwhile); a file holding anything else fails to load, naming the refused class.
    """
    import torch

    original = torch.load
    allowed = _deepspeed_checkpoint_globals()

    def load(f, map_location=None, *args, weights_only=None, **kwargs):
        with torch.serialization.safe_globals(allowed):
            return original(f, map_location, *args, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def to_universal(tag_dir: Path, output: Path) -> None:
    """Convert a ZeRO-1/2/3 checkpoint to DeepSpeed's universal layout (one folder per parameter)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(output), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the converter reports with print
        ds_to_universal(args)
    log.debug("ds_to_universal: %s", printed.getvalue())


def load_rescaled(engine, load_dir: Path, tag: str) -> None:
    """Load a checkpoint written by another number of ranks: convert it, then load it as universal.

    Each rank converts into its own temporary folder (ranks on other nodes cannot see each other's
    files); the conversion reads every shard, so it costs one pass over the optimizer state per rank.
    DeepSpeed reads `checkpoint.load_universal` only while loading, so it is switched on just for
    this load (the engine was built before the checkpoint was known).
    """
    with tempfile.TemporaryDirectory(prefix="tpo-universal-") as tmp:
        to_universal(load_dir / tag, Path(tmp) / tag)
        engine._config.load_universal_checkpoint = True
        try:
            engine.load_checkpoint(tmp, tag=tag)
        finally:
            engine._config.load_universal_checkpoint = False
