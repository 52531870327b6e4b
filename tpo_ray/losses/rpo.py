"""Diffusion-RPO (Gu et al. 2024), experimental reconstruction: DPO across related pairs.

LOSSES.md "Diffusion-RPO": with a_i = -(m_w_i - r_w_i) and b_j = -(m_l_j - r_l_j),
logits_ij = a_i - b_j, w_ij = softmax_j(-(1 - cos(e_i, e_j)) / temp),
loss = mean_ij(-logsigmoid(beta / 2 * w_ij * logits_ij)). With one pair it is Diffusion-DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpo_ray.losses.registry import LossOutput, as_reduction_dtype, preference_accuracy, register_loss


def similarity_weights(emb: torch.Tensor, temp: float) -> torch.Tensor:
    """[B, B] row-softmax of -(1 - cosine similarity) / temp: related prompts weigh more."""
    e = F.normalize(as_reduction_dtype(emb), dim=-1)
    cos = e @ e.T
    return torch.softmax(-(1 - cos) / temp, dim=1)


@register_loss("rpo", inputs="pair", data="image_pair", needs_reference=True, needs_embeddings=True, shared_timestep=True)
def rpo(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    emb: torch.Tensor,
    *,
    beta: float = 5000.0,
    temp: float = 0.5,
) -> LossOutput:
    """Diffusion-RPO (experimental): DPO logits between every winner i and loser j, similarity-weighted."""
    if emb.dim() != 2 or emb.shape[0] != m_w.shape[0]:
        raise ValueError(f"emb must be [B, D] with B={m_w.shape[0]}, got {tuple(emb.shape)}")
    m_w, m_l, r_w, r_l = (as_reduction_dtype(x) for x in (m_w, m_l, r_w, r_l))
    a = -(m_w - r_w)
    b = -(m_l - r_l)
    logits = a[:, None] - b[None, :]
    weights = similarity_weights(emb, temp).to(logits.dtype)
    loss = -F.logsigmoid(beta / 2 * weights * logits).mean()
    metrics = {
        "loss": float(loss.detach()),
        "implicit_acc": preference_accuracy(torch.diagonal(logits)),
        "weight_diag": float(torch.diagonal(weights).detach().mean()),
        "m_w": float(m_w.detach().mean()),
        "m_l": float(m_l.detach().mean()),
    }
    return LossOutput(loss, metrics)
