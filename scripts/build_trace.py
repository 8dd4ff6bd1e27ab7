"""Builds data/trace.jsonl, the shipped day of traffic for `escalation cost-compare` and budget checks,
from the writers' trace part files (data/parts/trace_*.jsonl, not committed).

Texts, roles and labels were written for this project (data/README.md, "The trace"). Token counts are
not observed data: they are drawn once, with a fixed seed, from log-normal distributions per role
whose medians are stated below (an agent's prompt carries its context: code for an implementer, a
diff for a critic, design notes for an architect). They are assumptions to make the cost comparison
concrete; replace them with measured counts when the platform has them.

    python scripts/build_trace.py data/parts/trace_*.jsonl
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.corpus import normalise, row_id  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "data" / "trace.jsonl"
# role: (median input tokens, median output tokens); sigma 0.6 for both; critical tasks carry 1.5x input
TOKENS = {
    "architect": (9000, 1800),
    "orchestrator": (5000, 900),
    "implementer": (12000, 2200),
    "critic": (8000, 700),
    "integrator": (6000, 800),
}


def main(paths: list[str]) -> None:
    rng = np.random.default_rng(20261126)
    parts = [[json.loads(line) for line in open(p, encoding="utf-8") if line.strip()] for p in sorted(paths)]
    # The trace must be traffic the model never trained on: texts already in the corpus are skipped.
    seen = {normalise(json.loads(line)["text"]) for line in open(OUT.parent / "tasks.jsonl", encoding="utf-8")}
    rows = []
    for raw in itertools.chain.from_iterable(itertools.zip_longest(*parts)):  # interleave: one working day
        if raw is None:
            continue
        text = " ".join(raw["text"].split())
        if normalise(text) in seen:
            continue
        seen.add(normalise(text))
        tin, tout = TOKENS[raw["role"]]
        input_tokens = int(rng.lognormal(np.log(tin * (1.5 if raw["label"] else 1.0)), 0.6))
        output_tokens = int(rng.lognormal(np.log(tout), 0.6))
        row = {"id": row_id(text), "seq": len(rows), "text": text, "role": raw["role"], "label": int(raw["label"]),
               "tags": [f"domain:{raw['domain']}", f"style:{raw['style']}"] + ([raw["hard"]] if raw.get("hard") else []),
               "input_tokens": input_tokens, "output_tokens": output_tokens}
        if raw.get("rationale"):
            row["rationale"] = " ".join(raw["rationale"].split())
        rows.append(row)
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} trace rows, {sum(r['label'] for r in rows)} critical")


if __name__ == "__main__":
    main(sys.argv[1:])
