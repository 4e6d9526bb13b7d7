"""Landmark networks, one module per model family, built from MONAI blocks (``spatial_dims`` first)."""

from __future__ import annotations

from typing import Any

from torch import nn

from anatomark.errors import AnatomarkError
from anatomark.networks.heatmap_unet import HeatmapUNet

NETWORKS: dict[str, type[nn.Module]] = {"heatmap_unet": HeatmapUNet}


def build_network(cfg: dict[str, Any], out_channels: int) -> nn.Module:
    """Build the network a recipe's ``network`` section describes, with ``out_channels`` = number of landmarks."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETWORKS:
        raise AnatomarkError(f"Unknown network {name!r}; available: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](out_channels=out_channels, **cfg)


__all__ = ["NETWORKS", "HeatmapUNet", "build_network"]
