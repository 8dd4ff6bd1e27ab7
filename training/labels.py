"""Reviewers' labels as training data: resolving them, merging them into the corpus, exporting them.

Several reviewers may label the same text; nothing is overwritten in the database. For training, a
text's verdicts are resolved by majority of critical/routine votes (skips do not vote); a tie is
*disputed* and left out until another reviewer breaks it. A resolved reviewed label wins over the
corpus label for the same (normalised) text; the merge reports what it did.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

from sqlalchemy import select

from escalation import store
from escalation.schema import CorpusRow
from training.corpus import normalise, row_id, split_for


def resolve(label_rows: list[dict]) -> tuple[list[CorpusRow], list[str]]:
    """Majority verdict per text -> corpus rows (source: review); returns (rows, disputed texts)."""
    by_text: dict[str, list[dict]] = defaultdict(list)
    for r in label_rows:
        by_text[normalise(r["text"])].append(r)
    rows, disputed = [], []
    for key, group in by_text.items():
        votes = [g for g in group if g["verdict"] in ("critical", "routine")]
        if not votes:
            continue
        critical = sum(g["verdict"] == "critical" for g in votes)
        routine = len(votes) - critical
        if critical == routine:
            disputed.append(group[0]["text"])
            continue
        latest = max(votes, key=lambda g: g["created"])
        reviewers_ = sorted({g["reviewer"] for g in votes})
        label = int(critical > routine)
        notes = "; ".join(g["note"] for g in votes if g.get("note"))
        rows.append(CorpusRow(
            id=row_id(latest["text"]), text=latest["text"], label=label, role=latest["role"] or "implementer",
            split=split_for(row_id(latest["text"])), source="review", tags=["reviewed"],
            rationale=(notes or f"reviewed: {critical} critical, {routine} routine votes")[:300].replace("\n", " "),
            reviewer=",".join(reviewers_), reviewed_at=latest["created"], note=notes or None,
        ))
    return rows, disputed


def reviewed_rows(db_url: str) -> list[CorpusRow]:
    eng = store.engine(db_url)
    with eng.connect() as conn:
        label_rows = [dict(r) for r in conn.execute(select(store.labels)).mappings().all()]
    rows, _ = resolve(label_rows)
    return rows


def merge_reviewed(corpus: list[CorpusRow], reviewed: list[CorpusRow]) -> tuple[list[CorpusRow], dict]:
    """Reviewed labels win for the same text; new reviewed texts join the train split.

    A reviewed label for a text already in the corpus replaces that row's label and keeps its split
    (a reviewer's correction of a test row improves the test split; the split itself stays frozen).
    A new reviewed text whose hash puts it in the test split is held out of training: those rows are
    the *reviewed set* the promotion gate scores (see `reviewed_holdout`).
    """
    index = {normalise(r.text): i for i, r in enumerate(corpus)}
    merged = list(corpus)
    report = {"corpus_rows": len(corpus), "reviewed_rows": len(reviewed), "reviewed_added": 0,
              "reviewed_overrides": 0, "reviewed_agreeing": 0, "reviewed_held_out": 0}
    for r in reviewed:
        i = index.get(normalise(r.text))
        if i is not None:
            if merged[i].label != r.label:
                merged[i] = r.model_copy(update={"split": merged[i].split, "id": merged[i].id, "role": merged[i].role})
                report["reviewed_overrides"] += 1
            else:
                report["reviewed_agreeing"] += 1
        elif r.split == "test":
            report["reviewed_held_out"] += 1
        else:
            merged.append(r)
            report["reviewed_added"] += 1
    return merged, report


def reviewed_holdout(corpus: list[CorpusRow], reviewed: list[CorpusRow]) -> list[CorpusRow]:
    """The reviewed rows no model trains on: new texts whose hash falls in the test split."""
    known = {normalise(r.text) for r in corpus}
    return [r for r in reviewed if r.split == "test" and normalise(r.text) not in known]


def export(db_url: str, out: str) -> None:
    rows = reviewed_rows(db_url)
    stream = sys.stdout if out == "-" else open(out, "w", encoding="utf-8")
    try:
        for r in rows:
            stream.write(json.dumps(r.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n")
    finally:
        if stream is not sys.stdout:
            stream.close()
    print(f"exported {len(rows)} reviewed rows", file=sys.stderr)


def terminal_review(db_url: str, reviewer: str, limit: int, read=input, write=print) -> int:
    """The review page's loop in a terminal. Returns how many labels were stored."""
    eng = store.engine(db_url)
    with eng.connect() as conn:
        if not conn.execute(select(store.reviewers.c.name).where(store.reviewers.c.name == reviewer)).first():
            raise SystemExit(f"unknown reviewer {reviewer!r}; run `escalation reviewers add {reviewer}` first")
    pending = store.pending_for(eng, reviewer)[:limit]
    stored = 0
    for n, it in enumerate(pending, 1):
        write(f"\n[{n}/{len(pending)}] role {it['role'] or 'none'}  score {it['score']:.3f}  threshold {it['threshold']:.3f}  ({it['reason']})")
        if it["disputed"]:
            write("  reviewers disagree: " + "; ".join(f"{v['reviewer']} said {v['verdict']}" for v in it["labels"]))
        write(f"  {it['text']}")
        while True:
            answer = read("  c critical / r routine / s skip / q quit > ").strip().lower()
            if answer in ("c", "r", "s", "q"):
                break
        if answer == "q":
            break
        note = read("  note (enter for none) > ").strip() or None
        verdict = {"c": "critical", "r": "routine", "s": "skip"}[answer]
        with eng.begin() as conn:
            conn.execute(store.labels.insert().values(item_id=it["id"], text=it["text"], role=it["role"], verdict=verdict,
                                                      note=note, reviewer=reviewer, created=store.utcnow()))
        stored += 1
    write(f"stored {stored} labels")
    return stored
