"""Evaluation of a model on any labeled JSONL (`text`, `label`, optional `role`): metrics and plots.

Two readings of "recall at the budget" are reported, because they answer different questions:
- at the model's stored threshold: what the service would do on this file;
- at the file's own top-`budget` quantile: ranking quality, comparable across models and with the
  reference scores of ../shared/eval-dev (which escalate the top 5% of that file).
Weighted metrics reweight the file to the traffic prior, so calibration is judged as traffic sees it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from escalation.schema import ROLES, parse_jsonl_line
from training.calibrate import traffic_weights, weighted_rate


def read_labeled(path: str | Path) -> list[dict]:
    """Reads `text`, `label` and optional `role` from a labeled JSONL; names any bad line."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj = parse_jsonl_line(str(path), lineno, raw)
            if not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise ValueError(f"{path}:{lineno}: missing or empty text")
            if obj.get("label") not in (0, 1):
                raise ValueError(f"{path}:{lineno}: label must be 0 or 1")
            role = obj.get("role")
            rows.append({"text": obj["text"], "label": int(obj["label"]), "role": role if role in ROLES else None})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def expected_calibration_error(y, p, weights, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    total, ece = weights.sum(), 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            w = weights[m]
            ece += w.sum() / total * abs(np.average(y[m], weights=w) - np.average(p[m], weights=w))
    return float(ece)


def metrics(y, score, probability, threshold: float, budget: float, prior: float, roles=None) -> dict:
    y = np.asarray(y)
    score = np.asarray(score)
    escalated = score >= threshold
    top = score >= np.quantile(score, 1 - budget)
    has_both = 0 < y.sum() < len(y)
    w = traffic_weights(y, len(y), prior) if has_both else np.full(len(y), 1 / len(y))
    out = {
        "rows": int(len(y)),
        "positives": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, score)) if has_both else float("nan"),
        "pr_auc": float(average_precision_score(y, score)) if has_both else float("nan"),
        "recall_at_threshold": float(escalated[y == 1].mean()) if y.any() else float("nan"),
        "precision_at_threshold": float(y[escalated].mean()) if escalated.any() else float("nan"),
        "escalation_rate": float(escalated.mean()),
        "escalation_rate_traffic": weighted_rate(score, threshold, w),
        "recall_at_budget_quantile": float(top[y == 1].mean()) if y.any() else float("nan"),
        "precision_at_budget_quantile": float(y[top].mean()) if top.any() else float("nan"),
        "ece_traffic": expected_calibration_error(y, np.asarray(probability), w),
    }
    if roles is not None:
        roles = np.array([r or "none" for r in roles])
        for role in ROLES:
            m = (roles == role) & (y == 1)
            if m.any():
                out[f"recall_at_threshold_{role}"] = float(escalated[m].mean())
    return out


def plot_all(y, score, probability, threshold: float, budget: float, prior: float, out_dir: str | Path, title: str) -> list[Path]:
    """ROC, PR, recall against budget, score histogram with the threshold, reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y, score, probability = np.asarray(y), np.asarray(score), np.asarray(probability)
    paths = []

    def save(fig, name):
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        p = out_dir / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, score):.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    prec, rec, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(rec, prec, label=f"AP {average_precision_score(y, score):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    ax.legend(loc="upper right")
    save(fig, "pr.png")

    budgets = np.linspace(0.005, 0.3, 60)
    recalls = [(score[y == 1] >= np.quantile(score, 1 - b)).mean() for b in budgets]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(budgets * 100, recalls)
    ax.axvline(budget * 100, ls="--", c="red", label=f"budget {budget:.0%}")
    ax.set(xlabel="share of items escalated (%)", ylabel="recall", title="recall against budget")
    ax.legend(loc="lower right")
    save(fig, "recall_vs_budget.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(score[y == 0], bins=bins, alpha=0.6, label="routine", log=True)
    ax.hist(score[y == 1], bins=bins, alpha=0.6, label="critical", log=True)
    ax.axvline(threshold, c="red", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score", ylabel="items (log)", title="scores and threshold")
    ax.legend()
    save(fig, "score_histogram.png")

    w = traffic_weights(y, len(y), prior) if 0 < y.sum() < len(y) else np.full(len(y), 1 / len(y))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(probability, edges) - 1, 0, 9)
    xs, ys = [], []
    for b in range(10):
        m = idx == b
        if m.any():
            xs.append(np.average(probability[m], weights=w[m]))
            ys.append(np.average(y[m], weights=w[m]))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot(xs, ys, marker="o")
    ax.set(xlabel="predicted P(critical)", ylabel="observed share (traffic-weighted)", title="reliability")
    save(fig, "reliability.png")
    return paths


def format_metrics(name: str, m: dict) -> str:
    keys = ["rows", "positives", "roc_auc", "pr_auc", "recall_at_budget_quantile", "recall_at_threshold",
            "precision_at_threshold", "escalation_rate", "escalation_rate_traffic", "ece_traffic"]
    lines = [f"== {name}"]
    for k in keys:
        v = m.get(k)
        lines.append(f"{k:28s} {v}" if isinstance(v, int) else f"{k:28s} {v:.4f}")
    for k, v in m.items():
        if k.startswith("recall_at_threshold_"):
            lines.append(f"{k:28s} {v:.4f}")
    return "\n".join(lines)


def save_metrics(m: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(m, indent=2))


def run_evaluation(file: str | None, model_uri: str, out: str | None = None, log_mlflow: bool = True, log=print) -> dict:
    """`escalation evaluate`: metrics and plots of a registered model on FILE or the test split."""
    from escalation import settings
    from escalation.config import load_config
    from escalation.predict import load_model

    model = load_model(model_uri)
    prior = load_config(settings.config_path())[0].budget.prior
    if file:
        rows, name = read_labeled(file), Path(file).stem
    else:
        from training.corpus import load_rows

        rows = [{"text": r.text, "label": r.label, "role": r.role} for r in load_rows(settings.CORPUS) if r.split == "test"]
        name = "test-split"
    y = np.array([r["label"] for r in rows])
    roles = [r["role"] for r in rows]
    scored = model.score([r["text"] for r in rows], roles)
    m = metrics(y, scored.score, scored.probability, model.threshold, model.budget, prior, roles=roles)
    out_dir = Path(out or settings.REPORTS / f"eval-{name}-v{model.version}")
    plots = plot_all(y, scored.score, scored.probability, model.threshold, model.budget, prior, out_dir, f"{name}, model v{model.version}")
    save_metrics(m, out_dir / "metrics.json")
    log(format_metrics(f"{name} (model v{model.version}, threshold {model.threshold:.4f}, budget {model.budget:.0%})", m))
    log(f"plots and metrics.json in {out_dir}")
    if log_mlflow:
        import mlflow

        from training.train import ensure_experiment

        ensure_experiment()
        with mlflow.start_run(run_name=f"evaluate {name} v{model.version}"):
            mlflow.set_tags({"kind": "evaluation", "model_version": model.version, "file": str(file or "test split")})
            mlflow.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float)) and np.isfinite(v)})
            for p in plots:
                mlflow.log_artifact(str(p), artifact_path="plots")
    return m
