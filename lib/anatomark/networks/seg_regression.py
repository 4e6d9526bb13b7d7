"""Segmentation-guided coordinate regression (Amador Sanchez et al. 2024).

A U-Net segments a disk per landmark; its mask probabilities, concatenated with the image, feed a VGG-style CNN
whose fully connected head regresses the 2K coordinates. The regressor always returns exactly one point per
landmark, even where the segmentation misses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from anatomark.networks.unet_seg import ConvBlock, UNetSeg


class SegRegressionNet(nn.Module):
    """U-Net masks + image -> VGG-style CNN -> FC head -> coordinates.

    Args:
        spatial_dims: 2 (the coordinate head is written for 2D).
        in_channels: image channels.
        out_channels: number of landmarks K.
        unet_features: widths of the segmentation U-Net (see :class:`~anatomark.networks.unet_seg.UNetSeg`).
        vgg_features: widths of the VGG stages (each: two 3x3 conv + BN + ReLU, then 2x max-pooling).
        pool_size: the last VGG stage is average-pooled to this ``(h, w)`` grid before the FC head (makes the head
            independent of the input size; the paper flattens a fixed-size map).
        fc_features: width of the hidden fully connected layer.
        dropout: dropout probability in the U-Net and before the last FC layer.
        coord_channels: add two coordinate maps (x and y in [0, 1], CoordConv, Liu et al. 2018) to the VGG input and
            each mask times each of them, so the regressor can read where a mask lies instead of inferring it from
            pooled features (``3 K + 2`` extra channels instead of ``K``).
        anchor_radius: if set, the head regresses an offset from each mask's centre instead of absolute
            coordinates: the centre is the probability-weighted centroid of the mask logits' softmax inside a
            ``(2 r + 1)`` px square around their maximum (differentiable in the logits), and the head starts at zero
            offset. ``None``: the paper's absolute regression, starting at the image centre.

    Shapes:
        input ``(B, in_channels, H, W)``, H and W divisible by ``2 ** (len(unet_features) - 1)`` -> tuple of
        mask logits ``(B, K, H, W)`` and coordinates ``(B, K, 2)`` as (x, y) normalised to [0, 1]
        (``x_px = x * (W - 1)``, ``y_px = y * (H - 1)``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 19,
        unet_features: Sequence[int] = (16, 32, 64, 128, 256),
        vgg_features: Sequence[int] = (16, 32, 64, 128, 128),
        pool_size: Sequence[int] = (4, 4),
        fc_features: int = 256,
        dropout: float = 0.1,
        coord_channels: bool = False,
        anchor_radius: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError("SegRegressionNet regresses (x, y): spatial_dims must be 2")
        self.k = out_channels
        self.coord_channels = bool(coord_channels)
        self.anchor_radius = None if anchor_radius is None else int(anchor_radius)
        self.unet = UNetSeg(spatial_dims, in_channels, out_channels, unet_features, dropout)
        stages: list[nn.Module] = []
        prev = in_channels + (3 * out_channels + 2 if self.coord_channels else out_channels)
        for c in vgg_features:
            stages += [ConvBlock(spatial_dims, prev, int(c)), Pool[Pool.MAX, spatial_dims](kernel_size=2)]
            prev = int(c)
        self.vgg = nn.Sequential(*stages)
        self.squeeze = nn.AdaptiveAvgPool2d(tuple(int(s) for s in pool_size))
        n_flat = prev * int(pool_size[0]) * int(pool_size[1])
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_flat, fc_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_features, 2 * out_channels),
        )
        nn.init.zeros_(self.head[-1].weight)
        # start at the image centre (absolute regression) or at each mask's centre (offsets)
        nn.init.constant_(self.head[-1].bias, 0.5 if self.anchor_radius is None else 0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = self.unet(x)
        prob = torch.sigmoid(masks)
        parts = [x, prob]
        h, w = x.shape[-2:]
        gy, gx = torch.meshgrid(
            torch.linspace(0, 1, h, device=x.device, dtype=x.dtype),
            torch.linspace(0, 1, w, device=x.device, dtype=x.dtype),
            indexing="ij",
        )
        if self.coord_channels:
            grid = torch.stack([gx, gy])[None].expand(x.shape[0], -1, -1, -1)  # (B, 2, H, W): x then y
            parts += [grid, prob * gx, prob * gy]
        feats = self.vgg(torch.cat(parts, dim=1))
        coords = self.head(self.squeeze(feats)).reshape(x.shape[0], self.k, 2)
        if self.anchor_radius is not None:
            coords = coords + mask_centres(masks, gx, gy, self.anchor_radius)
        return masks, coords


def mask_centres(logits: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, radius: int) -> torch.Tensor:
    """Probability-weighted centroid of each channel's softmax inside a square window around its maximum.

    Args:
        logits: ``(B, K, H, W)`` mask logits.
        gx: ``(H, W)`` x coordinate of each pixel, normalised to [0, 1].
        gy: ``(H, W)`` y coordinate of each pixel, normalised to [0, 1].
        radius: half-side of the window in pixels.

    Returns:
        ``(B, K, 2)`` centres as (x, y) normalised to [0, 1] (differentiable in ``logits``, not in the window).
    """
    b, k, h, w = logits.shape
    flat = logits.float().reshape(b, k, -1)
    idx = flat.argmax(-1)  # (B, K)
    ay, ax = idx // w, idx % w
    iy = torch.arange(h, device=logits.device)
    ix = torch.arange(w, device=logits.device)
    in_y = (iy[None, None, :] - ay[..., None]).abs() <= radius  # (B, K, H)
    in_x = (ix[None, None, :] - ax[..., None]).abs() <= radius  # (B, K, W)
    window = (in_y[..., :, None] & in_x[..., None, :]).reshape(b, k, -1)
    p = torch.softmax(flat.masked_fill(~window, float("-inf")), -1)
    cx = (p * gx.reshape(1, 1, -1).float()).sum(-1)
    cy = (p * gy.reshape(1, 1, -1).float()).sum(-1)
    return torch.stack([cx, cy], -1).to(logits.dtype)
