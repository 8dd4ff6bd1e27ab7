"""`escalation cost-compare TRACE`: the same day of traffic priced under two routing configs.

Each task in the trace (text, role, input and output tokens) is scored once by the classifier; each
config then decides with its own policy (escalation on or off, its budget controller, its daily spend
cap) and sends the task to the first model of its chain, priced from that config's price table:
input tokens x input USD per million + output tokens x output USD per million.
Provider failures are not replayed: the comparison is of plans, not of outages.

The core (`replay`, `compare_scored`) takes precomputed scores and a threshold, so it runs without a
model; `compare` adds the model (or any `scorer(texts, roles) -> scores` callable).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from escalation.budget import BudgetController
from escalation.config import load_config
from escalation.schema import ROLES

Scorer = Callable[[list, list], Sequence[float]]


def read_trace(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            for key in ("text", "role", "input_tokens", "output_tokens"):
                if key not in r:
                    raise SystemExit(f"{path}:{lineno}: a trace row needs text, role, input_tokens and output_tokens (missing {key})")
            if r["role"] not in ROLES:
                raise SystemExit(f"{path}:{lineno}: role {r['role']!r} is not one of {', '.join(ROLES)}")
            rows.append(r)
    return rows


def replay(rows: list[dict], scores, threshold: float, config) -> dict:
    if len(scores) != len(rows):
        raise ValueError(f"{len(scores)} scores for {len(rows)} trace rows")
    c = config.budget.controller
    controller = BudgetController(config.budget.share, c.mode, c.window, c.min_samples, c.gain)
    critical = config.escalation.critical_model
    cost = defaultdict(float)
    tasks = defaultdict(int)
    tokens = defaultdict(lambda: [0, 0])
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
        escalated += bool(escalate)
        cost[(model, r["role"])] += usd
        tasks[(model, r["role"])] += 1
        tokens[model][0] += int(r["input_tokens"])
        tokens[model][1] += int(r["output_tokens"])
    by_model = defaultdict(float)
    by_role = {role: 0.0 for role in ROLES}
    for (m, role), usd in cost.items():
        by_model[m] += usd
        by_role[role] += usd
    return {"cost": dict(cost), "tasks": dict(tasks), "tokens": {m: tuple(t) for m, t in tokens.items()},
            "by_model": dict(by_model), "by_role": by_role, "escalated": escalated, "capped": capped,
            "total": sum(cost.values())}


def reduction_pct(baseline_total: float, candidate_total: float) -> float:
    """Positive: the candidate is cheaper than the baseline by this share of the baseline's cost."""
    return (baseline_total - candidate_total) / baseline_total * 100 if baseline_total else float("nan")


