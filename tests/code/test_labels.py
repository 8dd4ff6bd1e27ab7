"""Reviewers' labels: majority and disputes, merge rules, export in the corpus schema, terminal review."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

from sqlalchemy import select

from escalation import store
from escalation.schema import CorpusRow
from tests.conftest import ROOT
from training.corpus import row_id, split_for
from training.labels import merge_reviewed, resolve, reviewed_holdout, terminal_review

T0 = datetime(2026, 11, 20, 10, 0)


def label(text, verdict, reviewer, minutes=0, role="architect", note=None):
    return {"text": text, "verdict": verdict, "reviewer": reviewer, "created": T0 + timedelta(minutes=minutes), "role": role, "note": note}


def test_majority_wins_ties_are_disputed_and_skips_do_not_vote():
    rows, disputed = resolve([
        label("Adopt one event bus for all teams", "critical", "ana"),
        label("Adopt one event bus for all teams", "critical", "bo", 1),
        label("Adopt one event bus for all teams", "routine", "cy", 2, note="only two teams use it"),
        label("rename the cache module", "routine", "ana"),
        label("rename the cache module", "skip", "bo"),
        label("Shared or separate ledger per tenant?", "critical", "ana"),
        label("Shared or separate ledger per tenant?", "routine", "bo"),
        label("only a skip here", "skip", "ana"),
    ])
    by_text = {r.text: r for r in rows}
    assert by_text["Adopt one event bus for all teams"].label == 1
    assert by_text["Adopt one event bus for all teams"].reviewer == "ana,bo,cy"
    assert "only two teams use it" in by_text["Adopt one event bus for all teams"].rationale
    assert by_text["rename the cache module"].label == 0
    assert disputed == ["Shared or separate ledger per tenant?"]
    assert "only a skip here" not in by_text
    assert all(r.source == "review" for r in rows)


def corpus_row(text, label_, split):
    return CorpusRow(id=row_id(text), text=text, label=label_, role="critic", split=split, source="authored", tags=[],
                     rationale="x" if label_ else None)


def test_a_reviewed_label_wins_for_the_same_text_and_keeps_its_split():
    corpus = [corpus_row("Keep one database per service", 0, "test"), corpus_row("fix flaky test", 0, "train")]
    reviewed, _ = resolve([label("keep one database per service!", "critical", "ana")])  # same text once normalised
    merged, report = merge_reviewed(corpus, reviewed)
    assert report["reviewed_overrides"] == 1 and len(merged) == 2
    assert merged[0].label == 1 and merged[0].split == "test" and merged[0].source == "review" and merged[0].id == corpus[0].id


def test_new_reviewed_texts_join_training_or_are_held_out_by_hash():
    texts = [f"Decide the storage engine for tenant archive number {i}" for i in range(40)]
    reviewed, _ = resolve([label(t, "critical", "ana") for t in texts])
    merged, report = merge_reviewed([], reviewed)
    held = reviewed_holdout([], reviewed)
    assert report["reviewed_added"] + report["reviewed_held_out"] == 40
    assert {r.text for r in held} == {t for t in texts if split_for(row_id(t)) == "test"}
    assert all(r.split == "train" for r in merged) and not {r.text for r in merged} & {r.text for r in held}
    assert 0 < len(held) < 40


def seed_queue(url, texts):
    eng = store.engine(url)
    with eng.begin() as conn:
        for i, t in enumerate(texts):
            conn.execute(store.review_items.insert().values(id=f"item{i}", created=store.utcnow(), text=t, role="architect",
                                                            score=0.5, probability=0.05, threshold=0.6, uncertainty=0.1 * i,
                                                            reason="borderline", model_version="1"))
    return eng


def test_terminal_review_and_export(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'review.db'}"
    eng = seed_queue(url, ["Move billing to its own database", "bump the redis client", "Pick one CI system for every repo"])
    store.add_reviewer(eng, "ana")
    answers = iter(["c", "", "x", "r", "looks routine", "s", ""])  # "x" is not a choice: asked again
    shown = []
    stored = terminal_review(url, "ana", 10, read=lambda prompt: next(answers), write=shown.append)
    assert stored == 3
    assert any("Move billing to its own database" in line for line in shown)
    with eng.connect() as conn:
        got = conn.execute(select(store.labels.c.item_id, store.labels.c.verdict, store.labels.c.note)).all()
    assert sorted(got) == [("item0", "critical", None), ("item1", "routine", "looks routine"), ("item2", "skip", None)]
    assert store.pending_for(eng, "ana") == []  # nothing left for ana
    assert [i["id"] for i in store.pending_for(eng, "bo")] == []  # labeled, agreed items are done for everyone

    monkeypatch.setenv("ESCALATION_DB_URL", url)
    out = subprocess.run([sys.executable, "-m", "cli.main", "labels", "export"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    exported = [CorpusRow.model_validate(json.loads(line)) for line in out.stdout.splitlines()]
    assert {(r.text, r.label) for r in exported} == {("Move billing to its own database", 1), ("bump the redis client", 0)}
    assert all(r.source == "review" and r.reviewer == "ana" and r.reviewed_at for r in exported)


def test_disagreement_keeps_both_labels_and_reopens_the_item(tmp_path):
    url = f"sqlite:///{tmp_path / 'review.db'}"
    eng = seed_queue(url, ["Share the orders database with billing?"])
    with eng.begin() as conn:
        for who, verdict in (("ana", "critical"), ("bo", "routine")):
            conn.execute(store.labels.insert().values(item_id="item0", text="Share the orders database with billing?", role="architect",
                                                      verdict=verdict, reviewer=who, created=store.utcnow()))
    pending = store.pending_for(eng, "cy")
    assert len(pending) == 1 and pending[0]["disputed"]
    assert {(v["reviewer"], v["verdict"]) for v in pending[0]["labels"]} == {("ana", "critical"), ("bo", "routine")}
    assert store.pending_for(eng, "ana") == []  # ana already said hers
