"""FPN landmark segmentation (Fernandes et al. 2023): encoder ConvBlocks, a feature pyramid decoder, refinement."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

from anatomark.networks.unet_seg import ConvBlock, he_normal_init


class FPNBlock(nn.Module):
    """Top-down FPN step: 2x2 transposed conv "up" of the coarse map + ReLU 1x1 lateral of the skip, add, ConvBlock.

    Shapes:
        coarse ``(B, C_top, H/2, W/2)``, skip ``(B, C_skip, H, W)`` -> ``(B, C_out, H, W)``.
    """

    def __init__(self, spatial_dims: int, top_channels: int, skip_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.up = Convolution(
            spatial_dims,
            top_channels,
            out_channels,
            strides=2,
            kernel_size=2,
            padding=0,
            output_padding=0,
            is_transposed=True,
            conv_only=True,
        )
        self.lateral = Convolution(spatial_dims, skip_channels, out_channels, kernel_size=1, act="relu", norm=None)
        self.block = ConvBlock(spatial_dims, out_channels, out_channels, dropout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(self.up(coarse) + self.lateral(skip))


class FPNSeg(nn.Module):
    """Feature-pyramid landmark segmentation network.

    Four encoder :class:`ConvBlock` levels with 2x max-pooling between them, three :class:`FPNBlock` steps back to
    full resolution, two refining :class:`ConvBlock` and a 1x1 head. The head returns logits; its sigmoid (the paper's
    sigmoid output) is applied by the Dice loss and the decoder, which is numerically safer.

    Args:
        spatial_dims: 2 for X-rays.
        in_channels: image channels.
        out_channels: number of landmarks K.
        features: four encoder widths, shallow to deep; the FPN blocks use the width of the level they reach.
        dropout: dropout probability inside the blocks.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by 8 -> output ``(B, K, H, W)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        features: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        f = [int(c) for c in features]
        if len(f) != 4:
            raise ValueError(f"FPNSeg takes four encoder widths, got {f}")
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, c_in, c_out, dropout) for c_in, c_out in zip([in_channels, *f[:-1]], f)
        )
        self.fpn = nn.ModuleList(FPNBlock(spatial_dims, f[i + 1], f[i], f[i], dropout) for i in (2, 1, 0))
        self.refine = nn.Sequential(
            ConvBlock(spatial_dims, f[0], f[0], dropout), ConvBlock(spatial_dims, f[0], f[0], dropout)
        )
        self.head = Convolution(spatial_dims, f[0], out_channels, kernel_size=1, conv_only=True)
        he_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        y = feats[3]
        for step, skip in zip(self.fpn, (feats[2], feats[1], feats[0])):
            y = step(y, skip)
        return self.head(self.refine(y))
