"""The model artifact: one folder that holds everything a decision needs, and the class that loads it.

Layout of an artifact folder (logged to MLflow as the `model_dir` artifact of a pyfunc model):

    encoder/         model.onnx (int8), tokenizer.json, encoder.json
    head.joblib      a fitted scikit-learn estimator on [embedding, role one-hot] (if chosen)
    lexical.joblib   a fitted TF-IDF + logistic regression pipeline on the text (if chosen)
    heads.npz        the same heads as numpy arrays (+ lexical_vocabulary.json): what serving runs
    index.npz        a small index of labeled examples (unit vectors, labels) for justifications
    index.jsonl      the texts and roles of that index, one per line
    meta.json        calibration, threshold(s) and the budget they were set for, corpus hash, metrics

Training and serving both call `EscalationModel.score()`, so a text scores identically offline and
online. Loading needs numpy, onnxruntime and tokenizers; never torch, mlflow or (with heads.npz)
scikit-learn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escalation import compiled
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


@dataclass
class Scored:
    score: np.ndarray  # the head's raw score, what the threshold applies to
    probability: np.ndarray  # calibrated P(critical) under the traffic prior
    embeddings: np.ndarray


class EscalationModel:
    """Loads an artifact folder once; `score()` is the whole offline/online scoring path."""

    def __init__(self, folder: str | Path, version: str = "local", threads: int | None = None):
        self.folder = Path(folder)
        self.version = version
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.encoder = OnnxEncoder(self.folder / "encoder", threads=threads)
        index = np.load(self.folder / "index.npz")
        self.index_vectors = index["vectors"].astype(np.float32)
        self.index_labels = index["labels"].astype(int)
        with open(self.folder / "index.jsonl", encoding="utf-8") as f:
            self.index_rows = [json.loads(line) for line in f]
        # The head: a semantic part on [embedding, role], a lexical part on the text, or both (then
        # the score is their mean). heads.npz holds them as arrays (see escalation/compiled.py);
        # an artifact without it is scored through its scikit-learn objects.
        if (self.folder / compiled.ARRAYS_FILE).exists():
            self._semantic, self._lexical = compiled.load_compiled(self.folder)
        else:
            self._semantic, self._lexical = self._sklearn_heads()
        if self._semantic is None and self._lexical is None:
            raise FileNotFoundError(f"{self.folder} holds no head (heads.npz, head.joblib or lexical.joblib); re-run `escalation train`")

    def _sklearn_heads(self):
        import joblib

        semantic_file, lexical_file = self.folder / "head.joblib", self.folder / "lexical.joblib"
        semantic = joblib.load(semantic_file) if semantic_file.exists() else None
        lexical = joblib.load(lexical_file) if lexical_file.exists() else None
        semantic_fn = (lambda X: semantic.predict_proba(X)[:, 1]) if semantic is not None else None
        lexical_fn = (lambda texts: lexical.predict_proba(list(texts))[:, 1]) if lexical is not None else None
        return semantic_fn, lexical_fn

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
        if self._lexical is not None:
            parts.append(self._lexical(list(texts)))
        return np.mean(parts, axis=0)

    def score(self, texts: list[str], roles: list[str | None] | None = None, embeddings: np.ndarray | None = None) -> Scored:
        """`embeddings`, when given, are the texts' vectors from an encoder with this model's
        `encoder.fingerprint` (the shadow passes the champion's), and encoding is skipped."""
        roles = roles if roles is not None else [None] * len(texts)
        embeddings = self.encoder.encode(texts) if embeddings is None else embeddings
        raw = self.raw_scores(embeddings, roles, texts)
        return Scored(score=raw, probability=apply_calibration(raw, self.meta["calibration"]), embeddings=embeddings)

    def neighbours(self, embeddings: np.ndarray, k: int = 3) -> list[list[dict]]:
        """The k most similar labeled examples for each row: the evidence a reviewer can check."""
        if k <= 0 or not len(self.index_vectors) or not len(embeddings):
            return [[] for _ in range(len(embeddings))]
        sims = embeddings @ self.index_vectors.T
        k = min(k, sims.shape[1])
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable"), axis=1)
        return [
            [{"text": self.index_rows[j]["text"], "label": int(self.index_labels[j]), "similarity": round(float(sims[i, j]), 3)} for j in row]
            for i, row in enumerate(top)
        ]
