"""Numpy copies of the heads (escalation/compiled.py) against the scikit-learn objects they copy."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from escalation.compiled import compile_heads, load_compiled, predictors, write_compiled

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 20))
y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=300) > 0.8).astype(int)
WORDS = "shared database tenant region schema queue service rename typo bump test client migrate choose split".split()
TEXTS = [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(300)]
TEXT_Y = np.array([int("choose" in t or "tenant" in t) for t in TEXTS])


@pytest.mark.parametrize("head", [
    LogisticRegression(max_iter=500),
    CalibratedClassifierCV(LinearSVC(C=0.5), method="sigmoid", cv=3),
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
], ids=["logreg", "calibrated_svm", "mlp"])
def test_semantic_heads_match_predict_proba(head):
    head.fit(X, y)
    arrays, vocabulary = compile_heads(head, None)
    semantic, lexical = predictors(arrays, vocabulary)
    assert lexical is None
    np.testing.assert_allclose(semantic(X), head.predict_proba(X)[:, 1], rtol=0, atol=1e-9)


def test_lexical_pipeline_matches_including_unknown_and_empty_texts():
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2), LogisticRegression(C=4.0, max_iter=500))
    pipe.fit(TEXTS, TEXT_Y)
    arrays, vocabulary = compile_heads(None, pipe)
    semantic, lexical = predictors(arrays, vocabulary)
    assert semantic is None
    probe = TEXTS[:50] + ["", "zzz qqq", "Choose, CHOOSE the tenant-region!", "shared shared shared database"]
    np.testing.assert_allclose(lexical(probe), pipe.predict_proba(probe)[:, 1], rtol=0, atol=1e-9)


def test_unsupported_heads_are_not_compiled_and_nothing_is_written(tmp_path):
    gb = GradientBoostingClassifier(n_estimators=5).fit(X, y)
    assert compile_heads(gb, None) is None
    assert write_compiled(tmp_path, gb, None, X[:10], []) is False
    assert not (tmp_path / "heads.npz").exists()
    stemmed = make_pipeline(TfidfVectorizer(stop_words="english", sublinear_tf=True), LogisticRegression()).fit(TEXTS, TEXT_Y)
    assert compile_heads(None, stemmed) is None


def test_written_heads_load_back_and_score_the_same(tmp_path):
    head = LogisticRegression(max_iter=500).fit(X, y)
    pipe = make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=500)).fit(TEXTS, TEXT_Y)
    assert write_compiled(tmp_path, head, pipe, X[:20], TEXTS[:20]) is True
    semantic, lexical = load_compiled(tmp_path)
    np.testing.assert_allclose(semantic(X), head.predict_proba(X)[:, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(lexical(TEXTS), pipe.predict_proba(TEXTS)[:, 1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("head", [
    LogisticRegression(max_iter=500),
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
], ids=["logreg", "mlp"])
def test_heads_fitted_on_float32_features_are_written(tmp_path, head):
    """Training fits on float32 features (embeddings), so logistic regression and the MLP keep
    float32 weights and scikit-learn scores them in float32. Their numpy copies score the same
    weights in float64: they must still be written, and agree with the estimator evaluated in
    float64 to 1e-9 and with its own float32 arithmetic to float32 precision."""
    X32 = X.astype(np.float32)
    head.fit(X32, y)
    assert write_compiled(tmp_path, head, None, X32[:64], []) is True
    semantic, _ = load_compiled(tmp_path)
    np.testing.assert_allclose(semantic(X32), head.predict_proba(X32.astype(np.float64))[:, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(semantic(X32), head.predict_proba(X32)[:, 1], rtol=0, atol=1e-5)
