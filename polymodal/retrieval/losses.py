"""Symmetric InfoNCE (CLIP) loss with a learnable temperature and optional several positives per query."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "clip_loss"]


def _one_direction(logits: torch.Tensor, positive: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows of -log(sum_pos exp(logit) / sum_all exp(logit))."""
    if positive is None:
        # One positive per row on the diagonal: plain cross-entropy (the CLIP case).
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
    pos_lse = logits.masked_fill(~positive, float("-inf")).logsumexp(dim=1)
    return (logits.logsumexp(dim=1) - pos_lse).mean()


def clip_loss(left: torch.Tensor, right: torch.Tensor, logit_scale: torch.Tensor | float,
              pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``left`` (B, D) and ``right`` (B, D).

    ``left``/``right`` should be L2-normalised; ``logit_scale`` is the multiplier 1/temperature (not its log).
    Without ``pair_ids`` row i of ``left`` matches only row i of ``right`` (open_clip's ClipLoss). With
    ``pair_ids`` (B,), every pair (i, j) with ``pair_ids[i] == pair_ids[j]`` is a positive, and each row's
    loss is ``-log(sum_pos exp / sum_all exp)``; with unique ids this equals the CLIP loss.
    """
    if left.shape[0] != right.shape[0]:
        raise ValueError(f"left and right batches differ in size: {left.shape[0]} vs {right.shape[0]}")
    logits = logit_scale * left @ right.T
    positive = None
    if pair_ids is not None:
        pair_ids = torch.as_tensor(pair_ids, device=logits.device)
        # Symmetric, so the same mask serves both directions.
        positive = pair_ids[:, None] == pair_ids[None, :]
    return 0.5 * (_one_direction(logits, positive) + _one_direction(logits.T, positive))


class ContrastiveLoss(nn.Module):
    """CLIP loss owning its learnable temperature.

    ``logit_scale`` is stored as a log (initialised to log(1/0.07) as in CLIP) and clamped at
    ``log(max_logit_scale)`` in the forward pass, so training cannot make the softmax arbitrarily sharp.
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
                 learn_temperature: bool = True) -> None:
        super().__init__()
        self.max_log_scale = math.log(max_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                        requires_grad=learn_temperature)

    def scale(self) -> torch.Tensor:
        """The multiplier applied to cosine similarities (exp of the clamped log scale)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, left: torch.Tensor, right: torch.Tensor,
                pair_ids: torch.Tensor | None = None) -> torch.Tensor:
        return clip_loss(left, right, self.scale(), pair_ids)
