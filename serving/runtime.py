"""Everything the service does, without HTTP: decide, route, call providers, record, review, reload.

serving/service.py is a thin BentoML layer over one `Runtime`; tests and benchmarks can also drive a
Runtime directly. State that must survive a restart (ledger, labels, config versions) lives in the
database; the rest (controller window, circuit breakers, spend counter) is rebuilt at start.
"""
from __future__ import annotations

import logging
import math
import queue
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from escalation import settings, store
from escalation.config import ConfigError, RoutingConfig, load_config, parse_config
from escalation.schema import ROLES
from serving.errors import OVERRIDE_HEADER, RequestError
from serving.canary import Canary
from serving.decider import Decider, Decision, ModelSlot
from serving.ledger import LedgerWriter, new_id
from serving.metrics import get_metrics
from serving.shim import Attempt, ProviderChain, ProviderError, ProviderHTTP, StreamResult

log = logging.getLogger(__name__)

def redact(text: str) -> str:
    text = re.sub(r"[\w.+-]+@[\w-]+\.[\w.-]+", "<email>", text)
    text = re.sub(r"https?://\S+", "<url>", text)
    text = re.sub(r"\b[0-9a-fA-F]{16,}\b", "<hex>", text)
    return re.sub(r"\d", "#", text)


def utc_day_start() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


class SpendTracker:
    """Today's spend per model (UTC day), seeded from the ledger so a restart keeps the cap honest."""

    def __init__(self, eng):
        self.day = utc_day_start()
        self._spend: dict[str, float] = {}
        self._lock = threading.Lock()
        with eng.connect() as conn:
            rows = conn.execute(
                select(store.attempts.c.model, func.sum(store.attempts.c.cost_usd))
                .where(store.attempts.c.time >= self.day).group_by(store.attempts.c.model)
            ).all()
        self._spend = {m: float(c or 0) for m, c in rows}

    def add(self, model: str, cost: float) -> None:
        with self._lock:
            if utc_day_start() != self.day:
                self.day, self._spend = utc_day_start(), {}
            self._spend[model] = self._spend.get(model, 0.0) + cost

    def today(self, model: str) -> float:
        with self._lock:
            return 0.0 if utc_day_start() != self.day else self._spend.get(model, 0.0)


@dataclass
class Arm:
    """One routing configuration in service: the baseline, or a canary candidate."""

    name: str
    config: RoutingConfig
    config_version: str
    decider: Decider
    chain: ProviderChain


@dataclass
class RouteDecision:
    request_id: str
    role: str
    decision: Decision
    chain: list[str]
    arm: Arm
    downgraded: bool = False
    reasons: list[str] = field(default_factory=list)
    classify_ms: float = 0.0  # time spent scoring, reported in the Server-Timing header

    def as_json(self) -> dict:
        d = self.decision
        return {
            "request_id": self.request_id,
            "role": self.role,
            "escalate": d.escalate and not self.downgraded,
            "score": _num(d.score),
            "probability": _num(d.probability),
            "threshold": _num(d.threshold),
            "model_version": d.model_version,
            "config_version": self.arm.config_version,
            "arm": self.arm.name,
            "chain": self.chain,
            "reasons": self.reasons,
            "neighbours": d.neighbours,
        }


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


SHADOW_QUEUE = 10_000  # tasks waiting for the challenger before the shadow drops new ones


