"""The trained model: quality on data it never saw, the budget on traffic-like samples, behaviour."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import DEV_SET, ROOT
from training.calibrate import traffic_weights, weighted_rate
from training.evaluate import metrics, read_labeled


def score_rows(model, rows):
    return model.score([r["text"] for r in rows], [r.get("role") for r in rows])


def test_artifact_carries_everything_a_decision_needs(model):
    meta = model.meta
    t = meta["threshold"]
    assert t["budget"] == 0.05 and t["prior"] == 0.05
    assert t["sample_size"] > 500 and t["escalation_rate"] <= t["escalation_rate_ucb95"] < 0.1
    assert len(meta["corpus_hash"]) == 64
    assert meta["calibration"]["method"] in ("sigmoid", "isotonic")
    assert meta["encoder"]["quantization"] == "dynamic int8, per channel"
    assert len(model.index_rows) == len(model.index_vectors) > 500
    assert set(meta["cv"]) >= {"logreg", "linear_svm", "mlp"}


def test_test_split_quality(trained):
    m = trained.metrics
    assert m["roc_auc"] > 0.95
    assert m["recall_at_threshold"] > 0.6
    assert abs(m["escalation_rate_traffic"] - 0.05) <= 0.005  # the calibration sample itself


def test_escalation_rate_on_the_shipped_trace_is_within_one_point_of_budget(model):
    """The trace (data/trace.jsonl) is traffic written separately, ~5% critical, never used in training."""
    rows = [json.loads(line) for line in open(ROOT / "data" / "trace.jsonl")]
    s = score_rows(model, rows).score
    rate = float((s >= model.threshold).mean())
    assert abs(rate - 0.05) <= 0.01, rate


@pytest.mark.skipif(not DEV_SET.exists(), reason="../shared/eval-dev is not part of the project")
def test_reach_to_real_data(model):
    """Validation only: ADR titles against commit subjects from public repositories."""
    rows = read_labeled(DEV_SET)
    scored = score_rows(model, rows)
    y = np.array([r["label"] for r in rows])
    m = metrics(y, scored.score, scored.probability, model.threshold, 0.05, 0.05)
    assert m["roc_auc"] >= 0.85, m
    assert m["recall_at_budget_quantile"] >= 0.33, m


def test_probability_means_p_critical_under_the_traffic_prior(model):
    rows = [json.loads(line) for line in open(ROOT / "data" / "trace.jsonl")]
    p = score_rows(model, rows).probability
    y = np.array([r["label"] for r in rows])
    assert abs(p.mean() - y.mean()) < 0.02  # the trace is ~5% critical, like the prior


@pytest.mark.parametrize("text, role", [
    ("Should every team keep its own database, or do we move to one shared cluster?", "architect"),
    ("Pick the event streaming platform all services will publish to for the next five years", "architect"),
    ("what happens to tenant data if we go multi-region?", "orchestrator"),
])
def test_plain_critical_decisions_escalate(model, text, role):
    assert model.score([text], [role]).score[0] >= model.threshold


@pytest.mark.parametrize("text, role", [
    ("fix typo in the architecture doc", "implementer"),
    ("bump the kafka client to 3.7.1", "integrator"),
    ("rename DatabaseFactory to DbFactory", "implementer"),
    ("add a test for the event bus retry path", "critic"),
    ("use prettier for the admin UI", "implementer"),
])
def test_routine_work_in_architecture_vocabulary_does_not_escalate(model, text, role):
    assert model.score([text], [role]).score[0] < model.threshold


def test_score_does_not_depend_on_batch_composition(model):
    texts = ["Split the monolith?", "fix flaky test in checkout", "x " * 200]
    together = model.score(texts).score
    alone = np.array([model.score([t]).score[0] for t in texts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-12)


def test_served_numpy_heads_reproduce_the_scikit_learn_heads(model):
    """heads.npz is what the service runs; it must score exactly like the fitted estimators
    (evaluated in float64, as the arrays are: see escalation/compiled.py write_compiled)."""
    import joblib

    from escalation.model import features

    assert (model.folder / "heads.npz").exists()
    rows = [json.loads(line) for line in open(ROOT / "data" / "tasks.jsonl")][:300]
    texts, roles = [r["text"] for r in rows], [r["role"] for r in rows]
    embeddings = model.encoder.encode(texts)
    parts = []
    if (model.folder / "head.joblib").exists():
        parts.append(joblib.load(model.folder / "head.joblib").predict_proba(features(embeddings, roles).astype(np.float64))[:, 1])
    if (model.folder / "lexical.joblib").exists():
        parts.append(joblib.load(model.folder / "lexical.joblib").predict_proba(texts)[:, 1])
    np.testing.assert_allclose(model.raw_scores(embeddings, roles, texts), np.mean(parts, axis=0), rtol=0, atol=1e-9)


def test_local_registry_lookup_agrees_with_mlflow(trained):
    """The service finds the champion without mlflow; it must find the same version mlflow names."""
    from escalation import settings
    from escalation.registry import fetch, local_copy, version_for

    for alias in (settings.CHAMPION, settings.CHALLENGER):
        uri = f"models:/{settings.MODEL_NAME}@{alias}"
        fetched = fetch(uri)
        found = local_copy(uri)
        assert found is not None and found.version == version_for(uri) == fetched.version and found.folder == fetched.folder
    assert local_copy(f"models:/{settings.MODEL_NAME}@no-such-alias") is None
