"""The trained heads as plain numpy arrays, so the service scores without importing scikit-learn.

Training fits scikit-learn estimators and keeps them (head.joblib, lexical.joblib) for anyone who
wants the objects. It also writes `heads.npz` (+ `lexical_vocabulary.json`): the same heads as
arrays, written only after they reproduced the estimators' predict_proba to 1e-9. Why bother:
importing scikit-learn costs the serving process about 2.5 s of start-up and 75 MB of memory
(it pulls scipy.stats and pandas), and its per-call input validation cost 3-5 ms a request, more
than the heads' arithmetic by a factor of a hundred.

Supported: logistic regression, a sigmoid-calibrated linear SVM or logistic regression
(CalibratedClassifierCV, averaged over its folds), a ReLU MLP with a logistic output, and a TF-IDF
(word n-grams, sublinear tf, l2 norm) + logistic regression pipeline. `compile_heads` returns None
for anything else, and the artifact then serves through scikit-learn.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

ARRAYS_FILE = "heads.npz"
VOCABULARY_FILE = "lexical_vocabulary.json"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ----- from scikit-learn objects to arrays (training side; imports scikit-learn) -----------------

def _semantic_arrays(head) -> dict | None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    if isinstance(head, LogisticRegression) and head.coef_.shape[0] == 1:
        return {"semantic_kind": np.array("linear"), "w": head.coef_[0], "b": head.intercept_[:1]}
    if isinstance(head, CalibratedClassifierCV) and all(
        isinstance(c.estimator, (LinearSVC, LogisticRegression)) and c.method == "sigmoid" and len(c.calibrators) == 1
        for c in head.calibrated_classifiers_
    ):
        ccs = head.calibrated_classifiers_
        return {
            "semantic_kind": np.array("calibrated_linear"),
            "W": np.stack([c.estimator.coef_[0] for c in ccs]).T,
            "b": np.array([c.estimator.intercept_[0] for c in ccs]),
            "a_cal": np.array([c.calibrators[0].a_ for c in ccs]),
            "b_cal": np.array([c.calibrators[0].b_ for c in ccs]),
        }
    if isinstance(head, MLPClassifier) and head.out_activation_ == "logistic" and head.activation == "relu":
        out = {"semantic_kind": np.array("mlp"), "layers": np.array(len(head.coefs_))}
        for i, (W, b) in enumerate(zip(head.coefs_, head.intercepts_)):
            out[f"W{i}"], out[f"b{i}"] = W, b
        return out
    return None


def _lexical_arrays(pipeline) -> tuple[dict, list[str]] | None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    steps = [step for _, step in getattr(pipeline, "steps", [])]
    if len(steps) != 2 or not isinstance(steps[0], TfidfVectorizer) or not isinstance(steps[1], LogisticRegression):
        return None
    vec, lr = steps
    plain_words = (vec.analyzer == "word" and vec.tokenizer is None and vec.preprocessor is None and vec.stop_words is None
                   and vec.strip_accents is None and re.compile(vec.token_pattern).groups == 0)
    if not (plain_words and vec.sublinear_tf and vec.use_idf and vec.norm == "l2" and not vec.binary and lr.coef_.shape[0] == 1):
        return None
    vocabulary = [""] * len(vec.vocabulary_)
    for term, column in vec.vocabulary_.items():
        vocabulary[column] = term
    arrays = {
        "lexical_idf": vec.idf_, "lexical_coef": lr.coef_[0], "lexical_intercept": lr.intercept_[:1],
        "lexical_ngram_range": np.array(vec.ngram_range), "lexical_lowercase": np.array(bool(vec.lowercase)),
        "lexical_token_pattern": np.array(vec.token_pattern),
    }
    return arrays, vocabulary


def compile_heads(semantic, lexical) -> tuple[dict, list[str] | None] | None:
    """Arrays for the heads training chose (either may be None), or None if one has no numpy form."""
    arrays: dict = {}
    vocabulary = None
    if semantic is not None:
        part = _semantic_arrays(semantic)
        if part is None:
            return None
        arrays.update(part)
    if lexical is not None:
        part = _lexical_arrays(lexical)
        if part is None:
            return None
        arrays.update(part[0])
        vocabulary = part[1]
    return arrays, vocabulary


def write_compiled(folder: Path, semantic, lexical, X_check: np.ndarray, texts_check: list[str]) -> bool:
    """Writes heads.npz (+ vocabulary) when the arrays reproduce the estimators on the check rows."""
    compiled = compile_heads(semantic, lexical)
    if compiled is None:
        return False
    arrays, vocabulary = compiled
    semantic_fn, lexical_fn = predictors(arrays, vocabulary)
    # The arrays score in float64. A head fitted on float32 features (the embeddings are float32)
    # keeps float32 weights, and scikit-learn then scores float32 rows in float32, 1e-7 away from
    # the same weights in float64; compared on float64 rows, scikit-learn computes what the arrays do.
    X_check = np.asarray(X_check, dtype=np.float64)
    if semantic is not None and not np.allclose(semantic_fn(X_check), semantic.predict_proba(X_check)[:, 1], rtol=0, atol=1e-9):
        return False
    texts_check = list(texts_check) + ["", "zzzz qqqq"]
    if lexical is not None and not np.allclose(lexical_fn(texts_check), lexical.predict_proba(texts_check)[:, 1], rtol=0, atol=1e-9):
        return False
    np.savez(folder / ARRAYS_FILE, **arrays)
    if vocabulary is not None:
        (folder / VOCABULARY_FILE).write_text(json.dumps(vocabulary, ensure_ascii=False))
    return True


# ----- from arrays to scoring functions (serving side; numpy only) -------------------------------

def load_compiled(folder: Path):
    """(semantic_fn, lexical_fn) from an artifact folder; either is None when that head is absent."""
    with np.load(folder / ARRAYS_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    vocabulary_file = folder / VOCABULARY_FILE
    vocabulary = json.loads(vocabulary_file.read_text(encoding="utf-8")) if vocabulary_file.exists() else None
    return predictors(arrays, vocabulary)


def predictors(arrays: dict, vocabulary: list[str] | None) -> tuple[Callable | None, Callable | None]:
    return _semantic_predictor(arrays), (_lexical_predictor(arrays, vocabulary) if vocabulary is not None else None)


def _semantic_predictor(a: dict) -> Callable[[np.ndarray], np.ndarray] | None:
    kind = str(a["semantic_kind"]) if "semantic_kind" in a else None
    if kind == "linear":
        w, b = a["w"].astype(np.float64), float(a["b"][0])
        return lambda X: _sigmoid(X @ w + b)
    if kind == "calibrated_linear":
        W, b, a_cal, b_cal = (a[k].astype(np.float64) for k in ("W", "b", "a_cal", "b_cal"))
        return lambda X: _sigmoid(-(a_cal * (X @ W + b) + b_cal)).mean(axis=1)
    if kind == "mlp":
        layers = [(a[f"W{i}"].astype(np.float64), a[f"b{i}"].astype(np.float64)) for i in range(int(a["layers"]))]

        def forward(X):
            h = np.asarray(X, dtype=np.float64)
            for W, b in layers[:-1]:
                h = np.maximum(h @ W + b, 0)
            W, b = layers[-1]
            return _sigmoid(h @ W + b)[:, 0]
        return forward
    return None


def _lexical_predictor(a: dict, vocabulary: list[str]) -> Callable[[list[str]], np.ndarray]:
    """TF-IDF + logistic regression as a sparse dot product: for each text, the sum over its terms
    of (1 + log count) * idf * coef, divided by the norm of the (1 + log count) * idf vector."""
    columns = {term: i for i, term in enumerate(vocabulary)}
    idf, coef = a["lexical_idf"].astype(np.float64), a["lexical_coef"].astype(np.float64)
    weight, intercept = idf * coef, float(a["lexical_intercept"][0])
    min_n, max_n = (int(n) for n in a["lexical_ngram_range"])
    lowercase, token = bool(a["lexical_lowercase"]), re.compile(str(a["lexical_token_pattern"]))

    def terms(text: str) -> list[str]:
        words = token.findall(text.lower() if lowercase else text)
        out = list(words) if min_n == 1 else []
        for n in range(max(min_n, 2), min(max_n, len(words)) + 1):
            out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        return out

    def predict(texts: list[str]) -> np.ndarray:
        z = np.full(len(texts), intercept)
        for i, text in enumerate(texts):
            counts: dict[int, int] = {}
            for term in terms(text):
                j = columns.get(term)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if counts:
                cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
                tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
                z[i] += float(tf @ weight[cols]) / float(np.sqrt(np.sum((tf * idf[cols]) ** 2)))
        return _sigmoid(z)
    return predict
