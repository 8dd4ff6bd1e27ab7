"""Budget calibration math: weights, quantile threshold, confidence bound, probability calibration."""
from __future__ import annotations

import numpy as np
import pytest

from escalation.model import apply_calibration
from training.calibrate import (budget_threshold, calibrate_threshold, effective_sample_size, fit_probability_calibration,
                                traffic_weights, weighted_rate, wilson_upper)


def test_traffic_weights_give_positives_the_prior_share():
    y = np.array([1] * 30 + [0] * 70)
    w = traffic_weights(y, len(y), prior=0.05)
    assert w.sum() == pytest.approx(1.0)
    assert w[y == 1].sum() == pytest.approx(0.05)


def test_threshold_escalates_the_budget_share_of_a_reweighted_sample():
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(int)
    s = np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y)))
    cal = calibrate_threshold(s, budget=0.05, prior=0.05, labels=y)
    assert cal["escalation_rate"] == pytest.approx(0.05, abs=0.002)
    assert cal["escalation_rate"] <= 0.05 + 1e-9
    assert cal["escalation_rate"] < cal["escalation_rate_ucb95"] < 0.1
    # A fresh sample from the same traffic lands near the budget too.
    y2 = (rng.random(200_000) < 0.05).astype(int)
    s2 = np.where(y2 == 1, rng.beta(5, 2, len(y2)), rng.beta(2, 5, len(y2)))
    assert (s2 >= cal["value"]).mean() == pytest.approx(0.05, abs=0.01)


def test_unlabeled_sample_uses_plain_quantile():
    s = np.arange(1000) / 1000
    t = budget_threshold(s, 0.05, np.full(1000, 1 / 1000))
    assert weighted_rate(s, t, np.full(1000, 1 / 1000)) == pytest.approx(0.05)


def test_effective_sample_size_and_wilson_bound():
    assert effective_sample_size(np.full(100, 0.01)) == pytest.approx(100)
    assert effective_sample_size(np.array([0.9, 0.1])) < 2
    assert wilson_upper(0.05, 10_000) == pytest.approx(0.0545, abs=0.001)
    assert wilson_upper(0.05, 100) > 0.1


def test_probability_calibration_is_monotone_and_shifts_to_the_prior():
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.15).astype(int)
    s = np.clip(np.where(y == 1, rng.normal(0.7, 0.15, len(y)), rng.normal(0.3, 0.15, len(y))), 0.001, 0.999)
    cal = fit_probability_calibration(s, y, prior=0.05)
    assert cal["method"] in ("sigmoid", "isotonic")
    grid = np.linspace(0.01, 0.99, 50)
    p = apply_calibration(grid, cal)
    assert np.all(np.diff(p) >= -1e-12)
    # Averaged over a traffic-like sample, P(critical) is close to the prior it was shifted to.
    w = traffic_weights(y, len(y), 0.05)
    assert np.average(apply_calibration(s, cal), weights=w) == pytest.approx(0.05, abs=0.015)
