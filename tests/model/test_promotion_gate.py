"""The promotion gate refuses a worse challenger, says which metric dropped, logs the refusal to
MLflow, and `--force` overrides it. Runs in a registry of its own (see `private_registry`), so the
session's champion is never touched; the accepted path is in tests/test_lifecycle_e2e.py.
"""
from __future__ import annotations

from click.testing import CliRunner

from cli.main import main as cli
from escalation import settings, store
from escalation.registry import champion_history, version_for
from tests.conftest import gate_runs
from training.calibrate import wilson_interval
from training.promote import MIN_SHADOW_DECISIONS, promote

TEST_SPLIT_DROP = "recall at the budget on the test split drops"


def alias(name: str) -> str | None:
    return version_for(f"models:/{settings.MODEL_NAME}@{name}")


def cli_promote(*args: str):
    """`escalation promote ARGS` in this process (the private stores are in its environment)."""
    return CliRunner().invoke(cli, ["promote", *args], catch_exceptions=False)


def test_a_worse_challenger_is_refused_and_force_overrides(private_registry):
    reg = private_registry
    corpus = str(reg.gate_corpus)
    assert (alias(settings.CHAMPION), alias(settings.CHALLENGER)) == (reg.champion, reg.challenger)

    # refused in process: False, the reason names the metric, nothing moves
    lines: list[str] = []
    assert promote(corpus=reg.gate_corpus, log=lines.append) is False, "\n".join(lines)
    refusals = [line.removeprefix("refused: ") for line in lines if line.startswith("refused: ")]
    assert any(r.startswith(TEST_SPLIT_DROP) for r in refusals), lines
    assert not any("--force" in line or "@champion ->" in line for line in lines), lines
    assert alias(settings.CHAMPION) == reg.champion and alias(settings.CHALLENGER) == reg.challenger
    assert champion_history() == [reg.champion]

    # the comparison is an MLflow run, and its numbers are the ones the refusal quotes
    (run,) = gate_runs()
    tags, m = run.data.tags, run.data.metrics
    assert (tags["champion"], tags["challenger"], tags["promoted"], tags["forced"]) == (reg.champion, reg.challenger, "False", "False")
    assert tags["refusals"] == "; ".join(refusals)
    assert m["challenger_test_recall"] < m["champion_test_recall"]
    assert f"{TEST_SPLIT_DROP} {m['champion_test_recall']:.4f} -> {m['challenger_test_recall']:.4f}" in refusals
    assert "champion_reviewed_recall" not in m  # no reviewer labels in this database: that check is n/a, not a pass
    assert m["challenger_traffic_rate"] >= 0 and m["challenger_rate_bound"] > 0

    # refused on the command line: non-zero exit, same reason, nothing moves
    out = cli_promote("--corpus", corpus)
    assert out.exit_code == 1, out.output
    assert f"refused: {TEST_SPLIT_DROP}" in out.output
    assert alias(settings.CHAMPION) == reg.champion
    assert [r.data.tags["promoted"] for r in gate_runs()] == ["False", "False"]

    # --force promotes anyway, says so, and records that it was forced
    out = cli_promote("--force", "--corpus", corpus)
    assert out.exit_code == 0, out.output
    assert f"refused: {TEST_SPLIT_DROP}" in out.output and "--force: promoting despite the refusal" in out.output
    assert f"@champion -> v{reg.challenger} (was v{reg.champion})" in out.output
    assert alias(settings.CHAMPION) == reg.challenger
    assert champion_history() == [reg.champion, reg.challenger]  # so `escalation rollback` can undo it
    forced = gate_runs()[-1].data.tags
    assert (forced["promoted"], forced["forced"]) == ("True", "True") and TEST_SPLIT_DROP in forced["refusals"]


LIVE_RATE = "live tasks in shadow"


def shadowed(db_url: str, champion: str, challenger: str, escalated: int, total: int, tag: str) -> None:
    """`total` live shadow rows for challenger against champion, `escalated` of them escalated by the challenger."""
    with store.engine(db_url).begin() as conn:
        conn.execute(store.shadow_scores.insert(), [
            {"id": f"{tag}-{i}", "time": store.utcnow(), "champion_version": champion, "challenger_version": challenger,
             "champion_score": 0.1, "challenger_score": 0.9 if i < escalated else 0.1, "champion_escalate": False,
             "challenger_escalate": i < escalated}
            for i in range(total)])


def test_a_challenger_escalating_too_much_live_traffic_in_shadow_is_refused(private_registry):
    """The live escalation rate in shadow is checked against the challenger's bound, once there are enough rows."""
    reg = private_registry
    bound = reg.models[reg.challenger].meta["threshold"]["escalation_rate_ucb95"]
    n = MIN_SHADOW_DECISIONS

    def gate() -> list[str]:
        lines: list[str] = []
        promote(corpus=reg.gate_corpus, log=lines.append)
        return lines

    # too few live tasks: reported, not judged, however high the rate
    shadowed(reg.db_url, reg.champion, reg.challenger, n // 2, n // 2, "few")
    lines = gate()
    assert any(line.startswith("escalation rate (shadow)") and f"{n // 2} live tasks; checked from {n} on" in line for line in lines), lines
    assert not any(LIVE_RATE in line for line in lines if line.startswith("refused: ")), lines

    # enough live tasks, half of them escalated: far above the bound, refused and named
    shadowed(reg.db_url, reg.champion, reg.challenger, n // 2, n // 2, "many")
    lines = gate()
    low = wilson_interval(1.0, n)[0]
    assert (f"refused: escalation rate on {n} live tasks in shadow 1.0000 (95% lower bound {low:.4f}) "
            f"exceeds its bound {bound:.4f}") in lines, lines
    assert gate_runs()[-1].data.metrics["shadow_escalation_rate"] == 1.0
    assert LIVE_RATE in gate_runs()[-1].data.tags["refusals"]
    assert alias(settings.CHAMPION) == reg.champion

    # a live rate at the bound is within noise: not refused for it
    with store.engine(reg.db_url).begin() as conn:
        conn.execute(store.shadow_scores.delete())
    at_bound = round(bound * 4 * n)
    shadowed(reg.db_url, reg.champion, reg.challenger, at_bound, 4 * n, "at-bound")
    lines = gate()
    assert not any(LIVE_RATE in line for line in lines if line.startswith("refused: ")), lines