class Runtime:
    def __init__(self, config_path: str | Path | None = None, db_url: str | None = None, loader=None, start_ledger: bool = True):
        self.db_url = db_url or settings.db_url()
        self.eng = store.engine(self.db_url)
        journal = settings.VAR / "ledger" / f"journal-{uuid.uuid5(uuid.NAMESPACE_URL, self.db_url).hex[:12]}.jsonl"
        self.ledger = LedgerWriter(self.eng, journal)
        self.metrics = get_metrics()
        self.spend = SpendTracker(self.eng)
        self._loader = loader
        self.http = ProviderHTTP()  # one connection pool for every arm, kept across config swaps
        path = Path(config_path or settings.config_path())
        config, version = load_config(path)
        self.config_source = str(path)
        self.slot = ModelSlot(config.classifier.model_uri, loader=loader)
        try:
            self.slot.reload()
        except Exception:
            log.error("starting without a model: %s (decisions follow %s)", self.slot.error, config.escalation.on_classifier_failure)
        self.baseline = self._arm("baseline", config, version, self.slot)
        self._record_config(path.read_text(), str(path), version, "start")
        self.canary = Canary(self) if config.canary.enabled else None
        self.shadow_slot = self._shadow_slot(config)
        # Shadow scoring runs on its own thread, so it never adds to a response's latency. When it
        # falls behind, tasks are dropped from the shadow (and counted), never queued without bound.
        self._shadow_queue: queue.Queue = queue.Queue(maxsize=SHADOW_QUEUE)
        threading.Thread(target=self._shadow_worker, name="shadow", daemon=True).start()
        self._rng = random.Random()
        self._publish_info()
        if config.classifier.reload_poll_s > 0:
            threading.Thread(target=self._poll_registry, args=(config.classifier.reload_poll_s,), daemon=True).start()

    # ----- arms, config and model --------------------------------------------------------------
    def _arm(self, name: str, config: RoutingConfig, version: str, slot: ModelSlot) -> Arm:
        return Arm(name, config, version, Decider(config, slot), ProviderChain(config, self.http))

    @property
    def config(self) -> RoutingConfig:
        return self.baseline.config

    def _shadow_slot(self, config: RoutingConfig) -> ModelSlot | None:
        if not config.shadow.enabled:
            return None
        slot = ModelSlot(config.shadow.model_uri, loader=self._loader)
        try:
            slot.reload()
        except Exception:
            log.error("shadow model %s not loaded: %s", config.shadow.model_uri, slot.error)
        return slot

    def _record_config(self, content: str, source: str, version: str, reason: str) -> None:
        with self.eng.begin() as conn:
            conn.execute(store.config_versions.insert().values(
                version=version, loaded_at=store.utcnow(), source=source, content=content, reason=reason))

    def _publish_info(self) -> None:
        labels = (self.slot.version, self.baseline.config_version)
        previous = getattr(self, "_info_labels", None)
        if previous and previous != labels:
            self.metrics.model_info.labels(*previous).set(0)
        self._info_labels = labels
        m = self.metrics
        m.model_info.labels(*labels).set(1)
        # Series that only move on rare events exist from the start, so dashboards and alerts see 0.
        for action in ("held_back", "boosted"):
            m.controller_holds.labels(action, *labels)
        for role in ROLES:
            m.fallbacks.labels(role, *labels)
        m.canary_rollbacks.labels("none", *labels)
        for reason in ("borderline", "random"):
            m.review_queued.labels(reason, *labels)
        for model in self.config.models:
            m.circuit_open.labels(model).set(0)
        self.metrics.budget.labels(self.slot.version, self.baseline.config_version).set(self.config.budget.share)

    def event(self, kind: str, detail: dict) -> None:
        self.ledger.write("events", {"time": store.utcnow(), "kind": kind, "detail": detail})

    def reload_model(self) -> dict:
        old, new = self.slot.reload()
        if old != new:
            self.baseline.decider.controller.forget()
            self.event("model_reload", {"from": old, "to": new})
            self._publish_info()
        if self.shadow_slot:
            try:
                self.shadow_slot.reload()
            except Exception:
                log.error("shadow model %s not reloaded: %s", self.shadow_slot.uri, self.shadow_slot.error)
        return {"previous_version": old, "model_version": new, "changed": old != new}

    def _poll_registry(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            try:
                self.reload_model()
            except Exception:
                pass

    def apply_config(self, content: str, source: str, reason: str) -> dict:
        """Swaps the baseline config without a restart; the old one stays in history for rollback."""
        config, version = parse_config(content.encode(), source)
        old = self.baseline.config_version
        self.baseline = self._arm("baseline", config, version, self.slot)
        self.canary = Canary(self) if config.canary.enabled else None
        self.shadow_slot = self._shadow_slot(config)
        self._record_config(content, source, version, reason)
        self.event("config_change", {"from": old, "to": version, "reason": reason})
        self._publish_info()
        return {"previous_version": old, "config_version": version}

    def rollback_config(self, version: str | None = None) -> dict:
        """Back to `version`, or to the config loaded before the current one."""
        with self.eng.connect() as conn:
            rows = conn.execute(select(store.config_versions).order_by(store.config_versions.c.id.desc())).mappings().all()
        current = self.baseline.config_version
        if version is None:
            target = next((r for r in rows if r["version"] != current), None)
            if target is None:
                raise RequestError("no earlier config version to roll back to", 409)
        else:
            target = next((r for r in rows if r["version"] == version), None)
            if target is None:
                raise RequestError(f"unknown config version {version!r}; see `escalation config history`", 404)
        return self.apply_config(target["content"], target["source"], f"rollback to {target['version']}")

    # ----- deciding ----------------------------------------------------------------------------
    def _decide(self, arm: Arm, texts: list[str], roles: list[str | None]) -> tuple[list[Decision], float]:
        """The decisions and the seconds scoring took (observed in the latency histogram)."""
        started = time.perf_counter()
        decisions = arm.decider.decide(texts, roles)
        elapsed = time.perf_counter() - started
        self.metrics.classifier_latency.labels(self.slot.version, arm.config_version).observe(elapsed)
        return decisions, elapsed

    def observe_batch(self, size: int) -> None:
        self.metrics.batch_size.labels(self.slot.version, self.baseline.config_version).observe(size)

    def classify(self, texts: list[str], roles: list[str | None]) -> list[Decision]:
        decisions, _ = self._decide(self.baseline, texts, roles)
        for text, role, d in zip(texts, roles, decisions):
            self._record_decision(new_id(), "classify", text, role, d, self.baseline)
        return decisions

    def _record_decision(self, request_id: str, endpoint: str, text: str, role: str | None, d: Decision, arm: Arm,
                         escalate: bool | None = None) -> None:
        escalate = d.escalate if escalate is None else escalate
        m, v = self.metrics, (d.model_version, arm.config_version)
        decision_id = new_id()
        self.ledger.write("decisions", {
            "id": decision_id, "request_id": request_id, "time": store.utcnow(), "endpoint": endpoint, "role": role,
            "score": _num(d.score), "probability": _num(d.probability), "threshold": _num(d.threshold),
            "effective_threshold": _num(d.effective_threshold) if not math.isinf(d.effective_threshold) else None,
            "escalate": escalate, "reasons": d.reasons, "controller": d.controller, "model_version": d.model_version,
            "config_version": arm.config_version, "arm": arm.name,
        })
        m.decisions.labels(role or "none", "escalate" if escalate else "cheap", endpoint, *v).inc()
        m.escalation_rate.labels(*v).set(arm.decider.controller.realised_rate)
        if d.controller and arm.decider.controller.mode == "hard":
            m.controller_holds.labels(d.controller, *v).inc()
        if d.source == "model":
            self._maybe_queue_for_review(decision_id, text, role, d, arm)
            shadow = self.shadow_slot
            # After a promotion both aliases name one version: nothing to compare.
            if shadow and shadow.model is not None and shadow.version != d.model_version:
                try:
                    self._shadow_queue.put_nowait((text, role, d, arm))
                except queue.Full:
                    self.metrics.shadow_dropped.inc()

    def _maybe_queue_for_review(self, decision_id: str, text: str, role: str | None, d: Decision, arm: Arm) -> None:
        review = arm.config.review
        uncertainty = arm.decider.review_uncertainty(d)
        reason = "borderline" if uncertainty <= review.band else ("random" if self._rng.random() < review.sample_rate else None)
        if reason is None:
            return
        stored = {"full": text, "redacted": redact(text), "off": None}[review.store_text]
        self.ledger.write("review_items", {
            "id": decision_id, "created": store.utcnow(), "text": stored, "role": role, "score": d.score,
            "probability": d.probability, "threshold": d.threshold, "uncertainty": uncertainty, "reason": reason,
            "model_version": d.model_version,
        })
        self.metrics.review_queued.labels(reason, d.model_version, arm.config_version).inc()

    def _shadow_worker(self) -> None:
        """Scores queued tasks with the challenger, a batch at a time, and records the comparison."""
        while True:
            items = [self._shadow_queue.get()]
            while len(items) < 64 and not self._shadow_queue.empty():
                items.append(self._shadow_queue.get_nowait())
            slot = self.shadow_slot
            challenger = slot.model if slot else None
            if challenger is None:
                continue
            texts, roles, decided = [t for t, *_ in items], [r for _, r, *_ in items], [d for _, _, d, _ in items]
            # the champion's embeddings, when its encoder files are the challenger's: no second encode
            same_encoder = all(d.embedding is not None and d.encoder.fingerprint == challenger.encoder.fingerprint for d in decided)
            try:
                embeddings = np.stack([d.embedding for d in decided]) if same_encoder else None
                scores = challenger.score(texts, roles, embeddings).score
            except Exception:
                log.exception("shadow scoring failed")
                continue
            for (text, role, d, arm), s in zip(items, scores):
                s = float(s)
                challenger_escalates = s >= challenger.threshold
                self.ledger.write("shadow_scores", {
                    "time": store.utcnow(), "champion_version": d.model_version, "challenger_version": challenger.version,
                    "champion_score": d.score, "challenger_score": s, "champion_escalate": d.escalate,
                    "challenger_escalate": challenger_escalates,
                })
                agree = challenger_escalates == d.escalate
                self.metrics.shadow_agreement.labels(str(agree).lower(), challenger.version, d.model_version, arm.config_version).inc()

    def _pick_arm(self) -> Arm:
        if self.canary and self.canary.active and self._rng.random() < self.canary.share:
            return self.canary.arm
        return self.baseline

    def route(self, text: str, role: str, override: str | None = None, endpoint: str = "route") -> RouteDecision:
        if role not in ROLES:
            raise RequestError(f"unknown role {role!r}; use one of {', '.join(ROLES)}", param="role")
        override = (override or "auto").strip().lower()
        if override not in ("auto", "force", "forbid"):
            raise RequestError(f"escalation override {override!r} is not one of auto, force, forbid", param="escalation")
        arm = self._pick_arm()
        policy = arm.config.roles[role]
        if override == "force" and not policy.allow_force:
            raise RequestError(f"forcing escalation is not allowed for role {role} by config {arm.config_version}", 403, "escalation")
        if override == "forbid" and not policy.allow_forbid:
            raise RequestError(f"forbidding escalation is not allowed for role {role} by config {arm.config_version}", 403, "escalation")

        decisions, elapsed = self._decide(arm, [text], [role])
        d, classify_ms = decisions[0], elapsed * 1000
        reasons = list(d.reasons)
        escalate = d.escalate
        if override == "force":
            escalate = True
            reasons.insert(0, f"escalation forced by the caller ({OVERRIDE_HEADER}: force)")
        elif override == "forbid":
            escalate = False
            reasons.insert(0, f"escalation forbidden by the caller ({OVERRIDE_HEADER}: forbid)")
        downgraded = False
        critical = arm.config.escalation.critical_model
        if escalate and not arm.config.escalation.enabled:
            escalate, downgraded = False, True
            reasons.insert(0, f"escalation is disabled in config {arm.config_version}")
        elif escalate:
            spent, cap = self.spend.today(critical), arm.config.escalation.daily_spend_cap_usd
            if spent >= cap:
                escalate, downgraded = False, True
                reasons.insert(0, f"daily spend cap reached: ${spent:.2f} of ${cap:.2f} on {critical} today (UTC); downgraded to the standard chain")
        request_id = new_id()
        decision = Decision(**{**d.__dict__, "escalate": escalate, "reasons": reasons, "source": "override" if override != "auto" else d.source})
        self._record_decision(request_id, endpoint, text, role, decision, arm)
        return RouteDecision(request_id, role, decision, arm.config.chain_for(role, escalate), arm, downgraded, reasons, classify_ms)

    # ----- calling providers -------------------------------------------------------------------
    def _on_attempt(self, rd: RouteDecision):
        def record(a: Attempt) -> None:
            m, v = self.metrics, (rd.decision.model_version, rd.arm.config_version)
            self.ledger.write("attempts", {
                "request_id": rd.request_id, "time": store.utcnow(), "role": rd.role, "escalate": rd.decision.escalate,
                "score": _num(rd.decision.score), "model": a.model, "attempt": a.attempt, "status": a.status,
                "http_status": a.http_status, "latency_ms": round(a.latency_ms, 3), "input_tokens": a.input_tokens,
                "output_tokens": a.output_tokens, "cost_usd": a.cost_usd, "config_version": rd.arm.config_version, "arm": rd.arm.name,
            })
            self.spend.add(a.model, a.cost_usd)
            m.attempts.labels(a.model, a.status, *v).inc()
            m.provider_latency.labels(a.model, a.status, *v).observe(a.latency_ms / 1000)
            if a.cost_usd:
                m.spend.labels(a.model, rd.role, *v).inc(a.cost_usd)
            m.tokens.labels(a.model, rd.role, "input", *v).inc(a.input_tokens)
            m.tokens.labels(a.model, rd.role, "output", *v).inc(a.output_tokens)
            m.circuit_open.labels(a.model).set(1 if rd.arm.chain.circuit.state(a.model) == "open" else 0)
        return record

    async def complete(self, rd: RouteDecision, body: dict) -> tuple[dict, list[Attempt]]:
        started = time.perf_counter()
        try:
            data, attempts = await rd.arm.chain.complete(rd.chain, body, self._on_attempt(rd))
        except ProviderError as e:
            self._after_request(rd, e.attempts, ok=False, latency_s=time.perf_counter() - started)
            raise
        self._after_request(rd, attempts, ok=True, latency_s=time.perf_counter() - started)
        return data, attempts

    async def stream(self, rd: RouteDecision, body: dict) -> StreamResult:
        started = time.perf_counter()
        try:
            result = await rd.arm.chain.stream(rd.chain, body, self._on_attempt(rd))
        except ProviderError as e:
            self._after_request(rd, e.attempts, ok=False, latency_s=time.perf_counter() - started)
            raise
        self._after_request(rd, result.attempts + [Attempt(result.model, 0, "ok")], ok=True, latency_s=time.perf_counter() - started)
        return result

    def _after_request(self, rd: RouteDecision, attempts: list[Attempt], ok: bool, latency_s: float) -> None:
        fallback = ok and bool(attempts) and attempts[-1].model != rd.chain[0]
        if fallback:
            self.metrics.fallbacks.labels(rd.role, rd.decision.model_version, rd.arm.config_version).inc()
        if self.canary:
            self.canary.observe(rd.arm, ok=ok, fallback=fallback, latency_s=latency_s, escalate=rd.decision.escalate)

    # ----- review ------------------------------------------------------------------------------
    def submit_label(self, item_id: str | None, text: str | None, role: str | None, verdict: str, note: str | None, reviewer: str) -> dict:
        """Commits before returning, so an acknowledged label survives a crash right after."""
        if verdict not in ("critical", "routine", "skip"):
            raise RequestError(f"verdict {verdict!r} must be critical, routine or skip", param="verdict")
        if item_id:
            self.ledger.flush()
            with self.eng.connect() as conn:
                item = conn.execute(select(store.review_items).where(store.review_items.c.id == item_id)).mappings().first()
            if item is None:
                raise RequestError(f"no review item {item_id!r}", 404)
            if not item["text"]:
                raise RequestError("this item's text was not stored (review.store_text: off); it cannot be labeled", 409)
            text, role = item["text"], item["role"]
        if not text or not text.strip():
            raise RequestError("a label needs the task text", param="text")
        with self.eng.begin() as conn:
            conn.execute(store.labels.insert().values(item_id=item_id, text=text, role=role, verdict=verdict,
                                                      note=(note or None), reviewer=reviewer, created=store.utcnow()))
        return {"item_id": item_id, "verdict": verdict, "reviewer": reviewer, "stored": True}

    def status(self) -> dict:
        c = self.baseline.decider.controller
        return {
            "model_version": self.slot.version,
            "model_error": self.slot.error,
            "model_uri": self.slot.uri,
            "config_version": self.baseline.config_version,
            "config_source": self.config_source,
            "controller": {"mode": c.mode, "realised_rate": c.realised_rate, "held_back": c.held_back, "boosted": c.boosted,
                           "budget": self.config.budget.share},
            "canary": self.canary.status() if self.canary else None,
            "shadow_version": self.shadow_slot.version if self.shadow_slot else None,
            "ledger_failures": self.ledger.failures,
        }

    def close(self) -> None:
        self.ledger.close()
