"""Shadow scoring: with `shadow.enabled`, the running service scores every task with the challenger
too, without acting on it; the rows, the agreement counter and `escalation promote` all report it.

A registry of its own (see `private_registry`): the session's model is v1 @champion, a weak model
(shuffled labels) is v2 @challenger, so the two disagree on some tasks and agree on others.
"""
from __future__ import annotations

import math
import os
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from escalation import store
from tests.conftest import ADMIN_TOKEN, gate_runs, start_service, stop_service, write_test_config
from training.promote import ShadowStats, promote, shadow_stats

TASKS = [
    ("Should billing keep its own Postgres database or share the orders cluster?", "architect"),
    ("Pick the message broker every team will publish domain events to", "architect"),
    ("One schema per tenant or a tenant_id column everywhere?", "orchestrator"),
    ("Move tenant data for the EU customers into a separate region and database", "critic"),
    ("Agree on one identity provider for staff tools and the customer portal", None),
    ("Replace nightly batch exports with change data capture for all downstream consumers", "integrator"),
    ("bump the kafka client to 3.7", "implementer"),
    ("fix the flaky checkout test that times out on CI", "implementer"),
    ("rename OrderManager to OrderService in the admin module", None),
    ("add pagination to the invoices list endpoint", "implementer"),
    ("review the PR that adds retries to the shipping client", "critic"),
    ("merge the release branch for 4.2 after the smoke tests pass", "integrator"),
    ("update the onboarding doc with the new VPN steps", "orchestrator"),
    ("add an index on orders.created_at for the monthly report", None),
]


def shadow_counter(url: str) -> dict[tuple[str, str, str], float]:
    """escalation_shadow_decisions_total by (agree, challenger_version, model_version)."""
    out: dict = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "escalation_shadow_decisions":
            for s in family.samples:
                if s.name == "escalation_shadow_decisions_total":
                    key = (s.labels["agree"], s.labels["challenger_version"], s.labels["model_version"])
                    out[key] = out.get(key, 0.0) + s.value
    return out


def shadow_rows(db_url: str, expected: int, timeout_s: float = 15) -> list[dict]:
    """The shadow rows once the ledger's background writer has inserted them all."""
    deadline = time.time() + timeout_s
    while True:
        with store.engine(db_url).connect() as conn:
            rows = [dict(r) for r in conn.execute(select(store.shadow_scores)).mappings().all()]
        if len(rows) >= expected or time.time() > deadline:
            return rows
        time.sleep(0.2)


def process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in out for p in process_tree(int(child))]


