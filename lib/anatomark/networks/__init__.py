"""Landmark networks, one module per model family, built from MONAI blocks (``spatial_dims`` first)."""

from __future__ import annotations

from typing import Any

from torch import nn

from anatomark.errors import AnatomarkError
from anatomark.networks.appearance_context import AppearanceContextNet
from anatomark.networks.farnet import FARNet
from anatomark.networks.fpn_seg import FPNSeg
from anatomark.networks.heatmap_unet import HeatmapUNet
from anatomark.networks.seg_regression import SegRegressionNet
from anatomark.networks.unet_seg import UNetSeg

NETWORKS: dict[str, type[nn.Module]] = {
    "heatmap_unet": HeatmapUNet,
    "unet_seg": UNetSeg,
    "fpn_seg": FPNSeg,
    "appearance_context": AppearanceContextNet,
    "seg_regression": SegRegressionNet,
    "farnet": FARNet,
}


def build_network(cfg: dict[str, Any], out_channels: int) -> nn.Module:
    """Build the network a recipe's ``network`` section describes, with ``out_channels`` = number of landmarks."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETWORKS:
        raise AnatomarkError(f"Unknown network {name!r}; available: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](out_channels=out_channels, **cfg)


__all__ = [
    "NETWORKS",
    "AppearanceContextNet",
    "FARNet",
    "FPNSeg",
    "HeatmapUNet",
    "SegRegressionNet",
    "UNetSeg",
    "build_network",
]
