"""Assembles data/tasks.jsonl from the writers' part files (data/parts/part_*.jsonl, not committed).

Run once per writing round. It never rewrites a row already in data/tasks.jsonl: ids and splits of
existing rows stay as they are; new rows get an id from their normalised text and the split of their
near-duplicate cluster (a hash of the cluster's first id). Rows that would break the corpus rules
(exact duplicates, one-word swaps, near-duplicates beyond the 5% allowance) are dropped and counted.

    python scripts/assemble_corpus.py data/parts/part_*.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from escalation.schema import CorpusRow  # noqa: E402
from training import corpus as C  # noqa: E402
from training.encoder_export import load_encoder  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "data" / "tasks.jsonl"
NEAR_DUP_TARGET = 0.035  # stay well inside the 5% rule


def to_row(raw: dict, source: str) -> dict:
    text = " ".join(raw["text"].split())
    words = len(text.split())
    tags = [f"domain:{raw['domain']}", f"style:{raw['style']}"]
    if raw.get("hard"):
        tags.append(raw["hard"])
    if words < 10:
        tags.append("short")
    elif words > 40:
        tags.append("long")
    row = {"id": C.row_id(text), "text": text, "label": int(raw["label"]), "role": raw["role"],
           "split": "train", "source": source, "tags": tags}
    if raw.get("rationale"):
        row["rationale"] = " ".join(str(raw["rationale"]).split())
    return row


def main(paths: list[str]) -> None:
    existing = C.load_rows(OUT) if OUT.exists() else []
    rows = [r.model_dump(mode="json", exclude_none=True) for r in existing]
    seen = {C.normalise(r["text"]) for r in rows}
    dropped = {"exact duplicate": 0, "bad row": 0, "one-word swap": 0, "near duplicate": 0}
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                row = to_row(raw, "authored")
                CorpusRow.model_validate(row)
            except Exception:
                dropped["bad row"] += 1
                continue
            key = C.normalise(row["text"])
            if key in seen:
                dropped["exact duplicate"] += 1
                continue
            seen.add(key)
            rows.append(row)
    n_existing = len(existing)
    swaps = C.one_word_swaps([r["text"] for r in rows])
    drop = {b for a, b in swaps if b >= n_existing}
    dropped["one-word swap"] = len(drop)
    rows = [r for i, r in enumerate(rows) if i not in drop]

    encoder = load_encoder(quantize=False)
    vectors = encoder.encode([r["text"] for r in rows])
    pairs = C.near_duplicate_pairs(vectors)
    # Drop the later row of near-duplicate pairs (never an existing row) until the share is small.
    removed: set[int] = set()
    for a, b, _ in sorted(pairs, key=lambda p: -p[2]):
        involved = {i for x, y, _ in pairs if x not in removed and y not in removed for i in (x, y)}
        if len(involved) / (len(rows) - len(removed)) <= NEAR_DUP_TARGET:
            break
        if a in removed or b in removed:
            continue
        victim = max(a, b)
        if victim >= n_existing:
            removed.add(victim)
    dropped["near duplicate"] = len(removed)
    keep = [i for i in range(len(rows)) if i not in removed]
    rows = [rows[i] for i in keep]
    vectors = vectors[keep]
    roots = C.clusters(len(rows), C.near_duplicate_pairs(vectors))
    for i, r in enumerate(rows):
        if i >= n_existing:
            r["split"] = C.split_for(rows[roots[i]]["id"])
    C.write_rows(rows, OUT)
    print(f"wrote {len(rows)} rows ({len(rows) - n_existing} new); dropped {dropped}")


if __name__ == "__main__":
    main(sys.argv[1:])
