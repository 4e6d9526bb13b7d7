"""Landmark losses."""

from __future__ import annotations

import torch
from torch import nn


class SpatialSoftmaxCELoss(nn.Module):
    """Cross-entropy between a per-landmark spatial softmax and the normalised Gaussian target.

    For each landmark channel the logits are turned into a probability map over all pixels; the target
    heatmap is normalised to sum to one; the loss is ``-sum(target * log_softmax(logits))`` averaged over
    the landmarks that are present (a target channel of zeros marks a missing landmark and is ignored).

    Shapes:
        logits ``(B, K, H, W)``, target ``(B, K, H, W)`` (non-negative) -> scalar.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, k = logits.shape[:2]
        logp = torch.log_softmax(logits.reshape(b, k, -1).float(), dim=-1)
        t = target.reshape(b, k, -1).float()
        total = t.sum(-1, keepdim=True)
        present = (total.squeeze(-1) > 0).float()
        t = t / total.clamp_min(1e-12)
        ce = -(t * logp).sum(-1)  # (B, K)
        return (ce * present).sum() / present.sum().clamp_min(1.0)


LOSSES: dict[str, type[nn.Module]] = {"spatial_softmax_ce": SpatialSoftmaxCELoss}
