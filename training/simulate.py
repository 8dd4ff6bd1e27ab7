"""`escalation simulate-drift`: replays a drifting stream through the static threshold and the budget
controller, and prints the realised escalation rate per 1,000-task window for both.

The stream is built from real model scores: the champion scores the corpus test split (never trained
on), and each simulated task draws a score from the critical or the routine pool, with the critical
share of each phase as given (default 5% -> 12% -> 2%; the first phase is the calibration condition,
a 5% critical share). The controller is the one the service runs (escalation.budget.BudgetController)
with the settings of config/routing.yaml; it sees each task's score and its own past decisions, never
a label. Labels are used only afterwards, to count how many held-back tasks were truly critical.

The core (`replay`, `report`, `simulate_stream`) takes (score, label) pairs and a threshold, so it runs
on any score stream without loading a model; `simulate` adds the model and the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from escalation.budget import BudgetController

WINDOW = 1000  # the reporting window: consecutive, non-overlapping blocks of this many tasks


def parse_phases(spec: str) -> list[tuple[float, int]]:
    phases = []
    for part in spec.split(","):
        share, _, length = part.partition(":")
        try:
            phase = (float(share) / 100, int(length))
        except ValueError:
            phase = None
        if phase is None or not (0 <= phase[0] <= 1) or phase[1] <= 0:
            raise SystemExit(f"--phases {spec!r}: write phases as SHARE%:LENGTH with 0 <= SHARE <= 100 and "
                             f"LENGTH > 0, e.g. 5:4000,12:4000,2:4000")
        phases.append(phase)
    return phases


def stream(pos: np.ndarray, neg: np.ndarray, phases, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a drifting stream: each task is critical with its phase's share and takes a
    score drawn (with replacement) from the critical pool `pos` or the routine pool `neg`."""
    rng = np.random.default_rng(seed)
    labels, scores = [], []
    for share, length in phases:
        y = rng.random(length) < share
        s = np.where(y, rng.choice(pos, length), rng.choice(neg, length))
        labels.append(y)
        scores.append(s)
    return np.concatenate(labels), np.concatenate(scores)


@dataclass
class Replay:
    scores: np.ndarray
    labels: np.ndarray
    static: np.ndarray      # the static threshold's decisions
    controlled: np.ndarray  # the decisions actually taken with the controller (hard: its own; soft: static)
    held: np.ndarray        # static would escalate, the controller's effective threshold would not


def replay(pairs: Iterable[tuple[float, bool]], threshold: float, controller: BudgetController) -> Replay:
    """Feeds each score to the controller in order; the label is kept aside and never shown to it."""
    scores, labels, controlled, held = [], [], [], []
    for score, label in pairs:
        escalate, _, action = controller.decide(float(score), threshold)
        scores.append(float(score))
        labels.append(bool(label))
        controlled.append(bool(escalate))
        held.append(action == "held_back")
    s = np.array(scores, dtype=float)
    return Replay(s, np.array(labels, dtype=bool), s >= threshold, np.array(controlled, dtype=bool), np.array(held, dtype=bool))


def report(r: Replay, budget: float, mode: str = "hard", echo: Callable[[str], None] = print, window: int = WINDOW) -> dict:
    """Prints one row per consecutive `window`-task block and, as the last line,
    `max window deviation: controller X.XX pts, static Y.YY pts`. A trailing partial block is reported
    but not counted in the maximum (its rate is over fewer tasks)."""
    held_title = "held back" if mode == "hard" else "would hold"
    echo(f"{'tasks':>13s} {'critical':>9s} {'static':>8s} {'controller':>11s} {held_title:>10s} {'of them critical':>17s}")
    dev_static, dev_ctrl, rows = [], [], []
    for start in range(0, len(r.scores), window):
        sl = slice(start, start + window)
        n = len(r.scores[sl])
        rs, rc = float(r.static[sl].mean()), float(r.controlled[sl].mean())
        h, hc = int(r.held[sl].sum()), int((r.held[sl] & r.labels[sl]).sum())
        if n == window:
            dev_static.append(abs(rs - budget))
            dev_ctrl.append(abs(rc - budget))
        rows.append({"start": start, "n": n, "critical_share": float(r.labels[sl].mean()), "static": rs,
                     "controller": rc, "held_back": h, "held_back_critical": hc})
        echo(f"{start:6d}-{start + n:6d} {r.labels[sl].mean():9.1%} {rs:8.2%} {rc:11.2%} {h:10d} {hc:17d}"
             + ("" if n == window else "  (partial window, not counted)"))
    if not dev_ctrl:
        raise SystemExit(f"the stream has {len(r.scores)} tasks; it needs at least one full window of {window}")
    total_held, total_held_crit = int(r.held.sum()), int((r.held & r.labels).sum())
    recall = lambda d: float(d[r.labels].mean()) if r.labels.any() else float("nan")  # noqa: E731
    verb = "held back" if mode == "hard" else "would have held back (soft mode: decisions unchanged)"
    echo(f"{verb} in total: {total_held} tasks, {total_held_crit} of them truly critical; "
         f"recall of critical tasks: static {recall(r.static):.3f}, controller {recall(r.controlled):.3f}")
    summary = {"windows": rows, "held_back": total_held, "held_back_critical": total_held_crit,
               "max_dev_controller": max(dev_ctrl) * 100, "max_dev_static": max(dev_static) * 100}
    echo(f"max window deviation: controller {summary['max_dev_controller']:.2f} pts, static {summary['max_dev_static']:.2f} pts")
    return summary


def simulate_stream(pairs: Iterable[tuple[float, bool]], threshold: float, budget: float, mode: str = "hard",
                    window: int = 1000, min_samples: int = 200, gain: float = 1.0,
                    echo: Callable[[str], None] = print) -> dict:
    """The simulation without a model: a fresh controller, the replay, the per-window report."""
    controller = BudgetController(budget, mode, window, min_samples, gain)
    return report(replay(pairs, threshold, controller), budget, mode, echo)


def simulate(model_uri: str, phases_spec: str, mode: str = "hard", seed: int = 0, echo=print) -> dict:
    from escalation import settings
    from escalation.config import load_config
    from escalation.predict import load_model
    from training.corpus import load_rows

    phases = parse_phases(phases_spec)
    config = load_config(settings.config_path())[0]
    model = load_model(model_uri)
    test = [r for r in load_rows(settings.CORPUS) if r.split == "test"]
    s = model.score([r.text for r in test], [r.role for r in test]).score
    y = np.array([r.label for r in test])
    pos, neg = s[y == 1], s[y == 0]
    labels, scores = stream(pos, neg, phases, seed)
    c = config.budget.controller
    budget = config.budget.share
    echo(f"model v{model.version}, threshold {model.threshold:.4f}, budget {budget:.0%}, controller {mode} "
         f"(window {c.window}, min samples {c.min_samples}, gain {c.gain}); pools: {len(pos)} critical, "
         f"{len(neg)} routine test-split scores from {settings.CORPUS.name}; phases {phases_spec}, seed {seed}")
    return simulate_stream(zip(scores, labels), model.threshold, budget, mode, c.window, c.min_samples, c.gain, echo)
