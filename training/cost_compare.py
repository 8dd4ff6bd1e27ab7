"""`escalation cost-compare TRACE`: the same day of traffic priced under two routing configs.

Each task in the trace (text, role, input and output tokens) is scored once by the classifier; each
config then decides with its own policy (escalation on or off, its budget controller, its daily spend
cap) and sends the task to the first model of its chain, priced from that config's price table.
Provider failures are not replayed: the comparison is of plans, not of outages.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from escalation.budget import BudgetController
from escalation.config import load_config
from escalation.predict import load_model
from escalation.schema import ROLES


def read_trace(path: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        for key in ("text", "role", "input_tokens", "output_tokens"):
            if key not in r:
                raise SystemExit(f"{path}:{lineno}: a trace row needs text, role, input_tokens and output_tokens (missing {key})")
        rows.append(r)
    return rows


def replay(rows: list[dict], scores: np.ndarray, threshold: float, config) -> dict:
    c = config.budget.controller
    controller = BudgetController(config.budget.share, c.mode, c.window, c.min_samples, c.gain)
    critical = config.escalation.critical_model
    cost = defaultdict(float)
    tasks = defaultdict(int)
    escalated = capped = 0
    spent_critical = 0.0
    for r, s in zip(rows, scores):
        escalate = config.escalation.enabled and controller.decide(float(s), threshold)[0]
        if escalate and spent_critical >= config.escalation.daily_spend_cap_usd:
            escalate, capped = False, capped + 1
        model = config.chain_for(r["role"], escalate)[0]
        usd = config.models[model].cost(int(r["input_tokens"]), int(r["output_tokens"]))
        if model == critical:
            spent_critical += usd
        escalated += escalate
        cost[(model, r["role"])] += usd
        tasks[(model, r["role"])] += 1
    return {"cost": dict(cost), "tasks": dict(tasks), "escalated": escalated, "capped": capped, "total": sum(cost.values())}


def compare(trace: str, baseline_path: str, candidate_path: str, model_uri: str, chart: str | None, echo=print) -> dict:
    rows = read_trace(trace)
    model = load_model(model_uri)
    scores = model.score([r["text"] for r in rows], [r["role"] for r in rows]).score
    results = {}
    for name, path in (("baseline", baseline_path), ("candidate", candidate_path)):
        config, version = load_config(path)
        results[name] = {"version": version, **replay(rows, scores, model.threshold, config)}

    b, c = results["baseline"], results["candidate"]
    echo(f"trace {trace}: {len(rows)} tasks; model v{model.version} (threshold {model.threshold:.4f})")
    for name in ("baseline", "candidate"):
        r = results[name]
        echo(f"\n{name}: {r['version']}  escalated {r['escalated']} ({r['escalated'] / len(rows):.1%}), downgraded by the spend cap {r['capped']}")
        echo(f"{'model':40s} {'role':13s} {'tasks':>6s} {'cost USD':>10s}")
        for (m, role), usd in sorted(r["cost"].items(), key=lambda kv: (kv[0][0], ROLES.index(kv[0][1]))):
            echo(f"{m:40s} {role:13s} {r['tasks'][(m, role)]:6d} {usd:10.4f}")
        echo(f"{'total':40s} {'':13s} {len(rows):6d} {r['total']:10.4f}")
    echo("\ncost by role             baseline    candidate")
    for role in ROLES:
        rb = sum(v for (m, ro), v in b["cost"].items() if ro == role)
        rc = sum(v for (m, ro), v in c["cost"].items() if ro == role)
        echo(f"{role:20s} {rb:12.4f} {rc:12.4f}")
    reduction = (b["total"] - c["total"]) / b["total"] * 100 if b["total"] else float("nan")
    results["reduction_pct"] = reduction
    echo(f"\ntotal: baseline ${b['total']:.4f}, candidate ${c['total']:.4f}")
    echo(f"reduction: {reduction:.1f}% ({'cheaper' if reduction > 0 else 'more expensive'} than the baseline)")
    if chart:
        draw(results, chart)
        echo(f"chart: {chart}")
    return results


def draw(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    models = sorted({m for name in ("baseline", "candidate") for (m, _) in results[name]["cost"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(ROLES))
    for offset, name in ((-0.2, "baseline"), (0.2, "candidate")):
        bottom = np.zeros(len(ROLES))
        for k, m in enumerate(models):
            vals = np.array([results[name]["cost"].get((m, role), 0.0) for role in ROLES])
            if vals.any():
                ax.bar(x + offset, vals, 0.38, bottom=bottom, color=plt.cm.tab10(k), edgecolor="white",
                       label=m if name == "baseline" or not any(results["baseline"]["cost"].get((m, r)) for r in ROLES) else None)
                bottom += vals
    ax.set_xticks(x, [f"{r}\n(left: baseline, right: candidate)" if i == 0 else r for i, r in enumerate(ROLES)], fontsize=8)
    ax.set_ylabel("USD for the trace")
    ax.set_title(f"cost by role: baseline ${results['baseline']['total']:.2f} vs candidate ${results['candidate']['total']:.2f} "
                 f"({results['reduction_pct']:+.1f}% reduction)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
