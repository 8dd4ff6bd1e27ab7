"""The review queue as the page shows it: pending items (escalation.store.pending_for) plus the
nearest labeled examples from the model being served, so a reviewer sees the evidence."""
from __future__ import annotations

from escalation import store


def pending_items(runtime, reviewer: str, limit: int) -> list[dict]:
    runtime.ledger.flush()  # items still in the journal become visible now
    out = [
        {k: item[k] for k in ("id", "text", "role", "score", "probability", "threshold", "reason", "model_version", "disputed", "labels")}
        for item in store.pending_for(runtime.eng, reviewer)[:limit]
    ]
    model = runtime.slot.model
    if model is not None and out:
        vectors = model.encoder.encode([i["text"] for i in out])
        for item, neighbours in zip(out, model.neighbours(vectors, runtime.config.classifier.neighbours or 3)):
            item["neighbours"] = neighbours
    return out
