"""/metrics after a short run carries every metric the runbook and dashboards rely on."""
from __future__ import annotations

import httpx
import openai

EXPECTED = [
    "escalation_decisions_total", "escalation_escalation_rate", "escalation_escalation_budget",
    "escalation_budget_controller_holds_total", "escalation_spend_usd_total", "escalation_tokens_total",
    "escalation_provider_attempts_total", "escalation_fallbacks_total", "escalation_circuit_open",
    "escalation_classifier_latency_seconds_bucket", "escalation_provider_latency_seconds_bucket",
    "escalation_canary_rollbacks_total", "escalation_model_info", "escalation_review_queued_total",
]


def test_metrics_after_a_short_run(service, fake_provider, model):
    fake_provider.reset()
    httpx.post(f"{service.url}/classify", json={"tasks": [{"text": "Split billing into its own service?", "role": "architect"}]})
    httpx.post(f"{service.url}/route", json={"text": "rename the cache module", "role": "implementer"})
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    fake_provider.script("z-ai/glm-4.5", "500", "500")
    client.chat.completions.create(model="architect", messages=[{"role": "user", "content": "Should billing keep its own database?"}])
    client.chat.completions.create(model="critic", messages=[{"role": "user", "content": "review the retry change in the payments client"}])
    text = httpx.get(f"{service.url}/metrics").text
    missing = [name for name in EXPECTED if name not in text]
    assert not missing, missing
    decisions = [line for line in text.splitlines() if line.startswith("escalation_decisions_total{")]
    assert any('endpoint="classify"' in line and f'model_version="{model.version}"' in line and 'config_version="test+' in line
               for line in decisions)
    assert any(line.startswith("escalation_provider_attempts_total{") and 'status="server_error"' in line for line in text.splitlines())
    assert "bentoml_service_request_total" in text or "bentoml_api_server_request_total" in text  # BentoML's own
