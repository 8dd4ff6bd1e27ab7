"""The provider chain against a real local HTTP fake: every fallback path and the circuit breaker."""
from __future__ import annotations

import asyncio
import json
import ssl
import subprocess

import pytest

from escalation.config import load_config
from serving.shim import ProviderChain, ProviderError
from tests.conftest import write_test_config

GLM, SKY, FREE, OPUS = "z-ai/glm-4.5", "openrouter/sonoma-sky-alpha", "meta-llama/llama-3.2-3b-instruct:free", "anthropic/claude-opus-4.1"
CHAIN = [GLM, SKY, FREE]
BODY = {"model": "architect", "messages": [{"role": "user", "content": "Should billing keep its own database?"}]}


LOOP = asyncio.new_event_loop()  # one loop for the module: the chain's HTTP client belongs to it


@pytest.fixture
def chain(fake_provider, tmp_path):
    fake_provider.reset()
    config, _ = load_config(write_test_config(tmp_path / "routing.yaml", fake_provider.base_url))
    chain = ProviderChain(config)
    yield chain
    run(chain.http.aclose())


def run(coro):
    return LOOP.run_until_complete(coro)


def complete(chain, models=CHAIN, body=BODY):
    rows = []
    data, attempts = run(chain.complete(models, body, rows.append))
    return data, attempts, rows


@pytest.mark.parametrize("failure, status", [
    ("500", "server_error"), ("503", "server_error"), ("429", "rate_limited"), ("timeout", "timeout"),
    ("drop", "connection"), ("malformed", "bad_response"),
])
def test_retryable_failure_retries_then_falls_back(chain, fake_provider, failure, status):
    fake_provider.script(GLM, failure, failure)
    data, attempts, rows = complete(chain)
    assert data["model"] == SKY
    assert [(a.model, a.status) for a in attempts] == [(GLM, status), (GLM, status), (SKY, "ok")]
    assert rows == attempts  # every attempt reached the ledger callback


def test_one_failure_is_retried_on_the_same_model(chain, fake_provider):
    fake_provider.script(GLM, "429")
    data, attempts, _ = complete(chain)
    assert data["model"] == GLM
    assert [a.status for a in attempts] == ["rate_limited", "ok"]


def test_context_length_error_moves_on_without_retry(chain, fake_provider):
    fake_provider.script(GLM, "context")
    _, attempts, _ = complete(chain)
    assert [(a.model, a.status) for a in attempts] == [(GLM, "context_length"), (SKY, "ok")]


def test_request_larger_than_a_context_window_skips_that_model(chain, fake_provider):
    huge = {"model": "architect", "messages": [{"role": "user", "content": "x " * 300_000}]}  # ~150k tokens
    _, attempts, _ = complete(chain, [GLM, SKY], huge)
    assert [(a.model, a.status) for a in attempts] == [(GLM, "context_length"), (SKY, "ok")]
    assert [r["model"] for r in fake_provider.requests] == [SKY]


def test_other_4xx_is_returned_as_is_without_fallback(chain, fake_provider):
    fake_provider.script(GLM, "badrequest")
    with pytest.raises(ProviderError) as err:
        complete(chain)
    e = err.value
    assert e.http_status == 400
    body = e.openai_error()["error"]
    assert body["message"] == "temperature must be between 0 and 2" and body["param"] == "temperature"
    assert body["path"] == [f"{GLM} (client_error 400)"]
    assert [r["model"] for r in fake_provider.requests] == [GLM]


def test_exhausted_chain_is_a_502_listing_the_path(chain, fake_provider):
    fake_provider.default = "500"
    with pytest.raises(ProviderError) as err:
        complete(chain, [GLM, SKY])
    assert err.value.http_status == 502
    assert err.value.openai_error()["error"]["path"] == [f"{GLM} (server_error 500)"] * 2 + [f"{SKY} (server_error 500)"] * 2


