"""The training step shared by every method (DESIGN.md "Training", LOSSES.md "Common terms").

Batch in (cached latents and conditioning), loss out. The layout decides the noise: in a *paired*
batch the first half are winners (`_w`) and the second half losers (`_l`); pair members share
`eps` and `t`. The policy runs **once** on the concatenated batch, the reference holder gives
`r`, and the registered loss gets exactly the inputs its `LossSpec` asks for. The step does not
know which method, model family, or parallel backend it runs under.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Callable

import torch

from tpo_ray.losses import LOSS_SPECS, LOSSES, LossOutput, implicit_reward, reference_point, reference_point_terms
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.models.denoise import denoising_errors, noisy_latents, training_target
from tpo_ray.models.reference import ReferenceHolder

AllReduceSum = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StepBatch:
    """Samples for one micro-batch. `paired`: rows [0, B) are `_w`, rows [B, 2B) their `_l`."""

    x0: torch.Tensor  # [N, C, h, w]
    cond: Conditioning  # N rows
    paired: bool
    y: torch.Tensor | None = None  # [N] +1/-1 for unpaired labelled data (KTO)
    emb: torch.Tensor | None = None  # [B, D] prompt embeddings (RPO)
    # One seed per example (pair): its noise then depends on the example, not on how the global
    # batch is split across workers and accumulation steps.
    sample_seeds: list[int] | None = None
    # Reference errors of these rows at their noise (rows in batch order), read from a precomputed
    # store (`model.reference: precomputed`): the step then runs no reference forward.
    ref_errors: torch.Tensor | None = None
    ids: list[str] | None = None  # example keys (cache rows' `schema.EXAMPLE`), one per example (pair)

    def __post_init__(self) -> None:
        if self.x0.shape[0] != len(self.cond):
            raise ValueError(f"x0 has {self.x0.shape[0]} rows but cond has {len(self.cond)}")
        if self.paired and self.x0.shape[0] % 2:
            raise ValueError("a paired batch needs an even number of rows (winners then losers)")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> StepBatch:
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(self, x0=self.x0.to(device, dtype or self.x0.dtype), cond=self.cond.to(device, dtype),
                       y=move(self.y), emb=move(self.emb), ref_errors=move(self.ref_errors))


def triplet_batch(x0: torch.Tensor, cond_w: Conditioning, cond_l: Conditioning, emb=None) -> StepBatch:
    """TPO triplets: the same latents under the true and the edited caption."""
    return StepBatch(torch.cat([x0, x0]), Conditioning.cat([cond_w, cond_l]), paired=True, emb=emb)


def image_pair_batch(x0_w: torch.Tensor, x0_l: torch.Tensor, cond: Conditioning, cond_l: Conditioning | None = None,
                     emb=None) -> StepBatch:
    """Image-pair baselines (Diffusion-DPO, MaPO, RPO): two images under one caption.

    `cond_l` differs from `cond` only in SDXL time ids (each image has its own size and crop).
    """
    return StepBatch(torch.cat([x0_w, x0_l]), Conditioning.cat([cond, cond_l or cond]), paired=True, emb=emb)


def sample_batch(x0: torch.Tensor, cond: Conditioning, y: torch.Tensor | None = None) -> StepBatch:
    """Unpaired samples: SFT (no labels) or Diffusion-KTO (labels +1/-1)."""
    return StepBatch(x0, cond, paired=False, y=y)


@dataclass
class NoiseDraw:
    eps: torch.Tensor
    t: torch.Tensor


def draw_noise(
    x0: torch.Tensor, *, paired: bool, share: bool, one_timestep: bool, num_timesteps: int,
    generator: torch.Generator | None = None, sample_seeds: list[int] | None = None,
) -> NoiseDraw:
    """eps ~ N(0, I), t ~ U{0..T-1}; pair members share both when `paired and share`.

    With `sample_seeds` (one per example, i.e. per pair in a paired batch) each example draws from
    its own generator; otherwise the whole batch draws from `generator`.
    """
    n = x0.shape[0]
    examples = n // 2 if paired else n
    draws = examples if paired and share else n
    shape = (draws, *x0.shape[1:])
    if sample_seeds is None:
        eps = torch.randn(shape, generator=generator, dtype=torch.float32)
        t = torch.randint(0, num_timesteps, (draws,), generator=generator)
    else:
        if len(sample_seeds) != examples:
            raise ValueError(f"{len(sample_seeds)} sample seeds for {examples} examples")
        seeds = sample_seeds if draws == examples else [*sample_seeds, *(s ^ 0x5F5F5F5F for s in sample_seeds)]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        eps = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in gens])
        t = torch.stack([torch.randint(0, num_timesteps, (), generator=g) for g in gens])
    if one_timestep:
        t = t[:1].expand(draws).clone()
    eps, t = eps.to(x0.device, x0.dtype), t.to(x0.device)
    if draws != n:
        eps, t = torch.cat([eps, eps]), torch.cat([t, t])
    return NoiseDraw(eps, t)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def rolled_captions(cond: Conditioning, paired: bool, roll: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
    """Each image with another example's caption, for KTO's `rolled` reference point.

    `roll` shifts rows by one over the global micro-batch (all ranks, rank-major), so an example
    always gets a caption of a different example, also at one example per rank. A paired batch
    [c_w; c_l] rolls each half on its own: rolling the whole stack would hand the image its own
    c_l / c_w (with one example per rank, [c_w; c_l] becomes [c_l; c_w]). Time ids (SDXL micro-
    conditioning of the image) stay with their image.
    """
    if not paired:
        return cond.with_text(roll)
    half = len(cond) // 2
    return Conditioning.cat([cond.rows(0, half).with_text(roll), cond.rows(half, 2 * half).with_text(roll)])


class TrainingStep:
    """Computes one micro-batch's loss; built once per run from plain objects."""

    def __init__(
        self,
        unet: torch.nn.Module,
        reference: ReferenceHolder,
        noise_scheduler,
        loss_cfg,
        all_reduce_sum: AllReduceSum = _identity,
        roll_across_ranks: Callable[[torch.Tensor], torch.Tensor] = lambda x: torch.roll(x, 1, dims=0),
        gather_across_ranks: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> None:
        self.unet = unet
        self.reference = reference
        self.scheduler = noise_scheduler
        self.spec = LOSS_SPECS[loss_cfg.name]
        self.loss_fn = LOSSES[loss_cfg.name]
        self.loss_kwargs = loss_cfg.loss_kwargs()
        self.share_noise = loss_cfg.shares_noise()
        self.all_reduce_sum = all_reduce_sum
        self.roll_across_ranks = roll_across_ranks
        self.gather_across_ranks = gather_across_ranks
        self.num_timesteps = int(noise_scheduler.config.num_train_timesteps)

    def __call__(self, batch: StepBatch, generator: torch.Generator | None = None) -> LossOutput:
        if self.spec.inputs == "pair" and not batch.paired:
            raise ValueError(f"loss {self.spec.name!r} needs paired batches (winners then losers)")
        x_t, t, target = self.noised(batch, generator)
        m = denoising_errors(self.unet, x_t, t, batch.cond, target)  # the one policy forward
        r = None
        if self.spec.needs_reference:
            r = batch.ref_errors if batch.ref_errors is not None else self.reference.errors(x_t, t, batch.cond, target)
        return self._loss(batch, m, r, x_t, t, target)

    def noised(self, batch: StepBatch, generator: torch.Generator | None = None):
        """(x_t, t, target) of the batch: the noise this method draws for it. With `batch.sample_seeds`
        it is a function of the rows alone, which is what lets reference errors be precomputed."""
        noise = draw_noise(batch.x0, paired=batch.paired, share=self.share_noise,
                           one_timestep=self.spec.shared_timestep, num_timesteps=self.num_timesteps,
                           generator=generator, sample_seeds=batch.sample_seeds)
        x_t = noisy_latents(self.scheduler, batch.x0, noise.eps, noise.t)
        return x_t, noise.t, training_target(self.scheduler, batch.x0, noise.eps, noise.t)

    def _loss(self, batch: StepBatch, m, r, x_t, t, target) -> LossOutput:
        if self.spec.inputs == "single":
            return self.loss_fn(m, **self.loss_kwargs)
        if self.spec.inputs == "pair":
            m_w, m_l = m.chunk(2)
            args = [m_w, m_l]
            if self.spec.needs_reference:
                args += list(r.chunk(2))
            if self.spec.needs_embeddings:
                if batch.emb is None:
                    raise ValueError(f"loss {self.spec.name!r} needs prompt embeddings (batch.emb)")
                args.append(batch.emb)
                # Pairs are compared with every other pair of the global batch (LOSSES.md): gather
                # across ranks, differentiably. Every rank then computes the same global loss; the
                # gather's backward sums the W identical gradients and DDP/ZeRO's average divides by W.
                args = [self.gather_across_ranks(x) for x in args]
            return self.loss_fn(*args, **self.loss_kwargs)
        y = self._labels(batch, m)
        z0 = self._reference_point(batch, m, r, y, x_t, t, target)
        return self.loss_fn(m, r, y, z0=z0, **self.loss_kwargs)

    @staticmethod
    def _labels(batch: StepBatch, m: torch.Tensor) -> torch.Tensor:
        if batch.y is not None:
            return batch.y.to(m.device, torch.float32)
        if not batch.paired:
            raise ValueError("a labelled loss needs batch.y or a paired batch (winners +1, losers -1)")
        half = m.shape[0] // 2
        return torch.cat([torch.ones(half), -torch.ones(half)]).to(m.device)

    def _reference_point(self, batch, m, r, y, x_t, t, target) -> torch.Tensor:
        """z0 from sums all-reduced across workers, so every rank uses the global-batch estimate."""
        tau = self.loss_kwargs.get("tau")
        kl_mode = self.loss_kwargs.get("kl_mode", "batch")
        if kl_mode == "rolled":
            with torch.no_grad():
                rolled = rolled_captions(batch.cond, batch.paired, self.roll_across_ranks)
                g = self.reference.errors(x_t, t, rolled, target) - denoising_errors(self.unet, x_t, t, rolled, target)
            total, count = g.sum(), torch.tensor(float(g.numel()), device=g.device)
        else:
            g = implicit_reward(m.detach(), r, y, tau)
            total, count = reference_point_terms(g, y, kl_mode)
        stacked = self.all_reduce_sum(torch.stack([total.float(), count.float()]))
        return reference_point(stacked[0], stacked[1])
