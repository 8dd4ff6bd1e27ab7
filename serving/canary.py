"""Canary: a candidate config and/or model takes a share of routing traffic and is rolled back
automatically when it does worse than the baseline by more than the configured margins.

Compared over the most recent requests of each arm: error rate (the chain exhausted), fallback rate
(answered by a model other than the first), median latency, escalation rate. The candidate is judged
once it has `min_requests` requests; a breach turns the canary off, writes an event and bumps
`escalation_canary_rollbacks_total{reason=...}`.
"""
from __future__ import annotations

import logging
import statistics
import threading
from collections import deque
from pathlib import Path

from escalation.config import load_config

log = logging.getLogger(__name__)


class ArmStats:
    def __init__(self, size: int = 200):
        self.outcomes: deque[tuple[bool, bool, float, bool]] = deque(maxlen=size)

    def add(self, ok: bool, fallback: bool, latency_s: float, escalate: bool) -> None:
        self.outcomes.append((ok, fallback, latency_s, escalate))

    def summary(self) -> dict:
        n = len(self.outcomes)
        if not n:
            return {"requests": 0}
        return {
            "requests": n,
            "error_rate": sum(not o[0] for o in self.outcomes) / n,
            "fallback_rate": sum(o[1] for o in self.outcomes) / n,
            "latency_p50_s": statistics.median(o[2] for o in self.outcomes),
            "escalation_rate": sum(o[3] for o in self.outcomes) / n,
        }


class Canary:
    def __init__(self, runtime):
        from serving.decider import ModelSlot

        spec = runtime.config.canary
        self.spec, self.runtime = spec, runtime
        self.share = spec.share
        if spec.config:
            path = Path(spec.config)
            if not path.is_absolute():
                path = Path(runtime.config_source).parent / path
            config, version = load_config(path)
        else:
            config, version = runtime.config, runtime.baseline.config_version
        slot = runtime.slot
        if spec.model_uri:
            slot = ModelSlot(spec.model_uri, loader=runtime._loader)
            slot.reload()
        self.arm = runtime._arm("canary", config, f"canary:{version}", slot)
        self.active = True
        self.rolled_back: dict | None = None
        self.stats = {"baseline": ArmStats(), "canary": ArmStats()}
        self._lock = threading.Lock()

    def observe(self, arm, ok: bool, fallback: bool, latency_s: float, escalate: bool) -> None:
        with self._lock:
            self.stats[arm.name].add(ok, fallback, latency_s, escalate)
            if arm.name == "canary" and self.active:
                breach = self.breach()
                if breach:
                    self.rollback(breach)

    def breach(self) -> str | None:
        c, b = self.stats["canary"].summary(), self.stats["baseline"].summary()
        if c["requests"] < self.spec.min_requests:
            return None
        base = b if b["requests"] else {"error_rate": 0.0, "fallback_rate": 0.0, "latency_p50_s": None, "escalation_rate": self.runtime.config.budget.share}
        if c["error_rate"] - base["error_rate"] > self.spec.max_error_rate_delta:
            return f"error_rate {c['error_rate']:.2f} vs baseline {base['error_rate']:.2f}"
        if c["fallback_rate"] - base["fallback_rate"] > self.spec.max_fallback_rate_delta:
            return f"fallback_rate {c['fallback_rate']:.2f} vs baseline {base['fallback_rate']:.2f}"
        if base["latency_p50_s"] and c["latency_p50_s"] > self.spec.max_latency_ratio * base["latency_p50_s"]:
            return f"latency_p50 {c['latency_p50_s'] * 1000:.0f} ms vs baseline {base['latency_p50_s'] * 1000:.0f} ms"
        if abs(c["escalation_rate"] - base["escalation_rate"]) > self.spec.max_escalation_rate_delta:
            return f"escalation_rate {c['escalation_rate']:.3f} vs baseline {base['escalation_rate']:.3f}"
        return None

    def rollback(self, reason: str) -> None:
        self.active = False
        self.rolled_back = {"reason": reason, "after_requests": self.stats["canary"].summary()["requests"]}
        kind = reason.split(" ", 1)[0]
        log.warning("canary %s rolled back: %s", self.arm.config_version, reason)
        self.runtime.event("canary_rollback", {"candidate": self.arm.config_version, "reason": reason,
                                               "canary": self.stats["canary"].summary(), "baseline": self.stats["baseline"].summary()})
        self.runtime.metrics.canary_rollbacks.labels(kind, self.runtime.slot.version, self.runtime.baseline.config_version).inc()

    def status(self) -> dict:
        return {"active": self.active, "share": self.share, "candidate": self.arm.config_version, "rolled_back": self.rolled_back,
                "stats": {k: v.summary() for k, v in self.stats.items()}}
