"""Landmark networks, one module per model family, built from MONAI blocks (``spatial_dims`` first)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from anatomark.errors import AnatomarkError
from anatomark.networks.appearance_context import AppearanceContextNet
from anatomark.networks.ensemble import SoftmaxEnsemble
from anatomark.networks.farnet import FARNet
from anatomark.networks.fpn_seg import FPNSeg
from anatomark.networks.heatmap_unet import HeatmapUNet
from anatomark.networks.seg_regression import SegRegressionNet
from anatomark.networks.unet_seg import UNetSeg


def softmax_ensemble(
    out_channels: int, members: Sequence[dict[str, Any]], spatial_dims: int = 2, in_channels: int | None = None
) -> SoftmaxEnsemble:
    """``network: {name: softmax_ensemble, spatial_dims, in_channels, members: [<network section>, ...]}``: a
    :class:`~anatomark.networks.ensemble.SoftmaxEnsemble` of the member networks (``in_channels``, when given, must
    be every member's)."""
    if not members:
        raise AnatomarkError("network softmax_ensemble needs a non-empty 'members' list of network sections")
    for m in members:
        if in_channels is not None and int(m.get("in_channels", 1)) != int(in_channels):
            raise AnatomarkError(f"softmax_ensemble in_channels {in_channels} differs from a member's: {m}")
    return SoftmaxEnsemble(spatial_dims, [build_network(m, out_channels) for m in members])


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "heatmap_unet": HeatmapUNet,
    "unet_seg": UNetSeg,
    "fpn_seg": FPNSeg,
    "appearance_context": AppearanceContextNet,
    "seg_regression": SegRegressionNet,
    "farnet": FARNet,
    "softmax_ensemble": softmax_ensemble,
}


def build_network(cfg: dict[str, Any], out_channels: int) -> nn.Module:
    """Build the network a recipe's ``network`` section describes, with ``out_channels`` = number of landmarks."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETWORKS:
        raise AnatomarkError(f"Unknown network {name!r}; available: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](out_channels=out_channels, **cfg)


def load_network(cfg: dict[str, Any], out_channels: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """:func:`build_network` with the weights of ``state`` (a float32 state dict), in float32."""
    net = build_network(cfg, out_channels)
    net.load_state_dict(state)
    return net.float()


PRECISIONS = ("float32", "bfloat16", "auto")


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise a clear error."""
    if precision not in PRECISIONS:
        raise AnatomarkError(f"Unknown inference precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a network runs in for a ``precision`` setting on ``device``.

    ``auto`` means bfloat16 where the hardware computes it natively (a CPU whose oneDNN build has bf16 kernels, e.g.
    AVX512-BF16 or AMX; a CUDA GPU with bf16 support) and float32 elsewhere, where bf16 would be emulated and slower.
    """
    check_precision(precision)
    if precision != "auto":
        return torch.bfloat16 if precision == "bfloat16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            native = False
        return torch.bfloat16 if native else torch.float32
    return torch.float32


__all__ = [
    "NETWORKS",
    "PRECISIONS",
    "AppearanceContextNet",
    "FARNet",
    "FPNSeg",
    "HeatmapUNet",
    "SoftmaxEnsemble",
    "SegRegressionNet",
    "UNetSeg",
    "build_network",
    "check_precision",
    "inference_dtype",
]
