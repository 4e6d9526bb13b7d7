"""Deep appearance-context network (Reddy et al. 2021).

A local-appearance U-Net with CBAM attention at every level proposes landmark heatmaps; a global-context network of
dilated 3x3 convolutions looks at a down-scaled copy of those heatmaps and of the image and produces a smooth
context map per landmark; the two are multiplied point-wise, so a local peak survives only where the global layout
agrees with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from torch import nn

from anatomark.networks.unet_seg import encode_decode


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared MLP on global average- and max-pooled features, sigmoid gate.

    Shapes:
        ``(B, C, *spatial)`` -> ``(B, C, *spatial)``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        gate = torch.sigmoid(self.mlp(flat.mean(-1)) + self.mlp(flat.amax(-1)))
        return x * gate.reshape(*gate.shape, *([1] * (x.ndim - 2)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 convolution over the channel-wise mean and max maps, sigmoid gate.

    Shapes:
        ``(B, C, *spatial)`` -> ``(B, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = Convolution(spatial_dims, 2, 1, kernel_size=kernel_size, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Sequential):
    """Convolutional block attention module: channel attention, then spatial attention (shape-preserving)."""

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 4) -> None:
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention(spatial_dims))


class AttentionConvBlock(nn.Sequential):
    """Two ``3x3 conv -> batch norm -> ReLU`` layers followed by :class:`CBAM`.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__(
            Convolution(
                spatial_dims, in_channels, out_channels, kernel_size=3, act="relu", norm="batch", dropout=dropout
            ),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, act="relu", norm="batch"),
            CBAM(spatial_dims, out_channels),
        )


class AppearanceContextNet(nn.Module):
    """Local-appearance CBAM U-Net x global-context dilated network.

    Args:
        spatial_dims: 2 for X-rays.
        in_channels: image channels.
        out_channels: number of landmarks K.
        features: widths of the local U-Net levels, shallow to deep.
        context_features: width of the global-context layers (128 in the paper).
        context_layers: number of dilated 3x3 convolutions (7 in the paper).
        context_dilations: dilation of each context layer (default: 1, 2, 4, 8, 16, 1, 1 cut to ``context_layers``).
        context_downscale: factor by which the local heatmaps and the image are down-scaled for the context net.
        dropout: dropout probability in the local U-Net blocks.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by ``2 ** (len(features) - 1)`` and by
        ``context_downscale`` -> output ``(B, K, H, W)`` heatmaps = local ``(B, K, H, W)`` * context ``(B, K, H, W)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        features: Sequence[int] = (16, 32, 64, 128),
        context_features: int = 128,
        context_layers: int = 7,
        context_dilations: Sequence[int] | None = None,
        context_downscale: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        f = [int(c) for c in features]
        self.spatial_dims = spatial_dims
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.down = nn.ModuleList(
            AttentionConvBlock(spatial_dims, c_in, c_out, dropout) for c_in, c_out in zip([in_channels, *f[:-1]], f)
        )
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for c_deep, c_skip in zip(f[::-1][:-1], f[::-1][1:]):
            self.ups.append(UpSample(spatial_dims, c_deep, c_skip, scale_factor=2, mode="deconv", kernel_size=2))
            self.up_blocks.append(AttentionConvBlock(spatial_dims, 2 * c_skip, c_skip, dropout))
        self.local_head = Convolution(spatial_dims, f[0], out_channels, kernel_size=1, conv_only=True)

        dil = list(context_dilations) if context_dilations is not None else [1, 2, 4, 8, 16, 1, 1]
        dil = (dil + [1] * context_layers)[:context_layers]
        self.context_downscale = int(context_downscale)
        layers: list[nn.Module] = []
        prev = out_channels + in_channels
        for d in dil:
            layers.append(
                Convolution(spatial_dims, prev, context_features, kernel_size=3, dilation=d, act="relu", norm="batch")
            )
            prev = context_features
        layers.append(Convolution(spatial_dims, prev, out_channels, kernel_size=1, conv_only=True))
        self.context = nn.Sequential(*layers)

    def local_appearance(self, x: torch.Tensor) -> torch.Tensor:
        """Local-appearance heatmaps ``(B, K, H, W)`` from the image ``(B, C, H, W)``."""
        return self.local_head(encode_decode(x, self.down, self.pool, self.ups, self.up_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_appearance(x)
        s = self.context_downscale
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        small = torch.cat([pool(local, s), pool(x, s)], dim=1)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        context = F.interpolate(self.context(small), size=local.shape[2:], mode=mode, align_corners=False)
        return local * context
