"""The model artifact: one folder that holds everything a decision needs, and the class that loads it.

Layout of an artifact folder (logged to MLflow as the `model_dir` artifact of a pyfunc model):

    encoder/         model.onnx (int8), tokenizer.json, encoder.json
    head.joblib      a fitted scikit-learn estimator on [embedding, role one-hot] (if chosen)
    lexical.joblib   a fitted TF-IDF + logistic regression pipeline on the text (if chosen)
    index.npz        a small index of labeled examples (unit vectors, labels) for justifications
    index.jsonl      the texts and roles of that index, one per line
    meta.json        calibration, threshold(s) and the budget they were set for, corpus hash, metrics

Training and serving both call `EscalationModel.score()`, so a text scores identically offline and
online. Loading needs numpy, onnxruntime, tokenizers and scikit-learn; never torch or mlflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escalation.encoder import OnnxEncoder
from escalation.schema import ROLES


def role_features(roles: list[str | None]) -> np.ndarray:
    """One-hot role columns; an unknown or missing role is all zeros."""
    out = np.zeros((len(roles), len(ROLES)), dtype=np.float32)
    for i, role in enumerate(roles):
        if role in ROLES:
            out[i, ROLES.index(role)] = 1.0
    return out


def features(embeddings: np.ndarray, roles: list[str | None]) -> np.ndarray:
    return np.hstack([embeddings, role_features(roles)])


def calibrated_probability(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """Maps head scores to P(critical) at the corpus base rate (sigmoid or isotonic fit)."""
    s = np.asarray(scores, dtype=np.float64)
    if calibration["method"] == "sigmoid":
        logit = np.log(np.clip(s, 1e-7, 1 - 1e-7) / np.clip(1 - s, 1e-7, 1))
        return 1.0 / (1.0 + np.exp(-(calibration["a"] * logit + calibration["b"])))
    if calibration["method"] == "isotonic":
        return np.interp(s, calibration["x"], calibration["y"])
    raise ValueError(f"unknown calibration method {calibration['method']!r}")


def apply_calibration(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """P(critical) for a task drawn from traffic.

    The corpus holds more critical tasks than traffic does (about 14% against 5%); Bayes' rule on the
    odds turns a probability under the corpus base rate into one under the configured prior.
    """
    base, prior = calibration["base_rate"], calibration["prior"]
    p = np.clip(calibrated_probability(scores, calibration), 1e-6, 1 - 1e-6)
    odds = p / (1 - p) * (prior / (1 - prior)) / (base / (1 - base))
    return odds / (1 + odds)


def fast_predict(head):
    """A numpy version of `head.predict_proba(X)[:, 1]` for the heads training can choose, or None.

    scikit-learn's per-call overhead (input validation, and for the calibrated SVM three estimators
    and calibrators) cost 3-5 ms for one row, more than the encoder; the arithmetic is microseconds.
    `EscalationModel` uses this only after checking it matches predict_proba on the index rows.
    """
    from scipy.special import expit
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    if isinstance(head, LogisticRegression) and head.coef_.shape[0] == 1:
        w, b = head.coef_[0].astype(np.float64), float(head.intercept_[0])
        return lambda X: expit(X @ w + b)
    if isinstance(head, CalibratedClassifierCV) and all(
        isinstance(c.estimator, (LinearSVC, LogisticRegression)) and c.method == "sigmoid" and len(c.calibrators) == 1
        for c in head.calibrated_classifiers_
    ):
        ccs = head.calibrated_classifiers_
        W = np.stack([c.estimator.coef_[0] for c in ccs]).astype(np.float64).T
        b = np.array([c.estimator.intercept_[0] for c in ccs])
        a_cal = np.array([c.calibrators[0].a_ for c in ccs])
        b_cal = np.array([c.calibrators[0].b_ for c in ccs])
        return lambda X: expit(-(a_cal * (X @ W + b) + b_cal)).mean(axis=1)
    if isinstance(head, MLPClassifier) and head.out_activation_ == "logistic" and head.activation == "relu":
        layers = list(zip(head.coefs_, head.intercepts_))

        def forward(X):
            h = np.asarray(X, dtype=np.float64)
            for W, b in layers[:-1]:
                h = np.maximum(h @ W + b, 0)
            W, b = layers[-1]
            return expit(h @ W + b)[:, 0]
        return forward
    return None


@dataclass
class Scored:
    score: np.ndarray  # the head's raw score, what the threshold applies to
    probability: np.ndarray  # calibrated P(critical) under the traffic prior
    embeddings: np.ndarray


class EscalationModel:
    """Loads an artifact folder once; `score()` is the whole offline/online scoring path."""

    def __init__(self, folder: str | Path, version: str = "local", threads: int | None = None):
        import joblib

        self.folder = Path(folder)
        self.version = version
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.encoder = OnnxEncoder(self.folder / "encoder", threads=threads)
        # The head: a semantic estimator on [embedding, role], a lexical pipeline on the text, or both
        # (then the score is their mean). Which files exist says which parts the trainer chose.
        semantic_file, lexical_file = self.folder / "head.joblib", self.folder / "lexical.joblib"
        self.semantic = joblib.load(semantic_file) if semantic_file.exists() else None
        self.lexical = joblib.load(lexical_file) if lexical_file.exists() else None
        if self.semantic is None and self.lexical is None:
            raise FileNotFoundError(f"{self.folder} has neither head.joblib nor lexical.joblib; re-run `escalation train`")
        index = np.load(self.folder / "index.npz")
        self.index_vectors = index["vectors"].astype(np.float32)
        self.index_labels = index["labels"].astype(int)
        with open(self.folder / "index.jsonl", encoding="utf-8") as f:
            self.index_rows = [json.loads(line) for line in f]
        self._semantic = self._checked_fast_predict() if self.semantic is not None else None

    def _checked_fast_predict(self):
        fast = fast_predict(self.semantic)
        slow = lambda X: self.semantic.predict_proba(X)[:, 1]  # noqa: E731
        if fast is None or not len(self.index_vectors):
            return slow
        X = features(self.index_vectors[:32], [r.get("role") for r in self.index_rows[:32]])
        return fast if np.allclose(fast(X), slow(X), rtol=0, atol=1e-9) else slow

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])

    @property
    def budget(self) -> float:
        return float(self.meta["threshold"]["budget"])

    def raw_scores(self, embeddings: np.ndarray, roles: list[str | None], texts: list[str]) -> np.ndarray:
        parts = []
        if self._semantic is not None:
            parts.append(self._semantic(features(embeddings, roles)))
        if self.lexical is not None:
            parts.append(self.lexical.predict_proba(list(texts))[:, 1])
        return np.mean(parts, axis=0)

    def score(self, texts: list[str], roles: list[str | None] | None = None) -> Scored:
        roles = roles if roles is not None else [None] * len(texts)
        embeddings = self.encoder.encode(texts)
        raw = self.raw_scores(embeddings, roles, texts)
        return Scored(score=raw, probability=apply_calibration(raw, self.meta["calibration"]), embeddings=embeddings)

    def neighbours(self, embeddings: np.ndarray, k: int = 3) -> list[list[dict]]:
        """The k most similar labeled examples for each row: the evidence a reviewer can check."""
        if not len(self.index_vectors) or not len(embeddings):
            return [[] for _ in range(len(embeddings))]
        sims = embeddings @ self.index_vectors.T
        top = np.argsort(-sims, axis=1)[:, :k]
        return [
            [{"text": self.index_rows[j]["text"], "label": int(self.index_labels[j]), "similarity": round(float(sims[i, j]), 3)} for j in row]
            for i, row in enumerate(top)
        ]
