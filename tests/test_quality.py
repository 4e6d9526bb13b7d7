"""The quality model on synthetic shapes: plausible shapes fit, mirrored or broken ones do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anatomark.errors import AnatomarkError
from anatomark.quality import QualityModel, generalised_procrustes

K = 12


def template() -> np.ndarray:
    """An asymmetric 'anatomy' of K points in mm (a mirror of it is not a rotation of it)."""
    t = np.linspace(0, 1.6 * math.pi, K)
    return np.stack([40 * np.cos(t) + 8 * t, 30 * np.sin(t) + 5 * t**1.5], axis=1)


def similarity(p: np.ndarray, deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return scale * p @ r.T + np.asarray(shift)


def shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    base = template()
    return np.stack(
        [
            similarity(base + rng.normal(0, 1.0, base.shape), rng.normal(0, 3), rng.normal(1, 0.05), (100, 120))
            for _ in range(n)
        ]
    )


@pytest.fixture
def quality(rng) -> QualityModel:
    q = QualityModel(K, modes=4).fit_shapes(shapes(80, rng))
    stats = [q.fit_shape(s / 0.1, (0.1, 0.1)).statistic_mm for s in shapes(40, rng)]
    return q.fit_statistic(stats)


def test_procrustes_mean_is_centred_unit_size(rng):
    mean, aligned, scales = generalised_procrustes(shapes(20, rng))
    np.testing.assert_allclose(mean.mean(0), 0, atol=1e-9)
    assert math.isclose(float(np.sqrt((mean**2).sum(1).mean())), 1.0, rel_tol=1e-9)
    assert aligned.shape == (20, K, 2) and (scales > 0).all()


def test_a_plausible_shape_is_reliable_and_its_pose_is_recovered(quality, rng):
    s = similarity(template() + rng.normal(0, 1.0, (K, 2)), 10.0, 1.2, (300, 200))
    fit = quality.fit_shape(s / 0.1, (0.1, 0.1))  # pixels at 0.1 mm/px
    assert fit.statistic_mm < 2.5
    assert abs(fit.rotation_deg - 10.0) < 3.0 and abs(fit.size_ratio - 1.2) < 0.06
    np.testing.assert_allclose(fit.fitted * 0.1, s, atol=4.0)
    v = quality.verdict(fit)
    assert v.reliable and v.score > 0.01 and not v.warnings


def test_mirrored_turned_and_wrong_size_shapes_are_flagged(quality):
    mirrored = template() * np.array([-1.0, 1.0])
    v = quality.verdict(quality.fit_shape(mirrored, (1.0, 1.0)))
    assert not v.reliable and any("implausible shape" in w for w in v.warnings)
    turned = quality.verdict(quality.fit_shape(similarity(template(), 90.0, 1.0, (0, 0)), (1.0, 1.0)))
    assert not turned.reliable and any("rotated" in w for w in turned.warnings)
    small = quality.verdict(quality.fit_shape(template() * 0.4, (1.0, 1.0)))
    assert not small.reliable and any("pixel spacing" in w for w in small.warnings)


def test_one_displaced_point_is_singled_out_not_the_rest(quality, rng):
    s = template() + rng.normal(0, 0.5, (K, 2))
    s[3] += (30.0, -25.0)
    fit = quality.fit_shape(s, (1.0, 1.0))
    assert fit.residual_mm[3] > 25.0
    assert np.delete(fit.residual_mm, 3).max() < 6.0
    assert fit.weights[3] < 0.2


def test_blank_image_and_missing_points(quality):
    fit = quality.fit_shape(template(), (1.0, 1.0))
    v = quality.verdict(fit, np.full((50, 40), 7.0, np.float32))
    assert not v.reliable and v.score == 0.0 and "blank" in v.warnings[0]
    few = quality.fit_shape(np.full((K, 2), np.nan), (1.0, 1.0))
    assert not quality.verdict(few).reliable


def test_expected_error_regression_ranks_and_round_trips(quality, rng):
    n = 600
    resid = rng.gamma(2.0, 1.0, n)
    lm = rng.integers(0, K, n)
    err = resid * np.exp(rng.normal(0, 0.3, n)) + 0.2 * lm / K
    feats = quality.features(resid, None, None)
    quality.fit_error_model(feats, lm, err)
    f = quality.features(np.array([0.5, 2.0, 8.0] + [1.0] * (K - 3)), None, None)
    e = quality.expected_error(f)
    assert e[0] < e[1] < e[2]
    q2 = QualityModel(K, modes=4)
    q2.load_state_dict(quality.state_dict())
    np.testing.assert_allclose(q2.expected_error(f), e)


def test_unknown_settings_and_too_few_shapes_are_refused(rng):
    with pytest.raises(AnatomarkError, match="Unknown quality settings"):
        QualityModel(K, colour=1.0)
    with pytest.raises(AnatomarkError, match="at least"):
        QualityModel(K, modes=4).fit_shapes(shapes(3, rng))
