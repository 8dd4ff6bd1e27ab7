"""The promotion gate and rollback for `escalation-classifier@champion`.

A challenger becomes champion only when, scored now on the same data,
- its recall at the budget (at its own calibrated threshold) on the frozen test split of
  data/tasks.jsonl is at least the champion's,
- its recall at the budget on the reviewed set (reviewers' labels on texts held out of training by
  their hash) is at least the champion's, when that set has critical examples,
- its traffic-weighted escalation rate on the test split stays within the 95% upper bound stored
  with its threshold,
- and, when the service ran it in shadow against this champion on at least MIN_SHADOW_DECISIONS live
  tasks, its escalation rate on that live traffic is not above the same bound (the 95% Wilson lower
  bound of the live rate is compared, so noise alone does not refuse). The test split is the sample
  its threshold was calibrated on, so the first rate check can hardly fail; live traffic can.
The comparison is printed and logged to MLflow as a `promotion-gate` run, with the shadow's
agreement with the champion. `--force` overrides a refusal (and says so).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Integer, func, select

from escalation import settings, store
from escalation.predict import load_model
from escalation.registry import champion_history, client, set_champion, version_for
from training.calibrate import traffic_weights, weighted_rate, wilson_interval
from training.corpus import load_rows
from training.labels import merge_reviewed, reviewed_holdout, reviewed_rows


def _recall(model, rows) -> float | None:
    positives = [r for r in rows if r.label == 1]
    if not positives:
        return None
    s = model.score([r.text for r in positives], [r.role for r in positives]).score
    return float((s >= model.threshold).mean())


def _traffic_rate(model, rows, prior: float) -> float:
    y = np.array([r.label for r in rows])
    s = model.score([r.text for r in rows], [r.role for r in rows]).score
    return weighted_rate(s, model.threshold, traffic_weights(y, len(y), prior))


MIN_SHADOW_DECISIONS = 100  # fewer live tasks say too little about the challenger's live escalation rate


@dataclass
class ShadowStats:
    decisions: int  # live tasks the challenger scored in shadow
    agreement: float  # share on which it decided as the champion did
    escalation_rate: float  # share it would have escalated, at its own threshold


def shadow_stats(challenger_version: str, champion_version: str | None = None) -> ShadowStats | None:
    """What the challenger did in shadow on live traffic; None when it never ran there.

    With `champion_version`, only rows where that version was the champion count: after a promotion
    and a rollback the same challenger has also been shadowed against other champions (itself,
    with 100% agreement), and those rows say nothing about the champion it is compared with now.
    """
    eng = store.engine(settings.db_url())
    t = store.shadow_scores
    query = (select(func.count(), func.sum((t.c.champion_escalate == t.c.challenger_escalate).cast(Integer)),
                    func.sum(t.c.challenger_escalate.cast(Integer)))
             .where(t.c.challenger_version == challenger_version))
    if champion_version is not None:
        query = query.where(t.c.champion_version == champion_version)
    with eng.connect() as conn:
        n, agree, escalated = conn.execute(query).one()
    return ShadowStats(int(n), float(agree or 0) / n, float(escalated or 0) / n) if n else None


def compare(champion, challenger, test_rows, reviewed, prior: float, shadow: ShadowStats | None = None) -> dict:
    out = {
        "test_recall": (_recall(champion, test_rows), _recall(challenger, test_rows)),
        "reviewed_recall": (_recall(champion, reviewed), _recall(challenger, reviewed)),
        "challenger_traffic_rate": _traffic_rate(challenger, test_rows, prior),
        "challenger_rate_bound": float(challenger.meta["threshold"]["escalation_rate_ucb95"]),
    }
    reasons = []
    ch, cl = out["test_recall"]
    if cl < ch:
        reasons.append(f"recall at the budget on the test split drops {ch:.4f} -> {cl:.4f}")
    rh, rl = out["reviewed_recall"]
    if rh is not None and rl < rh:
        reasons.append(f"recall at the budget on the reviewed set drops {rh:.4f} -> {rl:.4f}")
    if out["challenger_traffic_rate"] > out["challenger_rate_bound"]:
        reasons.append(f"escalation rate {out['challenger_traffic_rate']:.4f} exceeds its bound {out['challenger_rate_bound']:.4f}")
    if shadow and shadow.decisions >= MIN_SHADOW_DECISIONS:
        low = wilson_interval(shadow.escalation_rate, shadow.decisions)[0]
        if low > out["challenger_rate_bound"]:
            reasons.append(f"escalation rate on {shadow.decisions} live tasks in shadow {shadow.escalation_rate:.4f} "
                           f"(95% lower bound {low:.4f}) exceeds its bound {out['challenger_rate_bound']:.4f}")
    out["refusals"] = reasons
    return out


def promote(force: bool = False, corpus=settings.CORPUS, log=print) -> bool:
    from escalation.config import load_config

    name = settings.MODEL_NAME
    champ_v = version_for(f"models:/{name}@{settings.CHAMPION}")
    chall_v = version_for(f"models:/{name}@{settings.CHALLENGER}")
    if chall_v is None:
        raise SystemExit("no challenger registered; run `escalation train` first")
    if champ_v == chall_v:
        log(f"challenger v{chall_v} is already the champion")
        return True
    prior = load_config(settings.config_path())[0].budget.prior
    champion = load_model(f"models:/{name}/{champ_v}")
    challenger = load_model(f"models:/{name}/{chall_v}")
    corpus_rows, labeled = load_rows(corpus), reviewed_rows(settings.db_url())
    merged, _ = merge_reviewed(corpus_rows, labeled)
    test_rows = [r for r in merged if r.split == "test"]  # the frozen test split, with reviewers' corrections
    reviewed = reviewed_holdout(corpus_rows, labeled)
    shadow = shadow_stats(chall_v, champ_v)
    result = compare(champion, challenger, test_rows, reviewed, prior, shadow)

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    log(f"                          champion v{champ_v}   challenger v{chall_v}")
    log(f"recall@budget, test split  {fmt(result['test_recall'][0]):>14}   {fmt(result['test_recall'][1]):>14}   ({len(test_rows)} rows)")
    log(f"recall@budget, reviewed    {fmt(result['reviewed_recall'][0]):>14}   {fmt(result['reviewed_recall'][1]):>14}   ({len(reviewed)} rows)")
    log(f"escalation rate (traffic)  {'':>14}   {result['challenger_traffic_rate']:>14.4f}   (bound {result['challenger_rate_bound']:.4f})")
    if shadow:
        log(f"shadow agreement with the champion: {shadow.agreement:.1%} of {shadow.decisions} live decisions")
        checked = "" if shadow.decisions >= MIN_SHADOW_DECISIONS else f"; checked from {MIN_SHADOW_DECISIONS} on"
        log(f"escalation rate (shadow)   {'':>14}   {shadow.escalation_rate:>14.4f}   ({shadow.decisions} live tasks{checked})")
    accepted = not result["refusals"]
    for r in result["refusals"]:
        log(f"refused: {r}")
    if not accepted and force:
        log("--force: promoting despite the refusal")
    promoted = accepted or force
    _log_gate(champ_v, chall_v, result, shadow, promoted, force)
    if promoted:
        set_champion(chall_v)
        log(f"@{settings.CHAMPION} -> v{chall_v} (was v{champ_v})")
    return promoted


def _log_gate(champ_v, chall_v, result, shadow, promoted, force) -> None:
    import mlflow

    from training.train import ensure_experiment

    ensure_experiment()
    with mlflow.start_run(run_name=f"promotion-gate v{champ_v}->v{chall_v}"):
        mlflow.set_tags({"kind": "promotion-gate", "champion": champ_v, "challenger": chall_v,
                         "promoted": str(promoted), "forced": str(force and bool(result["refusals"])),
                         "refusals": "; ".join(result["refusals"]) or "none"})
        metrics = {"challenger_traffic_rate": result["challenger_traffic_rate"], "challenger_rate_bound": result["challenger_rate_bound"]}
        for key in ("test_recall", "reviewed_recall"):
            for who, value in zip(("champion", "challenger"), result[key]):
                if value is not None:
                    metrics[f"{who}_{key}"] = value
        if shadow:
            metrics.update(shadow_agreement=shadow.agreement, shadow_decisions=shadow.decisions, shadow_escalation_rate=shadow.escalation_rate)
        mlflow.log_metrics(metrics)


def rollback(log=print) -> str:
    history = champion_history()
    if len(history) < 2:
        raise SystemExit("no previous champion to roll back to")
    previous = history[-2]
    current = history[-1]
    set_champion(previous, history=history[:-1])
    client().set_registered_model_alias(settings.MODEL_NAME, settings.CHALLENGER, current)
    log(f"@{settings.CHAMPION} -> v{previous} (rolled back from v{current}; v{current} stays @{settings.CHALLENGER})")
    return previous
