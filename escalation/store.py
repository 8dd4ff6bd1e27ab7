"""The service database: decisions, provider attempts (the cost ledger), review queue, labels,
reviewers, config versions and events. SQLite by default, PostgreSQL by URL (ESCALATION_DB_URL).

One schema for every reader: the service writes it, `escalation report`, `train` (reviewed labels),
`calibrate --from-traffic` and the review CLI read it. Rows are only ever inserted or have their
status moved forward; a label is never updated or deleted, so nothing a reviewer said is lost.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

from sqlalchemy import (
    JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, event, select,
)
from sqlalchemy.engine import Engine

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


decisions = Table(
    "decisions", metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(64), index=True),
    Column("time", DateTime, index=True, nullable=False),
    Column("endpoint", String(16)),  # classify | route | chat
    Column("role", String(16)),
    Column("score", Float),
    Column("probability", Float),
    Column("threshold", Float),
    Column("effective_threshold", Float),
    Column("escalate", Boolean),
    Column("reasons", JSON),
    Column("controller", String(16)),  # null | held_back | boosted
    Column("model_version", String(32)),
    Column("config_version", String(80)),
    Column("arm", String(16)),  # baseline | canary
)

attempts = Table(
    "attempts", metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(64), index=True),
    Column("time", DateTime, index=True, nullable=False),
    Column("role", String(16)),
    Column("escalate", Boolean),
    Column("score", Float),
    Column("model", String(80)),
    Column("attempt", Integer),
    Column("status", String(24)),  # ok | rate_limited | server_error | timeout | connection | context_length | client_error | circuit_open | stream_cut | bad_response
    Column("http_status", Integer),
    Column("latency_ms", Float),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cost_usd", Float),
    Column("config_version", String(80)),
    Column("arm", String(16)),
)

review_items = Table(
    "review_items", metadata,
    Column("id", String(40), primary_key=True),
    Column("created", DateTime, index=True, nullable=False),
    Column("text", Text),  # null when store_text is off
    Column("role", String(16)),
    Column("score", Float),
    Column("probability", Float),
    Column("threshold", Float),
    Column("uncertainty", Float),  # |logit(score) - logit(threshold)|: smaller is more uncertain
    Column("reason", String(16)),  # borderline | random
    Column("model_version", String(32)),
)

shadow_scores = Table(
    "shadow_scores", metadata,
    Column("id", String(40), primary_key=True),
    Column("time", DateTime, index=True, nullable=False),
    Column("champion_version", String(32)),
    Column("challenger_version", String(32), index=True),
    Column("champion_score", Float),
    Column("challenger_score", Float),
    Column("champion_escalate", Boolean),
    Column("challenger_escalate", Boolean),
)

labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(40), index=True),
    Column("text", Text, nullable=False),
    Column("role", String(16)),
    Column("verdict", String(10), nullable=False),  # critical | routine | skip
    Column("note", Text),
    Column("reviewer", String(80), nullable=False),
    Column("created", DateTime, nullable=False),
)

reviewers = Table(
    "reviewers", metadata,
    Column("name", String(80), primary_key=True),
    Column("token_sha256", String(64), unique=True, nullable=False),
    Column("created", DateTime, nullable=False),
)

config_versions = Table(
    "config_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(80), index=True, nullable=False),
    Column("loaded_at", DateTime, nullable=False),
    Column("source", String(500)),
    Column("content", Text, nullable=False),
    Column("reason", String(200)),
)

events = Table(
    "events", metadata,
    Column("id", String(40), primary_key=True),
    Column("time", DateTime, index=True, nullable=False),
    Column("kind", String(40), nullable=False),  # model_reload | config_rollback | canary_rollback | ...
    Column("detail", JSON),
)

_engines: dict[str, Engine] = {}


def engine(url: str) -> Engine:
    """One engine per URL per process; SQLite gets WAL so readers never block the writer."""
    if url not in _engines:
        eng = create_engine(url, future=True, pool_pre_ping=True)
        if url.startswith("sqlite"):
            @event.listens_for(eng, "connect")
            def _pragmas(conn, _):
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()
        metadata.create_all(eng)
        _engines[url] = eng
    return _engines[url]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_reviewer(eng: Engine, name: str) -> str:
    """Creates a reviewer and returns their token; only its hash is stored."""
    token = secrets.token_urlsafe(24)
    with eng.begin() as conn:
        if conn.execute(select(reviewers.c.name).where(reviewers.c.name == name)).first():
            raise ValueError(f"reviewer {name!r} exists; pick another name")
        conn.execute(reviewers.insert().values(name=name, token_sha256=hash_token(token), created=utcnow()))
    return token


def reviewer_for_token(eng: Engine, token: str | None) -> str | None:
    if not token:
        return None
    with eng.connect() as conn:
        row = conn.execute(select(reviewers.c.name).where(reviewers.c.token_sha256 == hash_token(token))).first()
    return row[0] if row else None


def pending_for(eng: Engine, reviewer: str) -> list[dict]:
    """Review items a reviewer should see: not labeled by them, and unlabeled or disputed.

    Disputed items (critical and routine votes both present) come first and carry every label, so
    the page can show the disagreement; the rest are ordered most uncertain first.
    """
    with eng.connect() as conn:
        items = conn.execute(
            select(review_items).where(review_items.c.text.is_not(None)).order_by(review_items.c.uncertainty)
        ).mappings().all()
        given = conn.execute(select(labels).where(labels.c.item_id.is_not(None))).mappings().all()
    by_item: dict[str, list[dict]] = {}
    for lab in given:
        by_item.setdefault(lab["item_id"], []).append({"reviewer": lab["reviewer"], "verdict": lab["verdict"], "note": lab["note"]})
    out = []
    for item in items:
        votes = by_item.get(item["id"], [])
        if any(v["reviewer"] == reviewer for v in votes):
            continue
        disputed = len({v["verdict"] for v in votes if v["verdict"] != "skip"}) > 1
        if votes and not disputed:
            continue
        out.append({**dict(item), "disputed": disputed, "labels": votes if disputed else []})
    out.sort(key=lambda i: not i["disputed"])  # stable: keeps most-uncertain-first within each group
    return out
