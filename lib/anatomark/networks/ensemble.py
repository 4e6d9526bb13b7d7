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
        covers: optional, per member, the output channels (landmarks) it answers for (``None``: all). Channel
            ``k`` of the ensemble averages only the members that cover ``k`` (e.g. a specialist refiner trained for
            a few landmarks replaces a generalist there); every channel must be covered by some member.

    Shapes:
        input ``(B, C, *spatial)`` -> output ``(B, K, *spatial)`` float32 log-probabilities (each channel's
        ``exp`` sums to 1 over the spatial dimensions).
    """

    def __init__(
        self,
        spatial_dims: int,
        members: Sequence[nn.Module],
        covers: Sequence[Sequence[int] | None] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("SoftmaxEnsemble needs at least one member network")
        self.spatial_dims = int(spatial_dims)
        self.members = nn.ModuleList(members)
        if covers is not None and len(covers) != len(members):
            raise ValueError(f"covers has {len(covers)} entries for {len(members)} members")
        self.covers = (
            None
            if covers is None or all(c is None for c in covers)
            else [None if c is None else tuple(int(k) for k in c) for c in covers]
        )

    def _covering(self, channels: torch.Tensor) -> torch.Tensor:
        """``(M, n)`` bool: which member answers for each of ``channels`` (``(n,)`` channel indices; ``covers`` set)."""
        rows = [
            torch.ones(channels.numel(), dtype=torch.bool)
            if c is None
            else torch.isin(channels, torch.as_tensor(c, dtype=channels.dtype))
            for c in self.covers
        ]
        return torch.stack(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [net(x) for net in self.members]
        if self.covers is None:
            return self.combine(outs)
        k = outs[0].shape[1]
        mask = self._covering(torch.arange(k))  # (M, K)
        return self._combine_masked([o.transpose(0, 1) for o in outs], mask).transpose(0, 1)

    def select_maps(self, x: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``forward(x)[rows, channels]`` (map ``channels[j]`` of sample ``rows[j]``, ``(n, *spatial)``), combining
        only those maps of each member: what a refiner reads (each patch's own landmark), K times cheaper to average.
        A member that covers only some channels runs only on the samples whose channel it covers."""
        if self.covers is None:
            return self.combine([net(x)[rows, channels] for net in self.members])
        mask = self._covering(channels)  # (M, n)
        outs = []
        for net, use in zip(self.members, mask):
            full = None
            if use.any():
                sel = torch.nonzero(use).flatten()
                part = net(x[rows[sel]])[torch.arange(sel.numel()), channels[sel]]
                full = part.new_zeros((channels.numel(), *part.shape[1:]))
                full[sel] = part
            outs.append(full)
        ref = next(o for o in outs if o is not None)
        return self._combine_masked([o if o is not None else ref.new_zeros(ref.shape) for o in outs], mask)

    def _combine_masked(self, outputs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """As :meth:`combine` for ``(n, *spatial)`` maps, averaging for map ``j`` only the members with
        ``mask[m, j]``."""
        stacked = torch.stack(self._log_probs(outputs))  # (M, n, *spatial)
        m = mask.to(stacked.device).reshape(*mask.shape, *([1] * (stacked.ndim - 2)))
        stacked = stacked.masked_fill(~m, float("-inf"))
        count = mask.sum(0).clamp_min(1).to(stacked.dtype).reshape(-1, *([1] * (stacked.ndim - 2)))
        return torch.logsumexp(stacked, dim=0) - torch.log(count)

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The log of the mean spatial softmax of members' ``(..., *spatial)`` logits (or of the same selection of
        maps from each, e.g. one channel per patch: cheaper than combining every map and selecting afterwards)."""
        logps = self._log_probs(outputs)
        if len(logps) == 1:
            return logps[0]
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))

    def _log_probs(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each output's float32 log spatial softmax (over its last ``spatial_dims`` dimensions), same shape."""
        logps = []
        for out in outputs:
            out = out.float()
            flat = out.flatten(start_dim=out.ndim - self.spatial_dims)
            logps.append(torch.log_softmax(flat, dim=-1).reshape(out.shape))
        return logps
