"""The project's Prometheus metrics, served on BentoML's own /metrics beside its HTTP metrics.

BentoML 1.4 deprecates `bentoml.metrics` in favour of `prometheus_client` used directly, created
after the worker has set PROMETHEUS_MULTIPROC_DIR; so this class imports prometheus_client in
__init__, which the service calls from its own __init__. Every series carries the model and config
version, so a dashboard can compare a canary or a new champion with what it replaced.
"""
from __future__ import annotations

PREFIX = "escalation_"
_instance = None


def get_metrics() -> "Metrics":
    """One set per process: prometheus_client refuses to register a metric name twice."""
    global _instance
    if _instance is None:
        _instance = Metrics()
    return _instance


class Metrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        v = ["model_version", "config_version"]
        self.decisions = Counter(PREFIX + "decisions_total", "Decisions by role and outcome", ["role", "outcome", "endpoint", *v])
        self.escalation_rate = Gauge(PREFIX + "escalation_rate", "Realised escalation rate over the controller window", v,
                                     multiprocess_mode="mostrecent")
        self.budget = Gauge(PREFIX + "escalation_budget", "Configured escalation budget (share of traffic)", v, multiprocess_mode="mostrecent")
        self.controller_holds = Counter(PREFIX + "budget_controller_holds_total", "Tasks the controller held back or boosted", ["action", *v])
        self.spend = Counter(PREFIX + "spend_usd_total", "Provider spend in USD", ["model", "role", *v])
        self.tokens = Counter(PREFIX + "tokens_total", "Provider tokens", ["model", "role", "direction", *v])
        self.attempts = Counter(PREFIX + "provider_attempts_total", "Provider attempts by status", ["model", "status", *v])
        self.fallbacks = Counter(PREFIX + "fallbacks_total", "Requests answered by a model other than the first in their chain", ["role", *v])
        self.circuit_open = Gauge(PREFIX + "circuit_open", "1 while a model's circuit is open", ["model"], multiprocess_mode="mostrecent")
        self.classifier_latency = Histogram(PREFIX + "classifier_latency_seconds", "Time to score a batch", v,
                                            buckets=(0.002, 0.004, 0.006, 0.008, 0.012, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.batch_size = Histogram(PREFIX + "classify_batch_size", "Tasks per scored /classify batch (concurrent requests merged)", v,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.provider_latency = Histogram(PREFIX + "provider_latency_seconds", "Provider call latency", ["model", "status", *v],
                                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.canary_rollbacks = Counter(PREFIX + "canary_rollbacks_total", "Automatic canary rollbacks", ["reason", *v])
        self.model_info = Gauge(PREFIX + "model_info", "1 for the model and config versions being served", v, multiprocess_mode="mostrecent")
        self.review_queued = Counter(PREFIX + "review_queued_total", "Decisions queued for review", ["reason", *v])
        self.shadow_agreement = Counter(PREFIX + "shadow_decisions_total", "Shadow (challenger) decisions by agreement", ["agree", "challenger_version", *v])
        self.shadow_dropped = Counter(PREFIX + "shadow_dropped_total", "Tasks the shadow skipped because the challenger fell behind")
