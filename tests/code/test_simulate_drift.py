"""`escalation simulate-drift` core: a drifting score stream, replayed with and without the controller.

Runs on a synthetic score stream (no model): routine scores ~ Beta(2, 8), critical ~ Beta(8, 2), the
static threshold calibrated so that 5% of a 5%-critical stream escalates.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from training.simulate import parse_phases, simulate_stream, stream

BUDGET = 0.05
LAST_LINE = re.compile(r"^max window deviation: controller (\d+\.\d\d) pts, static (\d+\.\d\d) pts$")


@pytest.fixture(scope="module")
def pools():
    rng = np.random.default_rng(42)
    pos, neg = rng.beta(8, 2, 3000), rng.beta(2, 8, 12000)
    # calibration conditions: 5% critical; the threshold escalates 5% of that mix
    calib_labels, calib = stream(pos, neg, [(0.05, 50000)], seed=7)
    threshold = float(np.quantile(calib, 1 - BUDGET))
    return pos, neg, threshold


def drifting(pools, seed, phases="5:4000,12:4000,2:4000"):
    pos, neg, threshold = pools
    labels, scores = stream(pos, neg, parse_phases(phases), seed)
    return list(zip(scores, labels)), threshold


def run(pairs, threshold, mode, **kw):
    lines = []
    summary = simulate_stream(pairs, threshold, BUDGET, mode, window=1000, min_samples=kw.get("min_samples", 150),
                              gain=kw.get("gain", 3.0), echo=lines.append)
    return summary, lines


@pytest.mark.parametrize("seed,phases", [(0, "5:4000,12:4000,2:4000"), (1, "5:3500,12:4300,2:4200"), (2, "5:2000,15:3000,1:3000")])
def test_hard_mode_keeps_every_window_within_one_point_while_static_misses(pools, seed, phases):
    pairs, threshold = drifting(pools, seed, phases)
    summary, lines = run(pairs, threshold, "hard")
    ctrl = [w["controller"] for w in summary["windows"]]
    static = [w["static"] for w in summary["windows"]]
    assert len(ctrl) == len(pairs) // 1000  # consecutive 1,000-task windows, the first one included
    assert [w["start"] for w in summary["windows"]] == list(range(0, len(pairs), 1000))
    assert max(abs(r - BUDGET) for r in ctrl) <= 0.01, ctrl
    assert max(abs(r - BUDGET) for r in static) > 0.03, static
    assert summary["max_dev_controller"] <= 1.0 < 3.0 < summary["max_dev_static"]
    # in the high phase the controller holds back tasks, and most of them are truly critical
    assert summary["held_back"] > 50
    assert summary["held_back_critical"] > summary["held_back"] / 2


def test_last_line_has_the_exact_format_and_matches_the_windows(pools):
    pairs, threshold = drifting(pools, 0)
    summary, lines = run(pairs, threshold, "hard")
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) == pytest.approx(max(abs(w["controller"] - BUDGET) for w in summary["windows"]) * 100, abs=0.005)
    assert float(m.group(2)) == pytest.approx(max(abs(w["static"] - BUDGET) for w in summary["windows"]) * 100, abs=0.005)
    assert len([ln for ln in lines if re.match(r"^\s*\d+-\s*\d+ ", ln)]) == 12


def test_soft_mode_does_not_change_decisions(pools):
    pairs, threshold = drifting(pools, 3)
    summary, lines = run(pairs, threshold, "soft")
    for w in summary["windows"]:
        assert w["controller"] == w["static"]
    # it still reports what it would have held back
    assert summary["held_back"] > 0
    assert "would have held back" in lines[-2]
    assert summary["max_dev_controller"] == summary["max_dev_static"] > 3.0


def test_the_controller_never_sees_labels(pools):
    """Same scores, labels flipped: identical decisions (labels only feed the held-back-critical count)."""
    pairs, threshold = drifting(pools, 4)
    flipped = [(s, not y) for s, y in pairs]
    a, _ = run(pairs, threshold, "hard")
    b, _ = run(flipped, threshold, "hard")
    assert [w["controller"] for w in a["windows"]] == [w["controller"] for w in b["windows"]]
    assert a["held_back"] == b["held_back"]
    assert a["held_back_critical"] + b["held_back_critical"] == a["held_back"]


def test_bad_phases_are_rejected_with_the_expected_format():
    assert parse_phases("5:4000,12:4000,2:4000") == [(0.05, 4000), (0.12, 4000), (0.02, 4000)]
    for bad in ("5-4000", "120:1000", "5:0"):
        with pytest.raises(SystemExit, match="SHARE%:LENGTH"):
            parse_phases(bad)
