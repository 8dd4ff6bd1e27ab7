"""`escalation cost-compare` core on a tiny trace with a stub scorer (fixed scores, no model, no network).

The expected costs are computed here from the token counts and the prices read from the config files,
independently of escalation.config.ModelSpec.cost.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from escalation import settings
from escalation.schema import ROLES
from training.cost_compare import compare, reduction_pct

BASELINE = settings.PREVIOUS_LANDSCAPE_CONFIG
CANDIDATE = settings.DEFAULT_CONFIG
THRESHOLD = 0.5
CRITICAL = {3, 17, 29}  # rows the stub scorer scores above the threshold


@pytest.fixture
def trace(tmp_path) -> Path:
    rows = []
    for i in range(40):
        rows.append({"text": f"task {i}", "role": ROLES[i % len(ROLES)],
                     "input_tokens": 1000 + 137 * i, "output_tokens": 200 + 31 * i})
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stub_scorer(texts, roles):
    return [0.9 if int(t.split()[1]) in CRITICAL else 0.1 for t in texts]


def expected(trace: Path, config_path: Path, escalated: set[int]) -> dict[str, float]:
    cfg = yaml.safe_load(config_path.read_text())
    prices = cfg["models"]
    out: dict[str, float] = {}
    for i, line in enumerate(trace.read_text().splitlines()):
        r = json.loads(line)
        model = cfg["escalation"]["critical_model"] if i in escalated else cfg["roles"][r["role"]]["chain"][0]
        p = prices[model]
        usd = r["input_tokens"] * p["input_usd_per_mtok"] / 1e6 + r["output_tokens"] * p["output_usd_per_mtok"] / 1e6
        out[model] = out.get(model, 0.0) + usd
    return out


def test_costs_are_tokens_times_the_configs_prices(trace, tmp_path):
    chart = tmp_path / "out" / "cost.png"
    lines = []
    res = compare(str(trace), str(BASELINE), str(CANDIDATE), chart=str(chart), echo=lines.append,
                  scorer=stub_scorer, threshold=THRESHOLD)

    # the previous landscape never escalates; the hybrid plan escalates exactly the three stub-critical rows
    # (40 rows < the controller's warm-up, so the static threshold decides)
    assert res["baseline"]["escalated"] == 0
    assert res["candidate"]["escalated"] == len(CRITICAL)

    for name, path, esc in (("baseline", BASELINE, set()), ("candidate", CANDIDATE, CRITICAL)):
        want = expected(trace, path, esc)
        got = res[name]["by_model"]
        assert set(got) == set(want)
        for m in want:
            assert got[m] == pytest.approx(want[m], rel=1e-12), (name, m)
        assert res[name]["total"] == pytest.approx(sum(want.values()), rel=1e-12)
        assert sum(res[name]["by_role"].values()) == pytest.approx(res[name]["total"], rel=1e-12)

    # a paid model is actually charged (the check above would pass trivially if every price were 0)
    assert res["candidate"]["by_model"]["anthropic/claude-opus-4.1"] > 0
    assert res["baseline"]["by_model"]["openai/gpt-5"] > 0

    b, c = res["baseline"]["total"], res["candidate"]["total"]
    assert res["reduction_pct"] == pytest.approx((b - c) / b * 100)
    assert reduction_pct(10.0, 6.0) == pytest.approx(40.0)
    assert reduction_pct(10.0, 12.5) == pytest.approx(-25.0)
    assert any(line.startswith("reduction: ") for line in lines)
    assert f"{res['reduction_pct']:.1f}%" in next(line for line in lines if line.startswith("reduction: "))

    assert chart.exists() and chart.stat().st_size > 1000
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spend_cap_downgrades_escalations(trace, tmp_path):
    cfg = yaml.safe_load(CANDIDATE.read_text())
    cfg["escalation"]["daily_spend_cap_usd"] = 0.0
    capped = tmp_path / "capped.yaml"
    capped.write_text(yaml.safe_dump(cfg))
    res = compare(str(trace), str(BASELINE), str(capped), echo=lambda *_: None, scorer=stub_scorer, threshold=THRESHOLD)
    assert res["candidate"]["escalated"] == 0 and res["candidate"]["capped"] == len(CRITICAL)
    assert "anthropic/claude-opus-4.1" not in res["candidate"]["by_model"]


def test_scorer_needs_a_threshold(trace):
    with pytest.raises(ValueError, match="threshold"):
        compare(str(trace), str(BASELINE), str(CANDIDATE), scorer=stub_scorer)
