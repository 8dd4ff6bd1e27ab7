"""Candidate scikit-learn heads on [sentence embedding, role one-hot], compared by cross-validation.

Gradient boosting was tried and dropped: 54 s per fit on 2 cores against under 2 s for these three,
for lower out-of-fold recall. Every head exposes predict_proba; its positive-class column is the model's raw `score`. The winner is
chosen by out-of-fold recall at the escalation budget (the product's metric), ties broken by ROC AUC.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC

from training.calibrate import budget_threshold, traffic_weights


def candidate_heads(seed: int = 0) -> dict:
    return {
        "logreg": LogisticRegression(C=4.0, class_weight="balanced", max_iter=3000),
        "linear_svm": CalibratedClassifierCV(LinearSVC(C=0.5, class_weight="balanced"), method="sigmoid", cv=3),
        "mlp": MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True, max_iter=300, random_state=seed),
    }


def recall_at_budget(labels, scores, budget: float, prior: float) -> float:
    """Recall when the threshold escalates `budget` of the sample reweighted to `prior` positives."""
    y = np.asarray(labels)
    t = budget_threshold(scores, budget, traffic_weights(y, len(y), prior))
    return float((np.asarray(scores)[y == 1] >= t).mean())


def cross_validate(heads: dict, X, y, groups, budget: float, prior: float, folds: int = 5, seed: int = 0):
    """Out-of-fold scores and metrics per head; folds keep near-duplicate clusters together."""
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(cv.split(X, y, groups))
    results = {}
    for name, head in heads.items():
        oof = np.zeros(len(y))
        for train_idx, val_idx in splits:
            oof[val_idx] = clone(head).fit(X[train_idx], y[train_idx]).predict_proba(X[val_idx])[:, 1]
        results[name] = {
            "oof": oof,
            "roc_auc": float(roc_auc_score(y, oof)),
            "recall_at_budget": recall_at_budget(y, oof, budget, prior),
        }
    return results


def choose(results: dict) -> str:
    return max(results, key=lambda n: (round(results[n]["recall_at_budget"], 3), results[n]["roc_auc"]))
