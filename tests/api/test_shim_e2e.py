"""The routing shim end to end: the official openai client, fallback, headers, /route, the report."""
from __future__ import annotations

import csv
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import ROOT

GLM, SKY, OPUS = "z-ai/glm-4.5", "openrouter/sonoma-sky-alpha", "anthropic/claude-opus-4.1"
CRITICAL = "Should billing keep its own database or share the orders one?"
ROUTINE = "fix typo in the architecture doc"


@pytest.fixture
def client(service, fake_provider):
    """An OpenAI client on the shim; one good call first closes any circuit an earlier test left open."""
    c = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    time.sleep(1.1)  # past the test config's circuit cooldown
    fake_provider.reset()
    c.chat.completions.create(model="implementer", messages=[{"role": "user", "content": ROUTINE}])
    fake_provider.reset()
    return c


def test_openai_client_gets_a_completion_and_the_decision_headers(client, fake_provider):
    raw = client.chat.completions.with_raw_response.create(model="architect", messages=[{"role": "user", "content": ROUTINE}])
    completion = raw.parse()
    assert completion.choices[0].message.content == fake_provider.reply
    h = raw.headers
    assert h["x-escalation-decision"] == "standard" and h["x-model-used"] == GLM
    assert float(h["x-escalation-score"]) < float(h["x-escalation-threshold"])
    assert h["x-fallback-path"] == f"{GLM} (ok 200)"
    assert float(h["x-cost-usd"]) > 0


def test_critical_task_goes_to_opus(client, fake_provider):
    raw = client.chat.completions.with_raw_response.create(model="architect", messages=[
        {"role": "system", "content": "You are the architect agent."}, {"role": "user", "content": CRITICAL}])
    assert raw.headers["x-escalation-decision"] == "escalate"
    assert raw.headers["x-model-used"] == OPUS
    assert fake_provider.requests[-1]["model"] == OPUS


