"""`escalation simulate-drift`: replays a drifting stream through the static threshold and the budget
controller, and prints the realised escalation rate per 1,000-task window for both.

The stream is built from real model scores: the champion scores the corpus test split (never trained
on), and each simulated task draws a score from the critical or the routine pool, with the critical
share of each phase as given (default 5% -> 12% -> 2%). The controller is the one the service runs
(escalation.budget.BudgetController) with the settings of config/routing.yaml.
"""
from __future__ import annotations

import numpy as np

from escalation import settings
from escalation.budget import BudgetController
from escalation.config import load_config
from escalation.predict import load_model
from training.corpus import load_rows

WINDOW = 1000


def parse_phases(spec: str) -> list[tuple[float, int]]:
    phases = []
    for part in spec.split(","):
        share, _, length = part.partition(":")
        try:
            phases.append((float(share) / 100, int(length)))
        except ValueError:
            raise SystemExit(f"--phases {spec!r}: write phases as SHARE%:LENGTH, e.g. 5:4000,12:4000,2:4000") from None
    return phases


def stream(pos: np.ndarray, neg: np.ndarray, phases, seed: int):
    rng = np.random.default_rng(seed)
    labels, scores = [], []
    for share, length in phases:
        y = rng.random(length) < share
        s = np.where(y, rng.choice(pos, length), rng.choice(neg, length))
        labels.append(y)
        scores.append(s)
    return np.concatenate(labels), np.concatenate(scores)


def run(scores, labels, threshold: float, controller: BudgetController):
    static = scores >= threshold
    controlled = np.zeros(len(scores), dtype=bool)
    held = np.zeros(len(scores), dtype=bool)
    for i, s in enumerate(scores):
        controlled[i], _, action = controller.decide(float(s), threshold)
        held[i] = action == "held_back"
    return static, controlled, held


def simulate(model_uri: str, phases_spec: str, mode: str = "hard", seed: int = 0, echo=print) -> dict:
    config = load_config(settings.config_path())[0]
    model = load_model(model_uri)
    test = [r for r in load_rows(settings.CORPUS) if r.split == "test"]
    s = model.score([r.text for r in test], [r.role for r in test]).score
    y = np.array([r.label for r in test])
    pos, neg = s[y == 1], s[y == 0]
    phases = parse_phases(phases_spec)
    labels, scores = stream(pos, neg, phases, seed)
    c = config.budget.controller
    controller = BudgetController(config.budget.share, mode, c.window, c.min_samples, c.gain)
    static, controlled, held = run(scores, labels, model.threshold, controller)
    budget = config.budget.share

    echo(f"model v{model.version}, threshold {model.threshold:.4f}, budget {budget:.0%}, controller {mode} "
         f"(window {c.window}, min samples {c.min_samples}, gain {c.gain}); pools: {len(pos)} critical, {len(neg)} routine test-split scores")
    echo(f"{'tasks':>13s} {'critical':>9s} {'static':>8s} {'controller':>11s} {'held back':>10s} {'of them critical':>17s}")
    dev_static, dev_ctrl, rows = [], [], []
    for start in range(0, len(scores), WINDOW):
        sl = slice(start, start + WINDOW)
        n = len(scores[sl])
        rs, rc = static[sl].mean(), controlled[sl].mean()
        h, hc = int(held[sl].sum()), int((held[sl] & labels[sl]).sum())
        dev_static.append(abs(rs - budget))
        dev_ctrl.append(abs(rc - budget))
        rows.append({"start": start, "critical_share": float(labels[sl].mean()), "static": float(rs), "controller": float(rc), "held_back": h, "held_back_critical": hc})
        echo(f"{start:6d}-{start + n:6d} {labels[sl].mean():9.1%} {rs:8.2%} {rc:11.2%} {h:10d} {hc:17d}")
    total_held, total_held_crit = int(held.sum()), int((held & labels).sum())
    echo(f"held back in total: {total_held} tasks, {total_held_crit} of them truly critical; "
         f"recall of critical tasks: static {static[labels].mean():.3f}, controller {controlled[labels].mean():.3f}")
    summary = {"windows": rows, "max_dev_controller": max(dev_ctrl) * 100, "max_dev_static": max(dev_static) * 100}
    echo(f"max window deviation: controller {summary['max_dev_controller']:.2f} pts, static {summary['max_dev_static']:.2f} pts")
    return summary
