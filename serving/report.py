"""`escalation report`: what the ledger says about a time window.

Cost by model and role, escalation frequency with the reasons given, error and fallback rates, and
p50/p95 latency. `--csv FILE` writes the same tables into one CSV (a `table` column says which).
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from datetime import timedelta

import numpy as np
from sqlalchemy import select

from escalation import store

FAILED = {"rate_limited", "server_error", "timeout", "connection", "context_length", "client_error", "bad_response", "stream_cut"}


def _reason_kind(reasons: list[str] | None, escalate: bool) -> str:
    """The deciding reason of a decision, in a few words, for counting."""
    for r in reasons or []:
        for key in ("forced", "forbidden", "daily spend cap", "budget controller", "classifier unavailable", "disabled"):
            if key in r:
                return key
    return "score above threshold" if escalate else "score below threshold"


def build_report(db_url: str, hours: float) -> dict:
    eng = store.engine(db_url)
    since = store.utcnow() - timedelta(hours=hours)
    with eng.connect() as conn:
        attempts = conn.execute(select(store.attempts).where(store.attempts.c.time >= since)).mappings().all()
        decisions = conn.execute(select(store.decisions).where(store.decisions.c.time >= since)).mappings().all()

    cost = defaultdict(lambda: {"attempts": 0, "ok": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0})
    for a in attempts:
        c = cost[(a["model"], a["role"])]
        c["attempts"] += 1
        c["ok"] += a["status"] == "ok"
        c["input_tokens"] += a["input_tokens"] or 0
        c["output_tokens"] += a["output_tokens"] or 0
        c["cost_usd"] += a["cost_usd"] or 0.0

    by_request = defaultdict(list)
    for a in attempts:
        by_request[a["request_id"]].append(a)
    requests = len(by_request)
    failed_requests = sum(1 for rows in by_request.values() if not any(r["status"] == "ok" for r in rows))
    fallback_requests = sum(
        1 for rows in by_request.values()
        if any(r["status"] == "ok" for r in rows) and min(rows, key=lambda r: r["attempt"])["model"] != next(r["model"] for r in rows if r["status"] == "ok")
    )
    statuses = Counter(a["status"] for a in attempts)

    latency = {}
    for model in sorted({a["model"] for a in attempts}):
        ms = np.array([a["latency_ms"] for a in attempts if a["model"] == model and a["status"] == "ok"] or [np.nan])
        latency[model] = {"p50_ms": float(np.nanpercentile(ms, 50)) if np.isfinite(ms).any() else None,
                          "p95_ms": float(np.nanpercentile(ms, 95)) if np.isfinite(ms).any() else None,
                          "ok_calls": int(np.isfinite(ms).sum())}

    esc = defaultdict(lambda: {"decisions": 0, "escalated": 0})
    reasons = Counter()
    for d in decisions:
        e = esc[d["role"] or "none"]
        e["decisions"] += 1
        e["escalated"] += bool(d["escalate"])
        reasons[(bool(d["escalate"]), _reason_kind(d["reasons"], bool(d["escalate"])))] += 1
    return {
        "hours": hours,
        "cost": {f"{m}|{r}": v for (m, r), v in sorted(cost.items())},
        "requests": requests,
        "error_rate": failed_requests / requests if requests else 0.0,
        "fallback_rate": fallback_requests / requests if requests else 0.0,
        "attempt_statuses": dict(statuses),
        "latency": latency,
        "escalations": dict(esc),
        "reasons": {f"{'escalated' if k[0] else 'not escalated'}: {k[1]}": v for k, v in reasons.most_common()},
    }


def print_report(db_url: str, hours: float = 24, csv_path: str | None = None, echo=print) -> dict:
    r = build_report(db_url, hours)
    echo(f"== last {hours:g} h: {r['requests']} routed requests, error rate {r['error_rate']:.1%}, fallback rate {r['fallback_rate']:.1%}")
    echo("\ncost by model and role")
    echo(f"{'model':40s} {'role':13s} {'attempts':>8s} {'ok':>5s} {'in tok':>9s} {'out tok':>9s} {'cost USD':>10s}")
    total = 0.0
    for key, v in r["cost"].items():
        model, role = key.split("|")
        total += v["cost_usd"]
        echo(f"{model:40s} {role:13s} {v['attempts']:8d} {v['ok']:5d} {v['input_tokens']:9d} {v['output_tokens']:9d} {v['cost_usd']:10.4f}")
    echo(f"{'total':40s} {'':13s} {'':8s} {'':5s} {'':9s} {'':9s} {total:10.4f}")
    echo("\nescalations by role")
    for role, v in sorted(r["escalations"].items()):
        echo(f"{role:13s} {v['escalated']:6d} of {v['decisions']:6d} ({v['escalated'] / max(v['decisions'], 1):.1%})")
    echo("\nreasons")
    for reason, n in r["reasons"].items():
        echo(f"{n:6d}  {reason}")
    echo("\nprovider attempts by status: " + ", ".join(f"{k} {v}" for k, v in sorted(r["attempt_statuses"].items())))
    echo("\nlatency of successful calls")
    for model, v in r["latency"].items():
        if v["ok_calls"]:
            echo(f"{model:40s} p50 {v['p50_ms']:8.1f} ms   p95 {v['p95_ms']:8.1f} ms   ({v['ok_calls']} calls)")
    if csv_path:
        write_csv(r, csv_path)
        echo(f"\nwrote {csv_path}")
    return r


def write_csv(r: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "key", "subkey", "value"])
        for key, v in r["cost"].items():
            model, role = key.split("|")
            for k, val in v.items():
                w.writerow(["cost", model, f"{role}:{k}", val])
        for role, v in r["escalations"].items():
            for k, val in v.items():
                w.writerow(["escalations", role, k, val])
        for reason, n in r["reasons"].items():
            w.writerow(["reasons", reason, "", n])
        for k, v in r["attempt_statuses"].items():
            w.writerow(["attempt_statuses", k, "", v])
        for model, v in r["latency"].items():
            for k, val in v.items():
                w.writerow(["latency", model, k, val])
        w.writerow(["summary", "requests", "", r["requests"]])
        w.writerow(["summary", "error_rate", "", r["error_rate"]])
        w.writerow(["summary", "fallback_rate", "", r["fallback_rate"]])