def report_costs(tmp_path, name) -> tuple[str, dict]:
    """Runs `escalation report --csv` and returns its text and {(model, role, field): value}."""
    csv_path = tmp_path / f"{name}.csv"
    out = subprocess.run([sys.executable, "-m", "cli.main", "report", "--hours", "1", "--csv", str(csv_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = {}
    for row in csv.DictReader(open(csv_path)):
        if row["table"] == "cost":
            role, field = row["subkey"].split(":")
            table[(row["key"], role, field)] = float(row["value"])
    return out.stdout, table


def test_when_the_first_model_fails_the_client_gets_the_next_and_the_report_shows_both(client, fake_provider, tmp_path):
    time.sleep(0.6)  # let the ledger writer flush earlier rows
    _, before = report_costs(tmp_path, "before")
    fake_provider.script(GLM, "500", "500")
    raw = client.chat.completions.with_raw_response.create(model="implementer", messages=[{"role": "user", "content": ROUTINE}])
    assert raw.parse().choices[0].message.content == fake_provider.reply
    assert raw.headers["x-model-used"] == SKY
    assert raw.headers["x-fallback-path"] == f"{GLM} (server_error 500) > {GLM} (server_error 500) > {SKY} (ok 200)"
    time.sleep(0.6)
    text, after = report_costs(tmp_path, "after")

    def delta(model, field):
        return after.get((model, "implementer", field), 0) - before.get((model, "implementer", field), 0)

    assert delta(GLM, "attempts") == 2 and delta(GLM, "ok") == 0 and delta(GLM, "cost_usd") == 0
    assert delta(SKY, "attempts") == 1 and delta(SKY, "ok") == 1
    assert delta(SKY, "cost_usd") == 0  # Sonoma Sky Alpha is priced at $0 in the shipped table
    assert delta(SKY, "input_tokens") > 0 and delta(SKY, "output_tokens") > 0
    assert "server_error" in text and "fallback rate" in text and "p50" in text


def test_streaming_through_the_shim_with_fallback_before_the_first_byte(client, fake_provider):
    fake_provider.script(GLM, "500", "drop")
    stream = client.chat.completions.create(model="critic", stream=True, messages=[{"role": "user", "content": ROUTINE}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == fake_provider.reply
    assert [r["model"] for r in fake_provider.requests] == [GLM, GLM, SKY]


def test_stream_cut_after_the_first_byte_surfaces_as_an_error(client, fake_provider):
    fake_provider.script(GLM, "cut")
    with pytest.raises(openai.APIError, match="closed the stream before it finished"):
        for _ in client.chat.completions.create(model="critic", stream=True, messages=[{"role": "user", "content": ROUTINE}]):
            pass


def test_provider_4xx_reaches_the_client_as_an_openai_error_with_the_path(client, fake_provider):
    fake_provider.script(GLM, "badrequest")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="implementer", messages=[{"role": "user", "content": ROUTINE}])
    assert err.value.body["message"] == "temperature must be between 0 and 2"
    assert err.value.body["path"] == [f"{GLM} (client_error 400)"]


def test_every_model_failing_is_a_502_listing_the_path(client, fake_provider):
    fake_provider.default = "503"
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="integrator", messages=[{"role": "user", "content": ROUTINE}])
    fake_provider.default = "ok"
    assert err.value.status_code == 502
    assert len(err.value.body["path"]) == 6 and err.value.body["code"] == "all_models_failed"


def test_route_returns_decision_and_chain_without_calling_a_provider(service, fake_provider):
    fake_provider.reset()
    r = httpx.post(f"{service.url}/route", json={"text": CRITICAL, "role": "architect"})
    assert r.status_code == 200
    body = r.json()
    assert body["escalate"] is True and body["chain"][0] == OPUS and body["chain"][1:] == [GLM, SKY, "meta-llama/llama-3.2-3b-instruct:free"]
    assert fake_provider.requests == []
    forbidden = httpx.post(f"{service.url}/route", json={"text": CRITICAL, "role": "architect"}, headers={"x-escalation-override": "forbid"}).json()
    assert forbidden["escalate"] is False and forbidden["chain"][0] == GLM and "forbidden by the caller" in forbidden["reasons"][0]
    forced = httpx.post(f"{service.url}/route", json={"text": ROUTINE, "role": "critic", "escalation": "force"}).json()
    assert forced["escalate"] is True and forced["chain"][0] == OPUS


@pytest.mark.parametrize("path, body, fragment", [
    ("/route", {"text": "x", "role": "boss"}, "unknown role 'boss'"),
    ("/route", {"text": "  ", "role": "critic"}, "text is empty"),
    ("/route", {"text": ["a"], "role": "critic"}, "text must be a string"),
    ("/route", {"text": "x", "role": "critic", "escalation": "maybe"}, "not one of auto, force, forbid"),
    ("/v1/chat/completions", {"model": "cto", "messages": [{"role": "user", "content": "hi"}]}, "unknown role 'cto'"),
    ("/v1/chat/completions", {"model": "critic", "messages": []}, "messages must be a non-empty list"),
    ("/v1/chat/completions", {"model": "critic", "messages": [{"role": "system", "content": "hi"}]}, "no user message"),
    ("/v1/chat/completions", {"model": "critic", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream must be true or false"),
])
def test_shim_bad_input_is_a_400_naming_the_problem(service, path, body, fragment):
    r = httpx.post(f"{service.url}{path}", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


@pytest.mark.parametrize("raw, fragment", [
    (b'{"text": "a", ', "malformed JSON"),
    (b'{"text": "caf\xe9", "role": "critic"}', "not UTF-8"),
    (b"[1, 2]", "expected a JSON object"),
    (b"", "request body is empty"),
])
def test_shim_malformed_bodies(service, raw, fragment):
    for path in ("/route", "/v1/chat/completions"):
        r = httpx.post(f"{service.url}{path}", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_admin_endpoints_need_the_token(service):
    assert httpx.post(f"{service.url}/admin/reload").status_code == 401
    assert httpx.post(f"{service.url}/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(f"{service.url}/admin/status", headers={"authorization": "Bearer test-admin-token"})
    assert ok.status_code == 200 and ok.json()["config_version"].startswith("test+")
    assert "test-admin-token" not in service.log.read_text()
