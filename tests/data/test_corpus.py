"""The shipped data: the corpus validates and meets its targets, the data card's statistics are the
file's, the trace is traffic-like and disjoint from the corpus, and no validation text leaked in."""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import DEV_SET, ROOT
from training import corpus as C

CORPUS = ROOT / "data" / "tasks.jsonl"
TRACE = ROOT / "data" / "trace.jsonl"


@pytest.fixture(scope="module")
def report():
    from training.embed_cache import embed
    from training.encoder_export import load_encoder

    fp32 = load_encoder(quantize=False)
    return C.validate(CORPUS, embed=lambda texts: embed(fp32, texts))


def test_corpus_validates_and_meets_every_target(report):
    assert report.errors == []
    assert [name for name, ok, _ in report.targets if not ok] == []
    assert report.near_duplicate_share <= C.MAX_NEAR_DUPLICATE_SHARE


def test_data_card_statistics_are_generated_from_the_file(report):
    card = (ROOT / "data" / "README.md").read_text()
    assert C.card_statistics(card) == C.format_statistics(report.stats), "run `escalation data validate --update-card`"


def test_ids_and_splits_are_stable_functions_of_the_rows():
    rows = C.load_rows(CORPUS)
    assert all(re.fullmatch(r"t-[0-9a-f]{12}", r.id) for r in rows)
    share = sum(r.split == "test" for r in rows) / len(rows)
    assert 0.2 < share < 0.3


def test_trace_is_traffic_like_and_disjoint_from_the_corpus():
    trace = [json.loads(line) for line in open(TRACE)]
    assert len(trace) >= 2000
    assert 0.04 <= sum(r["label"] for r in trace) / len(trace) <= 0.06
    roles = {r["role"] for r in trace}
    assert roles == {"architect", "orchestrator", "implementer", "critic", "integrator"}
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in trace)
    corpus_texts = {C.normalise(r.text) for r in C.load_rows(CORPUS)}
    assert not [r["text"] for r in trace if C.normalise(r["text"]) in corpus_texts]


@pytest.mark.skipif(not DEV_SET.exists(), reason="../shared/eval-dev is not part of the project")
def test_no_validation_text_is_in_the_shipped_data():
    dev = {C.normalise(json.loads(line)["text"]) for line in open(DEV_SET)}
    dev = {t for t in dev if len(t.split()) >= 3}
    ours = [json.loads(line)["text"] for path in (CORPUS, TRACE) for line in open(path)]
    assert [t for t in ours if C.normalise(t) in dev] == []
