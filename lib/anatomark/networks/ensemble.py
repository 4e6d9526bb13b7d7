"""An ensemble of heatmap networks whose spatial-softmax probability maps are averaged."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class SoftmaxEnsemble(nn.Module):
    """Average the spatial-softmax probability maps of several networks with the same input and output.

    Each member maps ``(B, C, *spatial)`` to ``(B, K, *spatial)`` logits. The ensemble returns the log of the mean of
    the members' per-channel spatial softmax maps, so a spatial softmax of its output is exactly that mean: a
    decoder that reads landmarks from softmax maps (soft-argmax, local mean) decodes the averaged probability.
    The members are computed in their own dtype; the averaging runs in float32.

    Args:
        spatial_dims: number of spatial dimensions (2 for X-rays); the softmax runs over all of them.
        members: the networks (at least one), e.g. refiners trained with different seeds.

    Shapes:
        input ``(B, C, *spatial)`` -> output ``(B, K, *spatial)`` float32 log-probabilities (each channel's
        ``exp`` sums to 1 over the spatial dimensions).
    """

    def __init__(self, spatial_dims: int, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("SoftmaxEnsemble needs at least one member network")
        self.spatial_dims = int(spatial_dims)
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([net(x) for net in self.members])

    def select_maps(self, x: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``forward(x)[rows, channels]`` (map ``channels[j]`` of sample ``rows[j]``, ``(n, *spatial)``), combining
        only those maps of each member: what a refiner reads (each patch's own landmark), K times cheaper to average."""
        return self.combine([net(x)[rows, channels] for net in self.members])

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The log of the mean spatial softmax of members' ``(..., *spatial)`` logits (or of the same selection of
        maps from each, e.g. one channel per patch: cheaper than combining every map and selecting afterwards)."""
        logps = []
        for out in outputs:
            out = out.float()
            flat = out.flatten(start_dim=out.ndim - self.spatial_dims)
            logps.append(torch.log_softmax(flat, dim=-1).reshape(out.shape))
        if len(logps) == 1:
            return logps[0]
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))
