"""Implicit preference on held-out pairs: does the model denoise x_t better under c_w than c_l?

For each held-out triplet, timestep in `timesteps` and noise draw, both captions see the same x_t.
Two quantities, named as in docs/evaluation.md: the **caption accuracy** `model_acc`, the fraction with
m_w < m_l (the model's own preference, comparable across models), and the **implicit reward accuracy**
`implicit_acc`, from the reference-relative errors (m_w - r_w < m_l - r_l), the quantity DPO optimises
(`ref_acc` is the reference's caption accuracy). Ties count 0.5. Errors are deterministic given the
seed, so two models compare fairly. The comparisons of one pair (its timesteps and draws) are
correlated: intervals resample pairs (`implicit_job.example_interval`), never comparisons.
With `batch.sample_seeds` (one per pair) each pair's noise at (timestep, draw) comes from its own seed,
so it does not depend on how pairs are batched or split across workers, and the reference's errors
can be stored once (`tpo_ray/cache/reference.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from tpo_ray.losses.registry import preference_accuracy
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.models.denoise import denoising_errors, noisy_latents, training_target
from tpo_ray.negatives.shards import stable_seed
from tpo_ray.train.step import StepBatch


ErrorsFn = Callable[[torch.Tensor, torch.Tensor, Conditioning, torch.Tensor], torch.Tensor]


def model_errors(unet) -> ErrorsFn:
    return lambda x_t, t, cond, target: denoising_errors(unet, x_t, t, cond, target)


@torch.no_grad()
def preference_errors(errors: ErrorsFn, scheduler, batch: StepBatch, timesteps: Iterable[int], noise_draws: int,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_w, m_l) of shape [len(timesteps) * noise_draws * B] for a paired batch."""
    if not batch.paired:
        raise ValueError("implicit preference needs paired batches")
    half = batch.x0.shape[0] // 2
    m_w, m_l = [], []
    for t_value in timesteps:
        for draw in range(noise_draws):
            eps = _eval_noise(batch, half, int(t_value), draw, seed).to(batch.x0)
            eps = torch.cat([eps, eps])
            t = torch.full((2 * half,), int(t_value), device=batch.x0.device, dtype=torch.long)
            x_t = noisy_latents(scheduler, batch.x0, eps, t)
            target = training_target(scheduler, batch.x0, eps, t)
            m = errors(x_t, t, batch.cond, target)
            m_w.append(m[:half])
            m_l.append(m[half:])
    return torch.cat(m_w), torch.cat(m_l)


def _eval_noise(batch: StepBatch, half: int, t_value: int, draw: int, seed: int) -> torch.Tensor:
    shape = tuple(batch.x0.shape[1:])
    if batch.sample_seeds is None:
        g = torch.Generator().manual_seed(seed * 1_000_003 + t_value * 101 + draw)
        return torch.randn((half, *shape), generator=g)
    if len(batch.sample_seeds) != half:
        raise ValueError(f"{len(batch.sample_seeds)} sample seeds for {half} pairs")
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(stable_seed(s, t_value, draw)))
                        for s in batch.sample_seeds])


ReferenceFn = Callable[[StepBatch], tuple[torch.Tensor, torch.Tensor]]


def implicit_preference(policy: ErrorsFn, reference: ErrorsFn | ReferenceFn | None, scheduler,
                        batches: Iterable[StepBatch], timesteps: list[int], noise_draws: int, seed: int = 0,
                        stored_reference: bool = False) -> dict[str, float]:
    """`pref/model_acc`, and with a reference `pref/ref_acc` and `pref/implicit_acc`, over all batches.

    `stored_reference`: `reference(batch)` returns the batch's stored (r_w, r_l) instead of running a model."""
    pm_w, pm_l, rm_w, rm_l = [], [], [], []
    for batch in batches:
        a, b = preference_errors(policy, scheduler, batch, timesteps, noise_draws, seed)
        pm_w.append(a), pm_l.append(b)
        if reference is not None:
            c, d = (reference(batch) if stored_reference
                    else preference_errors(reference, scheduler, batch, timesteps, noise_draws, seed))
            rm_w.append(c.to(a)), rm_l.append(d.to(b))
    m_w, m_l = torch.cat(pm_w), torch.cat(pm_l)
    out = {"pref/model_acc": preference_accuracy(m_l - m_w), "pref/pairs": float(m_w.numel())}
    if reference is not None:
        r_w, r_l = torch.cat(rm_w), torch.cat(rm_l)
        out["pref/ref_acc"] = preference_accuracy(r_l - r_w)
        out["pref/implicit_acc"] = preference_accuracy((m_l - r_l) - (m_w - r_w))
    return out
