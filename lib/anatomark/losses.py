"""Landmark losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class SpatialSoftmaxCELoss(nn.Module):
    """Cross-entropy between a per-landmark spatial softmax and the normalised Gaussian target.

    For each landmark channel the logits are turned into a probability map over all pixels; the target
    heatmap is normalised to sum to one; the loss is ``-sum(target * log_softmax(logits))`` averaged over
    the landmarks that are present (a target channel of zeros marks a missing landmark and is ignored).
    A network with several outputs (coarse-to-fine supervision, FARNet) gives a tuple: the terms are summed with
    ``weights`` and a coarse output is compared with the target down-sampled to its size (:func:`coarse_target`).

    Args:
        weights: weight of each output when the network returns a tuple (fine first).

    Shapes:
        logits ``(B, K, H, W)`` or a tuple of ``(B, K, H_i, W_i)``, target ``(B, K, H, W)`` (non-negative) -> scalar.
    """

    def __init__(self, weights: tuple[float, ...] = (1.0, 1.0)) -> None:
        super().__init__()
        self.weights = tuple(float(w) for w in weights)

    @staticmethod
    def _one(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if tuple(target.shape[2:]) != tuple(logits.shape[2:]):
            target = coarse_target(target, logits.shape[2:])
        b, k = logits.shape[:2]
        logp = torch.log_softmax(logits.reshape(b, k, -1).float(), dim=-1)
        t = target.reshape(b, k, -1).float()
        total = t.sum(-1, keepdim=True)
        present = (total.squeeze(-1) > 0).float()
        t = t / total.clamp_min(1e-12)
        ce = -(t * logp).sum(-1)  # (B, K)
        return (ce * present).sum() / present.sum().clamp_min(1.0)

    def forward(self, logits: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, (tuple, list)):
            return self._one(logits, target)
        return sum(w * self._one(p, target) for w, p in zip(self.weights, logits))


def _present(target: torch.Tensor) -> torch.Tensor:
    """``(B, K, *spatial)`` target -> ``(B, K)`` float: 1 where the channel has any foreground (landmark present)."""
    return (target.flatten(2).amax(-1) > 0).float()


def _masked_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    return (values * present).sum() / present.sum().clamp_min(1.0)


class MaskedDiceLoss(nn.Module):
    """Soft Dice loss per landmark channel on sigmoid probabilities (landmark segmentation, Fernandes et al. 2023).

    Channels whose target is empty (missing landmark) are ignored.

    Args:
        smooth: added to numerator and denominator.

    Shapes:
        logits ``(B, K, H, W)``, target ``(B, K, H, W)`` in {0, 1} -> scalar.
    """

    def __init__(self, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.dice(logits.float(), target.float()).reshape(target.shape[:2])
        return _masked_mean(d, _present(target))


class DiceSpatialCELoss(nn.Module):
    """Soft Dice on sigmoid masks plus a spatial-softmax cross-entropy on the same logits.

    The Dice term is the segmentation paper's loss; the cross-entropy term (the mask normalised to a distribution
    over the image, :class:`SpatialSoftmaxCELoss`) penalises foreground anywhere else in the image, which makes
    the tiny masks converge on a CPU budget and suppresses second blobs.

    Args:
        ce_weight: weight of the cross-entropy term.
        smooth: Dice smoothing.

    Shapes:
        logits ``(B, K, H, W)``, target ``(B, K, H, W)`` in {0, 1} (empty channel = missing, ignored) -> scalar.
    """

    def __init__(self, ce_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice = MaskedDiceLoss(smooth)
        self.ce = SpatialSoftmaxCELoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.ce_weight * self.ce(logits, target)


class HeatmapMSELoss(nn.Module):
    """Mean squared error between predicted and Gaussian target heatmaps (Reddy et al. 2021).

    Args:
        fg_weight: extra weight ``1 + fg_weight * target`` on pixels near the landmark (0 = plain MSE).

    Shapes:
        prediction ``(B, K, H, W)``, target ``(B, K, H, W)`` (all-zero channel = missing, ignored) -> scalar.
    """

    def __init__(self, fg_weight: float = 0.0) -> None:
        super().__init__()
        self.fg_weight = float(fg_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.float()
        w = 1.0 + self.fg_weight * t
        per = (w * (pred.float() - t) ** 2).flatten(2).mean(-1)
        return _masked_mean(per, _present(t))


def coarse_target(target: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Down-sample Gaussian heatmaps ``(B, K, H, W)`` to ``size`` (area) and rescale each channel's peak back to 1."""
    small = F.interpolate(target.float(), size=size, mode="area")
    peak = small.flatten(2).amax(-1)[..., None, None]
    return torch.where(peak > 0, small / peak.clamp_min(1e-12), small)


