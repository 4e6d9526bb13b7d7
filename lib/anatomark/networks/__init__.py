"""Landmark networks, one module per model family, built from MONAI blocks (``spatial_dims`` first)."""

from __future__ import annotations

import copy
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


def check_covers(covers: Sequence[Sequence[int] | None], n_members: int, out_channels: int) -> None:
    """Check a :class:`~anatomark.networks.ensemble.SoftmaxEnsemble`'s ``covers``: one entry per member, channels in
    range, every channel answered by some member.

    Raises:
        AnatomarkError: naming what is wrong.
    """
    if len(covers) != n_members:
        raise AnatomarkError(f"softmax_ensemble covers has {len(covers)} entries for {n_members} members")
    seen: set[int] = set()
    for c in covers:
        chans = list(range(out_channels)) if c is None else [int(k) for k in c]
        if any(not 0 <= k < out_channels for k in chans):
            raise AnatomarkError(f"softmax_ensemble covers {c}: channels must be in 0..{out_channels - 1}")
        seen.update(chans)
    if len(seen) < out_channels:
        raise AnatomarkError(
            f"softmax_ensemble: no member answers for channels {sorted(set(range(out_channels)) - seen)}"
        )


def softmax_ensemble(
    out_channels: int,
    members: Sequence[dict[str, Any]],
    spatial_dims: int = 2,
    in_channels: int | None = None,
    covers: Sequence[Sequence[int] | None] | None = None,
) -> SoftmaxEnsemble:
    """``network: {name: softmax_ensemble, spatial_dims, in_channels, members: [<network section>, ...], covers}``:
    a :class:`~anatomark.networks.ensemble.SoftmaxEnsemble` of the member networks (``in_channels``, when given, must
    be every member's; ``covers``, optional: per member the channels it answers for, ``null`` for all)."""
    if not members:
        raise AnatomarkError("network softmax_ensemble needs a non-empty 'members' list of network sections")
    for m in members:
        if in_channels is not None and int(m.get("in_channels", 1)) != int(in_channels):
            raise AnatomarkError(f"softmax_ensemble in_channels {in_channels} differs from a member's: {m}")
    if covers is not None:
        check_covers(covers, len(members), out_channels)
    return SoftmaxEnsemble(spatial_dims, [build_network(m, out_channels) for m in members], covers)


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


class InferenceCopy:
    """The module to run a network with at inference, for a ``precision`` setting (see :func:`inference_dtype`).

    In float32 that is the network itself; in bfloat16 a copy, made on first use and kept until the network's
    parameters change (an optimizer step or ``load_state_dict`` updates them in place, which bumps their version) or
    the device changes. The network itself stays float32, so saving or fine-tuning it loses nothing.

    Args:
        precision: ``float32``, ``bfloat16`` or ``auto``.
    """

    def __init__(self, precision: str = "float32") -> None:
        self.precision = check_precision(precision)
        self._key: tuple | None = None
        self._copy: nn.Module | None = None

    def get(self, network: nn.Module, device: torch.device) -> tuple[nn.Module, torch.dtype]:
        """``(module, dtype)``: cast the input to ``dtype`` and run ``module``; outputs are in ``dtype`` too."""
        dtype = inference_dtype(self.precision, device)
        if dtype == torch.float32:
            return network, dtype
        key = (id(network), device, dtype, tuple(p._version for p in network.parameters()))
        if self._copy is None or self._key != key:
            self._copy = copy.deepcopy(network).to(device, dtype).eval()
            if device.type == "cpu":
                _pool_channels_last(self._copy)
            self._key = key
        return self._copy, dtype


class ChannelsLastMaxPool2d(nn.Module):
    """A :class:`torch.nn.MaxPool2d` run on a channels-last copy of its input: the same values, but on CPU ATen's
    bfloat16 pooling of contiguous ``(N, C, H, W)`` tensors is ~4-7x slower (9 ms against 2 ms for a
    ``(19, 16, 96, 96)`` refiner batch on 2 cores), ~15 % of a refiner's time.

    Args:
        pool: the pooling module to run (its settings are kept).
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> pooled ``(N, C, H', W')``, contiguous like the input."""
        return self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _pool_channels_last(module: nn.Module) -> None:
    """Wrap every 2D max pooling of ``module`` (in place) in :class:`ChannelsLastMaxPool2d`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MaxPool2d) and not child.return_indices:
            setattr(module, name, ChannelsLastMaxPool2d(child))
        else:
            _pool_channels_last(child)


__all__ = [
    "NETWORKS",
    "PRECISIONS",
    "AppearanceContextNet",
    "ChannelsLastMaxPool2d",
    "FARNet",
    "FPNSeg",
    "HeatmapUNet",
    "InferenceCopy",
    "SoftmaxEnsemble",
    "SegRegressionNet",
    "UNetSeg",
    "build_network",
    "check_precision",
    "inference_dtype",
]
