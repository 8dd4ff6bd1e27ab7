"""The budget controller holds the realised rate at the budget when the score mix drifts."""
from __future__ import annotations

import numpy as np
import pytest

from escalation.budget import BudgetController


def drifting_scores(rng, shares, n=3000):
    out = []
    for share in shares:
        y = rng.random(n) < share
        out.append(np.where(y, rng.beta(8, 2, n), rng.beta(2, 8, n)))
    return np.concatenate(out)


def rates(controller, scores, threshold):
    decided = np.array([controller.decide(float(s), threshold)[0] for s in scores])
    return [decided[i:i + 1000].mean() for i in range(0, len(decided), 1000)]


def test_hard_mode_keeps_windows_near_budget_when_critical_share_triples():
    rng = np.random.default_rng(0)
    calib = drifting_scores(rng, [0.05], 20000)
    threshold = float(np.quantile(calib, 0.95))
    scores = drifting_scores(rng, [0.05, 0.15, 0.02])
    static = [(scores[i:i + 1000] >= threshold).mean() for i in range(0, len(scores), 1000)]
    controlled = rates(BudgetController(0.05, "hard", window=1000, min_samples=200), scores, threshold)
    assert max(abs(r - 0.05) for r in static[3:]) > 0.03  # the drift is real
    assert max(abs(r - 0.05) for r in controlled[1:]) < 0.012


def test_held_back_tasks_are_counted_and_soft_mode_does_not_act():
    rng = np.random.default_rng(1)
    scores = drifting_scores(rng, [0.3], 2000)
    threshold = 0.5
    hard = BudgetController(0.05, "hard", window=1000, min_samples=100)
    soft = BudgetController(0.05, "soft", window=1000, min_samples=100)
    actions_hard = [hard.decide(float(s), threshold) for s in scores]
    actions_soft = [soft.decide(float(s), threshold) for s in scores]
    assert hard.held_back > 100
    assert any(a == "held_back" for _, _, a in actions_soft)  # soft mode reports...
    assert [e for e, _, _ in actions_soft] == [bool(s >= threshold) for s in scores]  # ...but decides statically
    assert np.mean([e for e, _, _ in actions_hard[-1000:]]) == pytest.approx(0.05, abs=0.01)


def test_off_mode_and_warmup_use_the_static_threshold():
    c = BudgetController(0.05, "off")
    assert c.decide(0.9, 0.5) == (True, 0.5, None)
    warm = BudgetController(0.05, "hard", min_samples=200)
    for _ in range(199):
        assert warm.decide(0.4, 0.5)[1] == 0.5
    warm.forget()
    assert warm.realised_rate == 0.0


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="use hard, soft or off"):
        BudgetController(0.05, "strict")
