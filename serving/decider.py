"""From task text to a decision with reasons: model slot (hot reload), budget controller, overrides.

/classify, /route and /v1/chat/completions all decide through `Decider.decide()`, so the same text
gets the same score and the same kind of justification on every endpoint.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from escalation.budget import BudgetController
from escalation.config import RoutingConfig
from escalation.encoder import OnnxEncoder
from escalation.model import EscalationModel

log = logging.getLogger(__name__)


class ModelSlot:
    """Holds the model being served; `reload()` swaps in whatever the registry uri points at now."""

    def __init__(self, uri: str, loader=None):
        self.uri = uri
        self.model: EscalationModel | None = None
        self.error: str | None = None
        self._loader = loader or _load_from_registry
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.model.version if self.model else "none"

    def reload(self) -> tuple[str, str]:
        """Returns (old version, new version); keeps serving the old model if loading fails."""
        with self._lock:
            old = self.version
            try:
                model = self._loader(self.uri, current=self.model)
            except Exception as e:  # the service keeps its old model and says why
                self.error = f"{type(e).__name__}: {e}"
                log.error("model reload from %s failed: %s", self.uri, self.error)
                raise
            self.model, self.error = model, None
            return old, self.version


def _load_from_registry(uri: str, current: EscalationModel | None = None) -> EscalationModel:
    """The serving process never imports mlflow: the local cache first, else a child process."""
    from escalation.registry import fetch_in_subprocess, local_copy

    resolved = local_copy(uri) or fetch_in_subprocess(uri)
    if current is not None and resolved.version == current.version and resolved.folder == current.folder:
        return current
    return EscalationModel(resolved.folder, version=resolved.version)


@dataclass
class Decision:
    escalate: bool
    score: float
    probability: float
    threshold: float
    effective_threshold: float
    model_version: str
    reasons: list[str]
    neighbours: list[dict] = field(default_factory=list)
    controller: str | None = None  # None | held_back | boosted
    source: str = "model"  # model | override | classifier_failure
    embedding: np.ndarray | None = field(default=None, repr=False)  # the text's vector, for the shadow to reuse
    encoder: OnnxEncoder | None = field(default=None, repr=False)  # the encoder that made it


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class Decider:
    def __init__(self, config: RoutingConfig, slot: ModelSlot):
        self.slot = slot
        self.configure(config)

    def configure(self, config: RoutingConfig) -> None:
        self.config = config
        c = config.budget.controller
        self.controller = BudgetController(config.budget.share, c.mode, c.window, c.min_samples, c.gain)

    def decide(self, texts: list[str], roles: list[str | None]) -> list[Decision]:
        model = self.slot.model
        if model is None:
            return [self.failure(self.slot.error or "no model loaded") for _ in texts]
        try:
            scored = model.score(texts, roles)
            neighbours = model.neighbours(scored.embeddings, self.config.classifier.neighbours)
        except Exception as e:
            log.exception("scoring failed")
            return [self.failure(f"{type(e).__name__}: {e}") for _ in texts]
        decisions = [
            self._decide_one(model, float(s), float(p), n)
            for s, p, n in zip(scored.score, scored.probability, neighbours)
        ]
        for d, vector in zip(decisions, scored.embeddings):
            d.embedding, d.encoder = vector, model.encoder
        return decisions

    def _decide_one(self, model: EscalationModel, score: float, probability: float, neighbours: list[dict]) -> Decision:
        static = model.threshold
        escalate, effective, action = self.controller.decide(score, static)
        share = f"{model.budget:.0%}"
        reasons = [
            f"score {score:.3f} {'>=' if score >= static else '<'} threshold {static:.3f}, "
            f"calibrated to escalate {share} of traffic (P(critical) {probability:.2f})"
        ]
        window = f"realised rate {self.controller.realised_rate:.1%} over the last {len(self.controller._escalated)} decisions against a {share} budget"
        if action == "held_back":
            verb = "held back" if self.controller.mode == "hard" else "would hold back (soft mode, not applied)"
            reasons.append(f"budget controller {verb}: {window}; effective threshold {effective:.3f}")
        elif action == "boosted":
            verb = "escalated below the static threshold" if self.controller.mode == "hard" else "would escalate (soft mode, not applied)"
            reasons.append(f"budget controller {verb}: {window}; effective threshold {effective:.3f}")
        if neighbours:
            shown = "; ".join(
                f"\"{_short(n['text'])}\" ({'critical' if n['label'] else 'routine'}, similarity {n['similarity']:.2f})" for n in neighbours
            )
            reasons.append(f"most similar labeled examples: {shown}")
        return Decision(escalate, score, probability, static, effective, model.version, reasons, neighbours,
                        action if self.controller.mode != "off" else None)

    def failure(self, why: str) -> Decision:
        """What happens when the classifier cannot answer: the configured failure policy."""
        policy = self.config.escalation.on_classifier_failure
        escalate = policy == "fail_expensive"
        return Decision(escalate, float("nan"), float("nan"), float("nan"), float("nan"), self.slot.version,
                        [f"classifier unavailable ({why}); policy {policy}"], source="classifier_failure")

    def review_uncertainty(self, d: Decision) -> float:
        return abs(logit(d.score) - logit(d.threshold)) if d.source == "model" else float("inf")


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
