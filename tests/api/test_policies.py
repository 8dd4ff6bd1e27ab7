"""Routing policies on a Runtime (the service's core, without HTTP) against the fake provider:
overrides per role, the daily spend cap, the classifier failure policy, canary rollback, config
rollback. Each test gets its own database."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from escalation import store
from serving.runtime import RequestError, Runtime
from tests.conftest import write_test_config

GLM, OPUS = "z-ai/glm-4.5", "anthropic/claude-opus-4.1"
CRITICAL = "Should billing keep its own database or share the orders one?"
ROUTINE = "fix typo in the architecture doc"
BODY = {"model": "architect", "messages": [{"role": "user", "content": CRITICAL}]}
LOOP = asyncio.new_event_loop()


@pytest.fixture
def make_runtime(trained, fake_provider, tmp_path):
    made = []

    def make(**changes):
        fake_provider.reset()
        config = write_test_config(tmp_path / f"routing-{len(made)}.yaml", fake_provider.base_url, **changes)
        rt = Runtime(config, db_url=f"sqlite:///{tmp_path / f'db-{len(made)}.db'}")
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def call(rt, text=CRITICAL, role="architect", override=None):
    rd = rt.route(text, role, override, endpoint="chat")
    data, attempts = LOOP.run_until_complete(rt.complete(rd, {**BODY, "model": role, "messages": [{"role": "user", "content": text}]}))
    return rd, attempts


def test_overrides_follow_the_per_role_policy(make_runtime):
    rt = make_runtime(**{"roles.implementer.allow_force": False})
    assert rt.route(ROUTINE, "critic", "force").chain[0] == OPUS
    assert rt.route(CRITICAL, "architect", "forbid").chain[0] == GLM
    with pytest.raises(RequestError) as err:
        rt.route(ROUTINE, "implementer", "force")
    assert err.value.status == 403 and "not allowed for role implementer" in str(err.value)


def test_daily_spend_cap_downgrades_escalations_with_a_reason(make_runtime):
    rt = make_runtime(**{"escalation.daily_spend_cap_usd": 0.0001})
    first, attempts = call(rt)
    assert first.chain[0] == OPUS and attempts[-1].model == OPUS and attempts[-1].cost_usd > 0.0001
    second, attempts = call(rt)
    assert second.downgraded and second.chain[0] == GLM and attempts[-1].model == GLM
    assert second.reasons[0].startswith("daily spend cap reached: $0.00") and "downgraded" in second.reasons[0]
    assert second.as_json()["escalate"] is False


def test_spend_so_far_today_survives_a_restart(make_runtime, tmp_path):
    rt = make_runtime(**{"escalation.daily_spend_cap_usd": 0.0001})
    call(rt)
    rt.ledger.flush()
    again = Runtime(rt.config_source, db_url=rt.db_url)
    try:
        assert again.spend.today(OPUS) > 0.0001
        assert again.route(CRITICAL, "architect").downgraded
    finally:
        again.close()


@pytest.mark.parametrize("policy, escalate", [("fail_cheap", False), ("fail_expensive", True)])
def test_classifier_failure_policy(make_runtime, policy, escalate):
    rt = make_runtime(**{"escalation.on_classifier_failure": policy, "classifier.model_uri": "models:/escalation-classifier/999"})
    assert rt.slot.model is None
    rd = rt.route(ROUTINE, "critic")
    assert rd.decision.escalate is escalate
    assert rd.chain[0] == (OPUS if escalate else GLM)
    assert f"classifier unavailable" in rd.reasons[0] and policy in rd.reasons[0]


def test_fail_expensive_still_respects_the_spend_cap(make_runtime):
    rt = make_runtime(**{"escalation.on_classifier_failure": "fail_expensive", "escalation.daily_spend_cap_usd": 0.0,
                         "classifier.model_uri": "models:/escalation-classifier/999"})
    rd = rt.route(ROUTINE, "critic")
    assert rd.downgraded and rd.chain[0] == GLM


def test_every_attempt_is_a_ledger_row(make_runtime, fake_provider):
    rt = make_runtime()
    fake_provider.script(OPUS, "429")
    rd, attempts = call(rt)
    rt.ledger.flush()
    with rt.eng.connect() as conn:
        rows = conn.execute(select(store.attempts).where(store.attempts.c.request_id == rd.request_id)
                            .order_by(store.attempts.c.attempt)).mappings().all()
    assert [(r["model"], r["attempt"], r["status"]) for r in rows] == [(OPUS, 1, "rate_limited"), (OPUS, 2, "ok")]
    ok = rows[-1]
    assert ok["role"] == "architect" and ok["escalate"] is True and ok["score"] > 0.5
    assert ok["input_tokens"] > 0 and ok["output_tokens"] > 0 and ok["cost_usd"] > 0 and ok["latency_ms"] > 0
    with rt.eng.connect() as conn:
        decision = conn.execute(select(store.decisions).where(store.decisions.c.request_id == rd.request_id)).mappings().one()
    assert decision["escalate"] is True and decision["reasons"][0].startswith("score ")


def test_canary_with_a_failing_provider_is_rolled_back_automatically(make_runtime, tmp_path, fake_provider):
    from tests.fake_provider import FakeProvider

    broken = FakeProvider().start()
    broken.default = "500"
    try:
        candidate = write_test_config(tmp_path / "candidate.yaml", broken.base_url, version="candidate")
        rt = make_runtime(**{"canary.enabled": True, "canary.share": 0.5, "canary.config": str(candidate), "canary.min_requests": 10})
        served = 0
        for i in range(200):
            rd = rt.route(ROUTINE, "implementer", endpoint="chat")
            try:
                LOOP.run_until_complete(rt.complete(rd, {"model": "implementer", "messages": [{"role": "user", "content": ROUTINE}]}))
            except Exception:
                pass
            served += 1
            if not rt.canary.active:
                break
        status = rt.canary.status()
        assert not status["active"], status
        assert status["rolled_back"]["reason"].startswith("error_rate")
        assert status["rolled_back"]["after_requests"] == 10  # judged as soon as it had min_requests
        assert served < 60
        rt.ledger.flush()
        with rt.eng.connect() as conn:
            events = conn.execute(select(store.events).where(store.events.c.kind == "canary_rollback")).mappings().all()
        assert len(events) == 1 and events[0]["detail"]["candidate"].startswith("canary:candidate+")
        # after the rollback every request takes the baseline
        assert all(rt.route(ROUTINE, "implementer").arm.name == "baseline" for _ in range(20))
    finally:
        broken.stop()


def test_config_rollback_without_restart(make_runtime, tmp_path):
    rt = make_runtime()
    first = rt.baseline.config_version
    changed = write_test_config(tmp_path / "v2.yaml", rt.config.providers["openrouter"].base_url, version="v2",
                                **{"roles.critic.chain": ["openrouter/sonoma-sky-alpha"]})
    rt.apply_config(changed.read_text(), str(changed), "test change")
    assert rt.route(ROUTINE, "critic").chain == ["openrouter/sonoma-sky-alpha"]
    back = rt.rollback_config()
    assert back["config_version"] == first
    assert rt.route(ROUTINE, "critic").chain[0] == GLM
    with pytest.raises(RequestError, match="unknown config version"):
        rt.rollback_config("nope")