def test_shadow_scores_the_challenger_without_acting_on_it(private_registry, fake_provider, tmp_path):
    reg = private_registry
    champion, challenger = reg.models[reg.champion], reg.models[reg.challenger]
    texts, roles = [t for t, _ in TASKS], [r for _, r in TASKS]
    champion_scores = champion.score(texts, roles).score
    challenger_scores = challenger.score(texts, roles).score
    assert not all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(champion_scores, challenger_scores))  # they do differ

    config = write_test_config(tmp_path / "routing.yaml", fake_provider.base_url, **{"shadow.enabled": True})
    log = open(tmp_path / "service.log", "w")
    # its own BentoML home, so starting it does not empty the session service's metrics folder
    env = dict(reg.env, BENTOML_HOME=str(tmp_path / "bentoml"))
    proc, url = start_service(config, tmp_path / "service.log", log, env=env)
    try:
        status = httpx.get(f"{url}/admin/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert (status["model_version"], status["shadow_version"]) == (reg.champion, reg.challenger), status
        assert shadow_counter(url) == {}

        answers = []
        for start in range(0, len(TASKS), 5):  # a few requests, not one batch
            batch = [{"text": t, "role": r} if r else {"text": t} for t, r in TASKS[start:start + 5]]
            r = httpx.post(f"{url}/classify", json={"tasks": batch}, timeout=60)
            assert r.status_code == 200, r.text
            answers += r.json()

        # decided by the champion alone: its version, its scores, its threshold
        assert [a["model_version"] for a in answers] == [reg.champion] * len(TASKS)
        for a, s in zip(answers, champion_scores):
            assert math.isclose(a["score"], s, abs_tol=1e-5) and math.isclose(a["threshold"], champion.threshold, rel_tol=1e-9)

        # one shadow row per task, scored by the challenger with its own threshold
        rows = shadow_rows(reg.db_url, len(TASKS))
        assert len(rows) == len(TASKS)
        assert {(r["champion_version"], r["challenger_version"]) for r in rows} == {(reg.champion, reg.challenger)}
        by_champion_score = sorted(rows, key=lambda r: r["champion_score"])
        order = sorted(range(len(TASKS)), key=lambda i: answers[i]["score"])
        for i, row in zip(order, by_champion_score):
            assert math.isclose(row["champion_score"], answers[i]["score"], abs_tol=1e-9)
            assert row["champion_escalate"] == answers[i]["escalate"]
            assert math.isclose(row["challenger_score"], challenger_scores[i], abs_tol=1e-5)
            assert row["challenger_escalate"] == bool(challenger_scores[i] >= challenger.threshold)
        agree = sum(r["champion_escalate"] == r["challenger_escalate"] for r in rows)
        assert 0 < agree < len(rows), "traffic where the two models both agree and disagree"

        # the agreement counter moved by exactly those decisions
        counter = shadow_counter(url)
        assert counter == {("true", reg.challenger, reg.champion): agree, ("false", reg.challenger, reg.champion): len(rows) - agree}

        # a challenger in shadow is served from its numpy arrays like the champion: no scikit-learn
        for pid in process_tree(proc.pid):
            assert "/sklearn/" not in open(f"/proc/{pid}/maps").read(), f"process {pid} loaded scikit-learn"
    finally:
        stop_service(proc, log)

    # what `escalation promote` reads and prints, and logs with the gate's run
    escalated = sum(r["challenger_escalate"] for r in rows)
    assert shadow_stats(reg.challenger, reg.champion) == ShadowStats(len(rows), agree / len(rows), escalated / len(rows))
    # rows from a time the challenger was shadowed against another champion (itself, after a
    # promotion that was rolled back) say nothing about this champion: the report leaves them out
    with store.engine(reg.db_url).begin() as conn:
        conn.execute(store.shadow_scores.insert(), [
            {"id": f"self-{i}", "time": store.utcnow(), "champion_version": reg.challenger, "challenger_version": reg.challenger,
             "champion_score": 0.9, "challenger_score": 0.9, "champion_escalate": True, "challenger_escalate": True}
            for i in range(len(rows))])
    assert shadow_stats(reg.challenger) == ShadowStats(2 * len(rows), (agree + len(rows)) / (2 * len(rows)),
                                                       (escalated + len(rows)) / (2 * len(rows)))
    lines: list[str] = []
    promote(corpus=reg.gate_corpus, log=lines.append)
    assert f"shadow agreement with the champion: {agree / len(rows):.1%} of {len(rows)} live decisions" in lines, lines
    (run,) = gate_runs()
    assert run.data.metrics["shadow_decisions"] == len(rows)
    assert math.isclose(run.data.metrics["shadow_agreement"], agree / len(rows))
    assert math.isclose(run.data.metrics["shadow_escalation_rate"], escalated / len(rows))


def test_shadow_reuses_the_champions_embeddings_when_the_encoders_match(trained, fake_provider, tmp_path):
    """A challenger with the champion's encoder files is scored from the champion's embeddings (no
    second encode, same scores); one with another encoder encodes the texts itself."""
    from escalation.model import EscalationModel
    from serving.runtime import Runtime

    champion, challenger = EscalationModel(trained.folder, version="1"), EscalationModel(trained.folder, version="2")
    encoded: list[int] = []
    encode = challenger.encoder.encode
    challenger.encoder.encode = lambda texts: encoded.append(len(texts)) or encode(texts)
    config = write_test_config(tmp_path / "routing.yaml", fake_provider.base_url, **{"shadow.enabled": True})
    db_url = f"sqlite:///{tmp_path / 'escalation.db'}"
    rt = Runtime(config, db_url=db_url, loader=lambda uri, current=None: challenger if uri.endswith("@challenger") else champion)
    texts, roles = [t for t, _ in TASKS], [r for _, r in TASKS]
    try:
        assert challenger.encoder.fingerprint == champion.encoder.fingerprint
        rt.classify(texts, roles)
        rows = wait_for_shadow_rows(rt, db_url, len(TASKS))
        assert encoded == []  # scored from the champion's vectors
        expected = challenger.score(texts, roles, champion.encoder.encode(texts)).score
        # equal up to summation order: the shadow batches whatever has queued, so its batch shapes vary
        assert sorted(r["challenger_score"] for r in rows) == pytest.approx(sorted(float(s) for s in expected), rel=1e-9, abs=1e-12)

        challenger.encoder.fingerprint = "another-encoder"
        rt.classify(texts, roles)
        wait_for_shadow_rows(rt, db_url, 2 * len(TASKS))
        assert sum(encoded) == len(TASKS)  # it encoded them itself
    finally:
        rt.close()


def wait_for_shadow_rows(rt, db_url: str, expected: int) -> list[dict]:
    deadline = time.time() + 15
    while True:
        rt.ledger.flush()
        rows = shadow_rows(db_url, 0)
        if len(rows) >= expected or time.time() > deadline:
            assert len(rows) == expected, rows
            return rows
        time.sleep(0.1)