class ExponentialWeightedCenterLoss(nn.Module):
    """FARNet's exponential weighted center loss ``EWC = (y - y_hat)^2 * alpha^y`` (Ao & Wu 2022).

    Pixels near the landmark centre (target ``y`` close to 1) weigh up to ``alpha`` times more than the background.
    Several outputs (coarse-to-fine supervision) are summed with ``weights``; a coarse output is compared with the
    target down-sampled to its size (:func:`coarse_target`).

    Args:
        alpha: base of the exponential weight (40 in the paper).
        weights: weight of each output when the network returns a tuple (fine first).

    Shapes:
        prediction ``(B, K, H, W)`` or a tuple of ``(B, K, H_i, W_i)``, target ``(B, K, H, W)`` Gaussian heatmaps with
        peak 1 (all-zero channel = missing, ignored) -> scalar.
    """

    def __init__(self, alpha: float = 40.0, weights: tuple[float, ...] = (1.0, 1.0)) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.weights = tuple(float(w) for w in weights)

    def _one(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target if tuple(target.shape[2:]) == tuple(pred.shape[2:]) else coarse_target(target, pred.shape[2:])
        per = ((pred.float() - t) ** 2 * torch.pow(self.alpha, t)).flatten(2).mean(-1)
        return _masked_mean(per, _present(target))

    def forward(self, pred: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        preds = pred if isinstance(pred, (tuple, list)) else (pred,)
        t = target.float()
        return sum(w * self._one(p, t) for w, p in zip(self.weights, preds))


class SegRegressionLoss(nn.Module):
    """``alpha * Dice-CE(masks) + MSE(coordinates)`` for segmentation-guided regression (Amador Sanchez et al. 2024).

    Dice and binary cross-entropy are computed per landmark channel on the sigmoid masks; the MSE on the normalised
    (x, y) coordinates. Missing landmarks (empty mask, NaN coordinates) are ignored.

    Args:
        alpha: weight of the segmentation term (0.2 in the paper).
        seg: the segmentation term: ``dice_bce`` (the paper's) or ``dice_spatial_ce`` (Dice plus the spatial-softmax
            cross-entropy, :class:`DiceSpatialCELoss`, which localises the masks on a CPU budget).

    Shapes:
        prediction ``(mask logits (B, K, H, W), coords (B, K, 2))``, target ``(masks (B, K, H, W),
        coords (B, K, 2))`` with coordinates normalised to [0, 1] -> scalar.
    """

    def __init__(self, alpha: float = 0.2, seg: str = "dice_bce") -> None:
        super().__init__()
        if seg not in ("dice_bce", "dice_spatial_ce"):
            raise ValueError(f"seg_regression loss: seg {seg!r}; use dice_bce or dice_spatial_ce")
        self.alpha = float(alpha)
        self.seg = seg
        self.dice = DiceLoss(sigmoid=True, reduction="none")
        self.dice_ce = DiceSpatialCELoss()

    def forward(
        self, pred: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        logits, coords = pred
        masks, tcoords = target
        masks = masks.float()
        if self.seg == "dice_spatial_ce":
            seg = self.dice_ce(logits, masks)
        else:
            present = _present(masks)
            dice = self.dice(logits.float(), masks).reshape(masks.shape[:2])
            bce = F.binary_cross_entropy_with_logits(logits.float(), masks, reduction="none").flatten(2).mean(-1)
            seg = _masked_mean(dice + bce, present)
        ok = torch.isfinite(tcoords).all(-1).float()
        diff = torch.nan_to_num(coords.float() - tcoords.float(), nan=0.0)
        mse = _masked_mean((diff**2).sum(-1), ok)
        return self.alpha * seg + mse


LOSSES: dict[str, type[nn.Module]] = {
    "spatial_softmax_ce": SpatialSoftmaxCELoss,
    "dice": MaskedDiceLoss,
    "dice_spatial_ce": DiceSpatialCELoss,
    "heatmap_mse": HeatmapMSELoss,
    "ewc": ExponentialWeightedCenterLoss,
    "seg_regression": SegRegressionLoss,
}
