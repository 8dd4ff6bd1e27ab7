"""Budget calibration: the threshold that escalates the budget share of a traffic-like sample.

"5% of traffic" is a property of traffic, not of the corpus, which holds about three times more
critical tasks than traffic does. A labeled sample is made traffic-like by weighting: positives share
`prior` of the total weight and negatives `1 - prior`. The threshold is the weighted score quantile at
`1 - budget`. With no labels (scores the service logged), every row weighs the same.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from escalation.model import calibrated_probability


def traffic_weights(labels: np.ndarray | None, n: int, prior: float) -> np.ndarray:
    """Weights summing to 1 that give positives `prior` of the mass (uniform without labels)."""
    if labels is None:
        return np.full(n, 1.0 / n)
    y = np.asarray(labels)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a labeled calibration sample needs both positives and negatives")
    return np.where(y == 1, prior / n_pos, (1 - prior) / n_neg)


def weighted_rate(scores: np.ndarray, threshold: float, weights: np.ndarray) -> float:
    return float(weights[np.asarray(scores) >= threshold].sum() / weights.sum())


def budget_threshold(scores: np.ndarray, budget: float, weights: np.ndarray) -> float:
    """Smallest cut whose weighted escalation share does not exceed the budget (midpoint between items)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    k = int(np.searchsorted(cum, budget + 1e-12, side="right"))  # items 0..k-1 fit in the budget
    if k == 0:
        return float(s[order[0]]) + 1e-9
    if k >= len(s):
        return float(s[order[-1]])
    return float((s[order[k - 1]] + s[order[k]]) / 2)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective n: what a weighted sample is worth as an unweighted one."""
    return float(weights.sum() ** 2 / np.square(weights).sum())


def wilson_interval(rate: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval for a proportion observed on n (effective) items."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = rate + z * z / (2 * n)
    margin = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom), min(1.0, (centre + margin) / denom)


def wilson_upper(rate: float, n: float, z: float = 1.96) -> float:
    return wilson_interval(rate, n, z)[1]


def calibrate_threshold(scores, budget: float, prior: float, labels=None) -> dict:
    """Everything stored with the model about its threshold, for a labeled or unlabeled sample."""
    scores = np.asarray(scores, dtype=np.float64)
    w = traffic_weights(labels, len(scores), prior)
    t = budget_threshold(scores, budget, w)
    rate = weighted_rate(scores, t, w)
    n_eff = effective_sample_size(w)
    return {
        "value": t,
        "budget": budget,
        "prior": prior if labels is not None else None,
        "sample": "labeled, reweighted to prior" if labels is not None else "logged traffic",
        "sample_size": int(len(scores)),
        "effective_sample_size": round(n_eff, 1),
        "escalation_rate": rate,
        "escalation_rate_ucb95": wilson_upper(rate, n_eff),
    }


def fit_probability_calibration(scores, labels, prior: float, method: str = "auto", seed: int = 0) -> dict:
    """Fits score -> P(critical) on out-of-fold scores; 'auto' keeps the lower held-out Brier score."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    base_rate = float(y.mean())

    def fit(method, s, y):
        if method == "sigmoid":
            logit = np.log(np.clip(s, 1e-7, 1 - 1e-7) / np.clip(1 - s, 1e-7, 1)).reshape(-1, 1)
            lr = LogisticRegression(C=1e6).fit(logit, y)
            return {"method": "sigmoid", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y)
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}

    chosen, briers = method, {}
    if method == "auto":
        rng = np.random.default_rng(seed)
        held = rng.random(len(s)) < 0.3
        for m in ("sigmoid", "isotonic"):
            cal = fit(m, s[~held], y[~held])
            briers[m] = float(np.mean((calibrated_probability(s[held], cal) - y[held]) ** 2))
        chosen = min(briers, key=briers.get)
    cal = fit(chosen, s, y)
    cal.update({"base_rate": base_rate, "prior": prior, "held_out_brier": briers})
    return cal
