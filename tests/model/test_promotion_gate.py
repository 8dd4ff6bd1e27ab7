"""The promotion gate refuses a worse challenger, says which metric dropped, logs the refusal to
MLflow, and `--force` overrides it. Runs in a registry of its own (see `private_registry`), so the
session's champion is never touched; the accepted path is in tests/test_lifecycle_e2e.py.
"""
from __future__ import annotations

from click.testing import CliRunner

from cli.main import main as cli
from escalation import settings
from escalation.registry import champion_history, version_for
from tests.conftest import gate_runs
from training.promote import promote

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
