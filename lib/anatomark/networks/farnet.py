"""FARNet (Ao & Wu 2022): DenseNet encoder, multi-scale feature aggregation, feature refinement at full resolution.

Encoder: MONAI's DenseNet (DenseNet-121 by default, no pretrained weights). Multi-scale feature aggregation (MSFA)
on the 1/4 ... 1/32 features: an up path (top-down), a down path (bottom-up) and a second up path; every merge is a
concatenation followed by a 1x1 convolution, and higher-resolution levels keep more channels. The MSFA output gives
coarse heatmaps at 1/4 resolution; the feature refinement module (FRM) upsamples the MSFA features to the input
resolution in two 2x steps, concatenating the encoder's 1/2-resolution features, shallow full-resolution features and
the upsampled coarse heatmaps, and predicts the fine heatmaps. Both outputs are supervised (coarse-to-fine).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import DenseNet
from torch import nn


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class _Merge(nn.Module):
    """Concatenate ``(B, C_i, H, W)`` maps and mix them with a 1x1 conv + BN + ReLU -> ``(B, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Convolution(2, in_channels, out_channels, kernel_size=1, act="relu", norm="batch")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat(xs, dim=1))


class FARNet(nn.Module):
    """Feature aggregation and refinement network for 2D landmark heatmap regression.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels.
        out_channels: number of landmarks K.
        init_features: DenseNet stem width (64 for DenseNet-121).
        growth_rate: DenseNet growth rate (32 for DenseNet-121).
        block_config: DenseNet layers per block ((6, 12, 24, 16) for DenseNet-121).
        msfa_channels: channels of the MSFA maps at 1/4, 1/8, 1/16, 1/32 (higher resolution dominant).
        refine_channels: channels of the FRM at 1/2 and full resolution.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by 32 -> tuple of fine heatmaps ``(B, K, H, W)`` and
        coarse heatmaps ``(B, K, H/4, W/4)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        msfa_channels: Sequence[int] = (128, 64, 32, 32),
        refine_channels: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError("FARNet is implemented for 2D images (spatial_dims=2)")
        dense = DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
        )
        fe = dense.features
        self.stem = nn.Sequential(fe.conv0, fe.norm0, fe.relu0)  # 1/2
        self.pool0 = fe.pool0  # 1/4
        self.blocks = nn.ModuleList([fe.denseblock1, fe.denseblock2, fe.denseblock3, fe.denseblock4])
        self.transitions = nn.ModuleList([fe.transition1, fe.transition2, fe.transition3])
        self.norm5 = fe.norm5
        enc_ch = self._encoder_channels(init_features, growth_rate, block_config)
        c = [int(v) for v in msfa_channels]
        # reduce each encoder level to its MSFA width
        self.reduce = nn.ModuleList(
            Convolution(2, e, ci, kernel_size=1, act="relu", norm="batch") for e, ci in zip(enc_ch, c)
        )
        # up path 1: 1/32 -> 1/4
        self.up1 = nn.ModuleList(_Merge(c[i] + c[i + 1], c[i]) for i in (2, 1, 0))
        # down path: 1/4 -> 1/32 (strided 3x3 convs carry the finer map down)
        self.down_conv = nn.ModuleList(
            Convolution(2, c[i], c[i], kernel_size=3, strides=2, act="relu", norm="batch") for i in (0, 1, 2)
        )
        self.down = nn.ModuleList(_Merge(c[i] + c[i + 1], c[i + 1]) for i in (0, 1, 2))
        # up path 2: 1/32 -> 1/4
        self.up2 = nn.ModuleList(_Merge(c[i] + c[i + 1] + c[i], c[i]) for i in (2, 1, 0))
        self.coarse_head = Convolution(2, c[0], out_channels, kernel_size=1, conv_only=True)
        r_half, r_full = (int(v) for v in refine_channels)
        self.shallow = Convolution(2, in_channels, r_full, kernel_size=3, act="relu", norm="batch")
        self.refine_half = nn.Sequential(
            Convolution(2, c[0] + init_features + out_channels, r_half, kernel_size=3, act="relu", norm="batch"),
            Convolution(2, r_half, r_half, kernel_size=3, act="relu", norm="batch"),
        )
        self.refine_full = nn.Sequential(
            Convolution(2, r_half + r_full + out_channels, r_full, kernel_size=3, act="relu", norm="batch"),
            Convolution(2, r_full, r_full, kernel_size=3, act="relu", norm="batch"),
        )
        self.fine_head = Convolution(2, r_full, out_channels, kernel_size=1, conv_only=True)

    @staticmethod
    def _encoder_channels(init: int, growth: int, blocks: Sequence[int]) -> list[int]:
        """Channels after dense blocks 1..4 (the transitions halve them in MONAI's DenseNet)."""
        out, ch = [], init
        for i, n in enumerate(blocks):
            ch += n * growth
            out.append(ch)
            if i < len(blocks) - 1:
                ch //= 2
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.stem(x)
        y = self.pool0(half)
        feats = []
        for i, block in enumerate(self.blocks):
            y = block(y)
            if i == len(self.blocks) - 1:
                y = torch.relu(self.norm5(y))
            feats.append(y)
            if i < len(self.transitions):
                y = self.transitions[i](y)
        p = [r(f) for r, f in zip(self.reduce, feats)]  # 1/4, 1/8, 1/16, 1/32
        # up path 1
        u = [None, None, None, p[3]]
        for merge, i in zip(self.up1, (2, 1, 0)):
            u[i] = merge(p[i], _up(u[i + 1], p[i]))
        # down path
        d = [u[0], None, None, None]
        for conv, merge, i in zip(self.down_conv, self.down, (0, 1, 2)):
            d[i + 1] = merge(_up(conv(d[i]), u[i + 1]), u[i + 1])
        # up path 2
        e = [None, None, None, d[3]]
        for merge, i in zip(self.up2, (2, 1, 0)):
            e[i] = merge(d[i], _up(e[i + 1], d[i]), u[i])
        coarse = self.coarse_head(e[0])
        # feature refinement at 1/2, then full resolution, guided by the coarse heatmaps
        r = self.refine_half(torch.cat([_up(e[0], half), half, _up(coarse, half)], dim=1))
        r = self.refine_full(torch.cat([_up(r, x), self.shallow(x), _up(coarse, x)], dim=1))
        return self.fine_head(r), coarse
