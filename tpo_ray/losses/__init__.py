"""Pure loss functions on per-sample denoising errors, behind the `LOSSES` registry (LOSSES.md)."""

from tpo_ray.losses import dpo, kto, mapo, rpo, sft  # noqa: F401  (registration side effect)
from tpo_ray.losses.clipping import CLIPS, clip_loser
from tpo_ray.losses.kto import KL_MODES, implicit_reward, reference_point, reference_point_terms
from tpo_ray.losses.registry import LOSS_SPECS, LOSSES, LossOutput, LossSpec, register_loss

__all__ = [
    "CLIPS",
    "KL_MODES",
    "LOSSES",
    "LOSS_SPECS",
    "LossOutput",
    "LossSpec",
    "clip_loser",
    "implicit_reward",
    "reference_point",
    "reference_point_terms",
    "register_loss",
]