def compare_scored(rows: list[dict], scores, threshold: float, baseline_path: str, candidate_path: str,
                   chart: Optional[str] = None, echo=print, header: str = "") -> dict:
    results = {}
    configs = {}
    for name, path in (("baseline", baseline_path), ("candidate", candidate_path)):
        config, version = load_config(path)
        configs[name] = config
        results[name] = {"version": version, "path": str(path), **replay(rows, scores, threshold, config)}

    b, c = results["baseline"], results["candidate"]
    echo(f"{header}{len(rows)} tasks (threshold {threshold:.4f})")
    for name in ("baseline", "candidate"):
        r = results[name]
        echo(f"\n{name}: {r['version']} ({r['path']})  escalated {r['escalated']} ({r['escalated'] / len(rows):.1%}), "
             f"downgraded by the spend cap {r['capped']}")
        echo(f"{'model':40s} {'role':13s} {'tasks':>6s} {'cost USD':>10s}")
        for (m, role), usd in sorted(r["cost"].items(), key=lambda kv: (kv[0][0], ROLES.index(kv[0][1]))):
            echo(f"{m:40s} {role:13s} {r['tasks'][(m, role)]:6d} {usd:10.4f}")
        echo(f"{'total':40s} {'':13s} {len(rows):6d} {r['total']:10.4f}")

    models = sorted(set(b["by_model"]) | set(c["by_model"]))
    echo(f"\ncost by model ({'USD per Mtok in/out'})        {'baseline':>10s} {'candidate':>10s}")
    for m in models:
        spec = (configs["candidate"].models.get(m) or configs["baseline"].models.get(m))
        price = f"{spec.input_usd_per_mtok:g}/{spec.output_usd_per_mtok:g}"
        echo(f"{m:37s} {price:>10s} {b['by_model'].get(m, 0.0):10.4f} {c['by_model'].get(m, 0.0):10.4f}")
    echo(f"\ncost by role {'':35s} {'baseline':>10s} {'candidate':>10s}")
    for role in ROLES:
        echo(f"{role:48s} {b['by_role'][role]:10.4f} {c['by_role'][role]:10.4f}")
    reduction = reduction_pct(b["total"], c["total"])
    results["reduction_pct"] = reduction
    echo(f"\ntotal: baseline ${b['total']:.4f}, candidate ${c['total']:.4f}")
    echo(f"reduction: {reduction:.1f}% ({'cheaper' if reduction > 0 else 'more expensive'} than the baseline)")
    if chart:
        draw(results, chart)
        echo(f"chart: {chart}")
    return results


def compare(trace: str, baseline_path: str, candidate_path: str, model_uri: Optional[str] = None,
            chart: Optional[str] = None, echo=print, scorer: Optional[Scorer] = None,
            threshold: Optional[float] = None) -> dict:
    """Scores the trace with `scorer` (with `threshold`) if given, else with the model at `model_uri`."""
    rows = read_trace(trace)
    texts, roles = [r["text"] for r in rows], [r["role"] for r in rows]
    if scorer is None:
        from escalation import settings
        from escalation.predict import load_model

        model = load_model(model_uri or f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}")
        scores = model.score(texts, roles).score
        threshold = model.threshold if threshold is None else threshold
        header = f"trace {trace}; model v{model.version}: "
    else:
        if threshold is None:
            raise ValueError("a scorer needs a threshold")
        scores = np.asarray(scorer(texts, roles), dtype=float)
        header = f"trace {trace}; custom scorer: "
    return compare_scored(rows, scores, threshold, baseline_path, candidate_path, chart, echo, header)


def draw(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    models = sorted({m for name in ("baseline", "candidate") for (m, _) in results[name]["cost"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(ROLES))
    for offset, name in ((-0.2, "baseline"), (0.2, "candidate")):
        bottom = np.zeros(len(ROLES))
        for k, m in enumerate(models):
            vals = np.array([results[name]["cost"].get((m, role), 0.0) for role in ROLES])
            if vals.any():
                ax.bar(x + offset, vals, 0.38, bottom=bottom, color=plt.cm.tab10(k % 10), edgecolor="white")
                bottom += vals
    handles = []
    for k, m in enumerate(models):
        tasks = {name: sum(n for (mm, _), n in results[name]["tasks"].items() if mm == m) for name in ("baseline", "candidate")}
        usd = sum(results[name]["by_model"].get(m, 0.0) for name in ("baseline", "candidate"))
        note = "" if usd else f" (free: {tasks['baseline']} baseline / {tasks['candidate']} candidate tasks, no bar)"
        handles.append(Patch(color=plt.cm.tab10(k % 10), label=m + note))
    ax.set_xticks(x, [f"{r}\n(left: baseline, right: candidate)" if i == 0 else r for i, r in enumerate(ROLES)], fontsize=8)
    ax.set_ylabel("USD for the trace")
    ax.set_title(f"cost by role: baseline \\${results['baseline']['total']:.2f} vs candidate \\${results['candidate']['total']:.2f} "
                 f"(reduction {results['reduction_pct']:.1f}%: "
                 f"{'cheaper' if results['reduction_pct'] > 0 else 'more expensive'})", fontsize=9)
    if handles:
        ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
