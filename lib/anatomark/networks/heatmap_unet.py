"""Heatmap U-Net: MONAI's BasicUNet with one output channel per landmark."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn


class HeatmapUNet(nn.Module):
    """U-Net that maps an X-ray to one heatmap (logit map) per landmark.

    Args:
        spatial_dims: 2 for X-rays (3 works too).
        in_channels: image channels (1 for gray X-rays).
        out_channels: number of landmarks K.
        features: six widths as MONAI ``BasicUNet`` takes them (5 encoder levels + final).
        dropout: dropout probability inside the conv blocks.

    Shapes:
        input ``(B, in_channels, H, W)`` with H, W divisible by 16 -> output ``(B, K, H, W)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        features: Sequence[int] = (16, 32, 64, 128, 256, 16),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(features),
            dropout=dropout,
            norm=("instance", {"affine": True}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
