"""The Python API and `escalation score`: the same `EscalationModel.score()` the service runs.

    from escalation.predict import load_model
    model = load_model()                      # models:/escalation-classifier@champion
    model.score(["Split billing out of the monolith?"], ["architect"]).score
"""
from __future__ import annotations

import json
import sys

from escalation import settings
from escalation.model import EscalationModel
from escalation.schema import MAX_TEXT_CHARS, ROLES, LineError, parse_jsonl_line

DEFAULT_URI = f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}"


def load_model(uri: str = DEFAULT_URI) -> EscalationModel:
    from escalation.registry import fetch

    resolved = fetch(uri)
    return EscalationModel(resolved.folder, version=resolved.version)


def read_tasks(path: str) -> list[dict]:
    """Reads `text` and optional `role` from every line; raises LineError naming the first bad line."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                raise LineError(path, lineno, "empty line; every line must be a JSON object with a text")
            obj = parse_jsonl_line(path, lineno, raw)
            text = obj.get("text")
            if not isinstance(text, str) or not text.strip():
                raise LineError(path, lineno, "missing or empty text")
            if len(text) > MAX_TEXT_CHARS:
                raise LineError(path, lineno, f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
            if obj.get("role") is not None and obj["role"] not in ROLES:
                raise LineError(path, lineno, f"unknown role {obj['role']!r} (expected one of {', '.join(ROLES)})")
            rows.append(obj)
    return rows


def score_file(path: str, uri: str = DEFAULT_URI, out=None, chunk: int = 64) -> None:
    """Writes each input object plus score, probability and escalate (static threshold), in order."""
    from tqdm import tqdm

    out = out or sys.stdout
    try:
        rows = read_tasks(path)
    except LineError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    model = load_model(uri)
    with tqdm(total=len(rows), desc="scoring", unit="task", file=sys.stderr) as bar:
        for start in range(0, len(rows), chunk):
            batch = rows[start : start + chunk]
            scored = model.score([r["text"] for r in batch], [r.get("role") for r in batch])
            for r, s, p in zip(batch, scored.score, scored.probability):
                out.write(json.dumps({**r, "score": float(s), "probability": float(p), "escalate": bool(s >= model.threshold),
                                      "model_version": model.version}, ensure_ascii=False) + "\n")
            bar.update(len(batch))
