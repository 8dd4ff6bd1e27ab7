"""The budget controller: keeps the realised escalation rate at the budget when traffic drifts.

The static threshold escalates the budget share of traffic *as it looked at calibration*. When the
share of critical tasks moves (a design sprint, a quiet week), the realised rate moves with it. The
controller watches the scores it has seen and sets an effective threshold:

    level   = the (1 - target) quantile of the last `fast` scores (tracks the new score mix quickly)
    target  = budget + gain * (budget - realised rate over the last `window` decisions)

`fast` defaults to `min_samples`: the controller starts acting once its quantile window is full, and a
short window (150-200 scores) follows a change in the score mix within a few hundred tasks; longer
windows lag enough that the overspend right after a jump can push a 1,000-task window past ±1 point.
The second term pays back over- or under-spend so that every window of `window` decisions lands near
the budget, not just the long-run average; it pays back with a time constant of about window / gain
decisions. The controller sees scores and its own decisions only, never labels. In `hard` mode the
effective threshold decides; in `soft` mode the static threshold decides and the controller only
reports what it would have done; `off` disables it. A task the static threshold would escalate but the
effective one does not is *held back* (and says so in its reasons); the reverse is *boosted*.
"""
from __future__ import annotations

import bisect
import math
import threading
from collections import deque


class BudgetController:
    def __init__(self, budget: float, mode: str = "hard", window: int = 1000, min_samples: int = 200,
                 gain: float = 1.0, fast: int | None = None):
        if mode not in ("hard", "soft", "off"):
            raise ValueError(f"controller mode {mode!r}: use hard, soft or off")
        self.budget, self.mode, self.window, self.min_samples, self.gain = budget, mode, window, min_samples, gain
        # the quantile window can't be shorter than the warm-up, or the controller would never act
        self.fast = max(fast or min_samples, min_samples)
        # The controller runs once per task on the serving hot path, so it keeps its windows sorted
        # and summed as they change rather than sorting or summing them on every decision.
        self._scores: deque[float] = deque()
        self._sorted: list[float] = []
        self._escalated: deque[int] = deque()
        self._escalated_sum = 0
        self._lock = threading.Lock()
        self.held_back = 0
        self.boosted = 0

    @property
    def realised_rate(self) -> float:
        return self._escalated_sum / len(self._escalated) if self._escalated else 0.0

    def effective_threshold(self, static_threshold: float) -> float:
        if self.mode == "off" or len(self._scores) < self.min_samples:
            return static_threshold
        target = self.budget + self.gain * (self.budget - self.realised_rate)
        target = min(max(target, 0.0), 3 * self.budget)
        if target <= 0:
            return float("inf")
        return _quantile(self._sorted, 1 - target)

    def decide(self, score: float, static_threshold: float) -> tuple[bool, float, str | None]:
        """Returns (escalate, effective threshold, None | 'held_back' | 'boosted') and records it."""
        with self._lock:
            effective = self.effective_threshold(static_threshold)
            static_says, controller_says = score >= static_threshold, score >= effective
            action = None
            if static_says and not controller_says:
                action = "held_back"
            elif controller_says and not static_says:
                action = "boosted"
            escalate = controller_says if self.mode == "hard" else static_says
            if action == "held_back" and self.mode == "hard":
                self.held_back += 1
            if action == "boosted" and self.mode == "hard":
                self.boosted += 1
            self._remember(score, int(escalate))
            return escalate, effective, action

    def _remember(self, score: float, escalated: int) -> None:
        self._scores.append(score)
        bisect.insort(self._sorted, score)
        if len(self._scores) > self.fast:
            del self._sorted[bisect.bisect_left(self._sorted, self._scores.popleft())]
        self._escalated.append(escalated)
        self._escalated_sum += escalated
        if len(self._escalated) > self.window:
            self._escalated_sum -= self._escalated.popleft()

    def forget(self) -> None:
        """Called when the model changes: old scores are on another model's scale."""
        with self._lock:
            self._scores.clear()
            self._sorted.clear()
            self._escalated.clear()
            self._escalated_sum = 0


def _quantile(ordered: list[float], q: float) -> float:
    """numpy.quantile's default ('linear') on an already sorted list, to the same rounding."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    a, b, t = ordered[lo], ordered[hi], h - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