def test_circuit_opens_after_repeated_failures_and_closes_after_cooldown(chain, fake_provider):
    clock = [0.0]
    chain.circuit.clock = lambda: clock[0]
    fake_provider.script(GLM, "500", "500", "500")
    complete(chain)  # two failures on GLM, SKY answers
    complete(chain)  # third failure opens GLM's circuit
    assert chain.circuit.state(GLM) == "open"
    before = len(fake_provider.requests)
    _, attempts, _ = complete(chain)
    assert attempts[0].status == "circuit_open" and attempts[-1].model == SKY
    assert all(r["model"] != GLM for r in fake_provider.requests[before:])  # skipped, not called
    clock[0] += 1.5  # past the cooldown: one trial request, which succeeds and closes the circuit
    data, attempts, _ = complete(chain)
    assert data["model"] == GLM and chain.circuit.state(GLM) == "closed"


def test_cost_comes_from_the_price_table(chain, fake_provider):
    data, attempts, _ = complete(chain, [OPUS])
    usage = data["usage"]
    expected = (usage["prompt_tokens"] * 15 + usage["completion_tokens"] * 75) / 1e6
    assert attempts[-1].cost_usd == pytest.approx(expected)
    assert attempts[-1].input_tokens == usage["prompt_tokens"]


async def collect(chain, models, rows):
    result = await chain.stream(models, {**BODY, "stream": True}, rows.append)
    chunks = [c async for c in result.chunks]
    return result, b"".join(chunks).decode(), await result.finished


def test_stream_falls_back_before_the_first_byte(chain, fake_provider):
    fake_provider.script(GLM, "500", "drop")
    rows = []
    result, text, final = run(collect(chain, CHAIN, rows))
    assert result.model == SKY
    assert [a.status for a in result.attempts] == ["server_error", "connection"]
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices")) == fake_provider.reply
    assert final.status == "ok" and final.output_tokens > 0
    assert [r.status for r in rows] == ["server_error", "connection", "ok"]


def test_stream_cut_after_first_byte_ends_with_an_error_event(chain, fake_provider):
    fake_provider.script(GLM, "cut")
    rows = []
    result, text, final = run(collect(chain, CHAIN, rows))
    assert result.model == GLM  # no fallback once bytes went out
    last = [line for line in text.splitlines() if line.startswith("data:")][-1]
    assert json.loads(last[5:])["error"]["code"] == "stream_interrupted"
    assert final.status == "stream_cut"
    assert [r["model"] for r in fake_provider.requests] == [GLM]


def test_provider_calls_go_through_the_proxy_the_environment_names(fake_provider, tmp_path, monkeypatch):
    """HTTP_PROXY is honoured (as httpx did) and NO_PROXY exempts a host: the fake provider plays the proxy."""
    unreachable = "http://provider.invalid/v1"  # resolvable only by the proxy
    config, _ = load_config(write_test_config(tmp_path / "routing.yaml", unreachable))
    fake_provider.reset()
    monkeypatch.setenv("HTTP_PROXY", fake_provider.base_url.rsplit("/v1", 1)[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied, direct = ProviderChain(config), ProviderChain(config)
    try:
        data, attempts, _ = complete(proxied)
        assert data["model"] == GLM and [a.status for a in attempts] == ["ok"]
        assert fake_provider.requests[-1]["path"] == f"{unreachable}/chat/completions"

        monkeypatch.setenv("NO_PROXY", "provider.invalid")
        with pytest.raises(ProviderError) as err:
            complete(direct, [GLM])
        assert [a.status for a in err.value.attempts] == ["connection", "connection"]  # straight to the host, which does not resolve
    finally:
        run(proxied.http.aclose())
        run(direct.http.aclose())


def test_https_provider_certificates_are_checked_against_ssl_cert_file(tmp_path, monkeypatch):
    """A self-signed provider is refused (not in certifi's bundle) until SSL_CERT_FILE names its certificate."""
    from tests.fake_provider import FakeProvider

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    fake = FakeProvider(tls=tls).start()
    config, _ = load_config(write_test_config(tmp_path / "routing.yaml", fake.base_url))
    untrusted, trusted = ProviderChain(config), ProviderChain(config)  # each makes its TLS context on its first call
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(ProviderError) as err:
            complete(untrusted, [GLM])
        assert [a.status for a in err.value.attempts] == ["connection", "connection"]
        assert "certificate" in err.value.attempts[0].message.lower()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        data, attempts, _ = complete(trusted, [GLM])
        assert data["model"] == GLM and [a.status for a in attempts] == ["ok"]
    finally:
        run(untrusted.http.aclose())
        run(trusted.http.aclose())
        fake.stop()
