"""Landmark accuracy metrics in millimetres: radial error, MRE, SDR, per-landmark tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RADII_MM = (2.0, 2.5, 3.0, 4.0)


def radial_errors(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray | Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm between predicted and true points.

    Args:
        pred: ``(N, K, 2)`` or ``(K, 2)`` predicted (x, y) pixels.
        gt: same shape, ground truth (NaN rows = not annotated, excluded downstream).
        spacing: ``(sx, sy)`` mm/px, or ``(N, 2)`` per image.

    Returns:
        ``(N, K)`` (or ``(K,)``) errors in mm; NaN where the ground truth is missing. A missing prediction
        where the truth exists counts as an infinite error (it is a failed detection).
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    if sp.ndim == 2:
        sp = sp[:, None, :]
    d = (pred - gt) * sp
    err = np.sqrt((d**2).sum(-1))
    gt_missing = np.isnan(gt).any(-1)
    err[np.isnan(pred).any(-1) & ~gt_missing] = np.inf
    err[gt_missing] = np.nan
    return err


def sdr(errors: np.ndarray, radii_mm: Sequence[float] = DEFAULT_RADII_MM) -> dict[str, float]:
    """Successful detection rate: percent of (annotated) landmarks within each radius (inclusive)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    e = e[~np.isnan(e)]
    return {f"{float(r):.1f}": (float((e <= r).mean() * 100.0) if e.size else float("nan")) for r in radii_mm}


def summarize(errors: np.ndarray, names: Sequence[str], radii_mm: Sequence[float] = DEFAULT_RADII_MM) -> dict[str, Any]:
    """MRE +- SD, SDR and per-landmark statistics from ``(N, K)`` errors in mm."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 1:
        e = e[None]
    finite = e[np.isfinite(e)]
    out: dict[str, Any] = {
        "n_images": int(e.shape[0]),
        "n_points": int((~np.isnan(e)).sum()),
        "n_failed": int(np.isinf(e).sum()),
        "mre_mm": float(finite.mean()) if finite.size else float("nan"),
        "sd_mm": float(finite.std()) if finite.size else float("nan"),
        "sdr": sdr(e, radii_mm),
        "per_landmark": [],
    }
    for k, n in enumerate(names):
        col = e[:, k]
        f = col[np.isfinite(col)]
        out["per_landmark"].append(
            {
                "index": k + 1,
                "name": n,
                "mre_mm": float(f.mean()) if f.size else float("nan"),
                "sd_mm": float(f.std()) if f.size else float("nan"),
                "max_mm": float(f.max()) if f.size else float("nan"),
                "sdr": sdr(col, radii_mm),
            }
        )
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Markdown tables of a :func:`summarize` result."""
    radii = list(summary["sdr"])
    lines = [
        f"MRE {summary['mre_mm']:.3f} +- {summary['sd_mm']:.3f} mm over {summary['n_images']} images "
        f"({summary['n_points']} points, {summary['n_failed']} failed)",
        "",
        "| " + " | ".join(f"SDR {r} mm" for r in radii) + " |",
        "|" + "---|" * len(radii),
        "| " + " | ".join(f"{summary['sdr'][r]:.2f} %" for r in radii) + " |",
        "",
        "| # | landmark | MRE mm | SD mm | max mm | " + " | ".join(f"SDR {r}" for r in radii) + " |",
        "|---|---|---|---|---|" + "---|" * len(radii),
    ]
    for row in summary["per_landmark"]:
        lines.append(
            f"| {row['index']} | {row['name']} | {row['mre_mm']:.2f} | {row['sd_mm']:.2f} | {row['max_mm']:.2f} | "
            + " | ".join(f"{row['sdr'][r]:.1f}" for r in radii)
            + " |"
        )
    return "\n".join(lines)
