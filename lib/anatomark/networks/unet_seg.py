"""U-Net landmark segmentation (Fernandes et al. 2023, after Pauly): one mask channel per landmark.

Blocks follow the paper's recipe: 3x3 convolutions with batch norm, ReLU, dropout and He-normal initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from torch import nn


def he_normal_init(module: nn.Module) -> None:
    """He-normal (Kaiming, fan-in, ReLU) weights and zero biases for every convolution and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def encode_decode(
    x: torch.Tensor, down: nn.ModuleList, pool: nn.Module, ups: nn.ModuleList, up_blocks: nn.ModuleList
) -> torch.Tensor:
    """The U-Net pass shared by the U-Net families: encoder blocks with pooling between them, then for each level
    upsample, concatenate the skip and convolve.

    Shapes:
        ``x`` ``(B, C, H, W)`` -> ``(B, F0, H, W)`` with ``F0`` the first encoder width.
    """
    skips = []
    for i, block in enumerate(down):
        x = block(x if i == 0 else pool(x))
        skips.append(x)
    x = skips.pop()
    for up, block in zip(ups, up_blocks):
        x = block(torch.cat([up(x), skips.pop()], dim=1))
    return x


class ConvBlock(nn.Sequential):
    """Two ``3x3 conv -> batch norm -> ReLU`` layers, dropout after the first (MONAI ``Convolution`` ``NDA`` order).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        dropout: dropout probability.
        dilation: dilation of both convolutions.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0, dilation: int = 1
    ) -> None:
        super().__init__(
            Convolution(
                spatial_dims,
                in_channels,
                out_channels,
                kernel_size=3,
                act="relu",
                norm="batch",
                dropout=dropout,
                dilation=dilation,
            ),
            Convolution(
                spatial_dims, out_channels, out_channels, kernel_size=3, act="relu", norm="batch", dilation=dilation
            ),
        )


class UNetSeg(nn.Module):
    """U-Net that segments one small region (square or disk) per landmark.

    Encoder: ``len(features)`` :class:`ConvBlock` levels with 2x max-pooling between them; decoder: 2x transposed
    convolution, concatenation with the skip, :class:`ConvBlock`; a 1x1 convolution gives one logit map per landmark
    (apply a sigmoid for probabilities; the Dice loss does it).

    Args:
        spatial_dims: 2 for X-rays (3 works too).
        in_channels: image channels.
        out_channels: number of landmarks K (one channel each, so identities never mix).
        features: widths of the encoder levels, shallow to deep.
        dropout: dropout probability inside every block.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by ``2 ** (len(features) - 1)`` ->
        output ``(B, K, H, W)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        f = [int(c) for c in features]
        pool = Pool[Pool.MAX, spatial_dims]
        self.pool = pool(kernel_size=2)
        self.down = nn.ModuleList()
        prev = in_channels
        for c in f:
            self.down.append(ConvBlock(spatial_dims, prev, c, dropout))
            prev = c
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for c_deep, c_skip in zip(f[::-1][:-1], f[::-1][1:]):
            self.ups.append(UpSample(spatial_dims, c_deep, c_skip, scale_factor=2, mode="deconv", kernel_size=2))
            self.up_blocks.append(ConvBlock(spatial_dims, 2 * c_skip, c_skip, dropout))
        self.head = Convolution(spatial_dims, f[0], out_channels, kernel_size=1, conv_only=True)
        he_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(encode_decode(x, self.down, self.pool, self.ups, self.up_blocks))
