"""The labeled corpus: reading it, checking it, splitting it and describing it.

`escalation data validate` runs `validate()`; training calls `load_rows()` and trusts a file that
validates. Splits are derived from a hash of each near-duplicate cluster's first id, so a row never
changes split when others are added, and near-duplicates can never straddle train and test.
"""
from __future__ import annotations

import collections
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from escalation.schema import ROLES, CorpusRow, LineError, parse_corpus_row

NEAR_DUPLICATE_COSINE = 0.92
MAX_NEAR_DUPLICATE_SHARE = 0.05
TEST_SHARE = 0.25

# The corpus targets of the data card; validate() reports each as met or missed.
TARGETS = {
    "rows": 5000,
    "positive_share": (0.10, 0.20),
    "min_role_share": 0.10,
    "short_share": 0.25,  # rows under 10 words
    "long_share": 0.25,  # rows over 40 words
    "hard_negative_share": 0.15,  # of negatives
    "hard_positive_share": 0.20,  # of positives
    "domains": 30,
}


def read_rows(path: str | Path, max_errors: int = 50) -> tuple[list[CorpusRow], list[LineError]]:
    """Parses every line; returns the good rows and one error per bad line (up to max_errors)."""
    rows, errors = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append(parse_corpus_row(str(path), lineno, raw))
            except LineError as e:
                errors.append(e)
                if len(errors) >= max_errors:
                    break
    return rows, errors


def load_rows(path: str | Path) -> list[CorpusRow]:
    rows, errors = read_rows(path)
    if errors:
        raise ValueError(f"{len(errors)} bad line(s), first: {errors[0]}; run `escalation data validate {path}`")
    return rows


def corpus_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def near_duplicate_pairs(embeddings: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE) -> list[tuple[int, int, float]]:
    """All pairs (i < j) with cosine >= threshold; blockwise so 10k rows fit in memory."""
    pairs = []
    for start in range(0, len(embeddings), 1024):
        sims = embeddings[start : start + 1024] @ embeddings.T
        for a, b in zip(*np.nonzero(sims >= threshold)):
            i = start + int(a)
            if i < b:
                pairs.append((i, int(b), float(sims[a, b])))
    return pairs


def one_word_swaps(texts: list[str]) -> list[tuple[int, int]]:
    """Pairs of rows that differ only by one swapped word (a template stamped twice)."""
    buckets: dict[tuple, set[int]] = collections.defaultdict(set)
    tokens = [normalise(t).split() for t in texts]
    for i, toks in enumerate(tokens):
        if len(toks) < 3:
            continue
        for pos in range(len(toks)):
            buckets[(len(toks), pos, *toks[:pos], *toks[pos + 1 :])].add(i)
    pairs = set()
    for members in buckets.values():
        if len(members) > 1:
            m = sorted(members)
            pairs.update((a, b) for k, a in enumerate(m) for b in m[k + 1 :] if tokens[a] != tokens[b])
    return sorted(pairs)


def clusters(n: int, pairs) -> list[int]:
    """Union-find: returns for each row the index of its cluster's first row."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, *_ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def split_for(key: str, test_share: float = TEST_SHARE) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_share else "train"


def row_id(text: str) -> str:
    return "t-" + hashlib.sha256(normalise(text).encode()).hexdigest()[:12]


def statistics(rows: list[CorpusRow]) -> dict:
    n = len(rows) or 1
    pos = [r for r in rows if r.label == 1]
    neg = [r for r in rows if r.label == 0]
    words = np.array([len(r.text.split()) for r in rows] or [0])
    by_role = {}
    for role in ROLES:
        rr = [r for r in rows if r.role == role]
        by_role[role] = {"rows": len(rr), "share": len(rr) / n, "positive_rate": sum(r.label for r in rr) / max(len(rr), 1)}
    tags = collections.Counter(t for r in rows for t in r.tags)
    domains = sorted({t.split(":", 1)[1] for t in tags if t.startswith("domain:")})
    return {
        "rows": len(rows),
        "positives": len(pos),
        "positive_share": len(pos) / n,
        "splits": dict(collections.Counter(r.split for r in rows)),
        "test_positive_share": sum(r.label for r in rows if r.split == "test") / max(sum(r.split == "test" for r in rows), 1),
        "by_role": by_role,
        "words": {"min": int(words.min()), "median": float(np.median(words)), "max": int(words.max())},
        "short_share": float((words < 10).mean()),
        "long_share": float((words > 40).mean()),
        "hard_negative_share": sum("hard_negative" in r.tags or "small_decision" in r.tags for r in neg) / max(len(neg), 1),
        "small_decision_share": sum("small_decision" in r.tags for r in neg) / max(len(neg), 1),
        "hard_positive_share": sum("hard_positive" in r.tags for r in pos) / max(len(pos), 1),
        "styles": dict(collections.Counter(t.split(":", 1)[1] for t in tags.elements() if t.startswith("style:"))),
        "domains": domains,
        "sources": dict(collections.Counter(r.source for r in rows)),
    }


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool, str]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    near_duplicate_share: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and all(ok for _, ok, _ in self.targets)


def check_targets(stats: dict) -> list[tuple[str, bool, str]]:
    t = TARGETS
    roles = stats["by_role"]
    rates = {r: v["positive_rate"] for r, v in roles.items()}
    lo, hi = t["positive_share"]
    return [
        ("rows", stats["rows"] >= t["rows"], f"{stats['rows']} rows (>= {t['rows']})"),
        ("positive share", lo <= stats["positive_share"] <= hi, f"{stats['positive_share']:.1%} ({lo:.0%}-{hi:.0%})"),
        ("role shares", min(v["share"] for v in roles.values()) >= t["min_role_share"],
         "smallest role " + f"{min(v['share'] for v in roles.values()):.1%} (>= {t['min_role_share']:.0%})"),
        ("role positive rates", max(rates, key=rates.get) == "architect" and min(rates, key=rates.get) == "implementer",
         "architect highest, implementer lowest: " + ", ".join(f"{r} {v:.0%}" for r, v in rates.items())),
        ("short rows", stats["short_share"] >= t["short_share"], f"{stats['short_share']:.1%} under 10 words (>= {t['short_share']:.0%})"),
        ("long rows", stats["long_share"] >= t["long_share"], f"{stats['long_share']:.1%} over 40 words (>= {t['long_share']:.0%})"),
        ("hard negatives", stats["hard_negative_share"] >= t["hard_negative_share"],
         f"{stats['hard_negative_share']:.1%} of negatives (>= {t['hard_negative_share']:.0%})"),
        ("hard positives", stats["hard_positive_share"] >= t["hard_positive_share"],
         f"{stats['hard_positive_share']:.1%} of positives (>= {t['hard_positive_share']:.0%})"),
        ("domains", len(stats["domains"]) >= t["domains"], f"{len(stats['domains'])} domains (>= {t['domains']})"),
    ]


def validate(path: str | Path, embed=None, corpus_targets: bool = True) -> Report:
    """Checks schema, duplicates, splits, the rules for rationales and (optionally) the corpus targets.

    `embed(texts) -> unit vectors` finds near-duplicates; without it that check is skipped.
    """
    report = Report()
    rows, line_errors = read_rows(path)
    report.errors += [str(e) for e in line_errors]
    if not rows:
        report.errors.append(f"{path}: no valid rows")
        return report

    seen: dict[str, int] = {}
    ids: dict[str, int] = {}
    for i, r in enumerate(rows):
        key = normalise(r.text)
        if key in seen:
            report.errors.append(f"exact duplicate: {r.id} repeats {rows[seen[key]].id}: {r.text[:60]!r}")
        seen.setdefault(key, i)
        if r.id in ids:
            report.errors.append(f"duplicate id {r.id}")
        ids.setdefault(r.id, i)
        needs_rationale = r.label == 1 or {"hard_negative", "hard_positive", "small_decision"} & set(r.tags)
        if needs_rationale and not (r.rationale or "").strip():
            report.errors.append(f"{r.id}: a positive or hard case needs a one-line rationale")
    for a, b in one_word_swaps([r.text for r in rows]):
        report.errors.append(f"one-word swap: {rows[a].id} and {rows[b].id} differ by a single word")

    if embed is not None:
        vectors = embed([r.text for r in rows])
        pairs = near_duplicate_pairs(vectors)
        involved = {i for a, b, _ in pairs for i in (a, b)}
        report.near_duplicate_share = len(involved) / len(rows)
        if report.near_duplicate_share > MAX_NEAR_DUPLICATE_SHARE:
            report.errors.append(
                f"{report.near_duplicate_share:.1%} of rows have a neighbour with cosine >= {NEAR_DUPLICATE_COSINE} "
                f"(limit {MAX_NEAR_DUPLICATE_SHARE:.0%})"
            )
        for a, b, sim in pairs:
            if rows[a].split != rows[b].split:
                report.errors.append(
                    f"near duplicates in different splits: {rows[a].id} ({rows[a].split}) and {rows[b].id} ({rows[b].split}), cosine {sim:.3f}"
                )

    report.stats = statistics(rows)
    report.stats["near_duplicate_share"] = report.near_duplicate_share
    if corpus_targets:
        report.targets = check_targets(report.stats)
    return report


def format_statistics(stats: dict) -> str:
    lines = [
        f"rows {stats['rows']}, positives {stats['positives']} ({stats['positive_share']:.1%}), "
        f"splits {stats['splits']}, test positive share {stats['test_positive_share']:.1%}",
        f"near-duplicate share (cosine >= {NEAR_DUPLICATE_COSINE}): {stats.get('near_duplicate_share', 0):.1%}",
        "",
        "| role | rows | share | positive rate |",
        "|---|---:|---:|---:|",
    ]
    for role, v in stats["by_role"].items():
        lines.append(f"| {role} | {v['rows']} | {v['share']:.1%} | {v['positive_rate']:.1%} |")
    w = stats["words"]
    lines += [
        "",
        f"words: min {w['min']}, median {w['median']:.0f}, max {w['max']}; under 10 words {stats['short_share']:.1%}, over 40 words {stats['long_share']:.1%}",
        f"hard negatives {stats['hard_negative_share']:.1%} of negatives (small decisions {stats['small_decision_share']:.1%}); "
        f"hard positives {stats['hard_positive_share']:.1%} of positives",
        "styles: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["styles"].items())),
        f"domains ({len(stats['domains'])}): " + ", ".join(stats["domains"]),
        "sources: " + ", ".join(f"{k} {v}" for k, v in stats["sources"].items()),
    ]
    return "\n".join(lines)


CARD_BEGIN, CARD_END = "<!-- statistics: generated by `escalation data validate --update-card` -->", "<!-- end of statistics -->"


def card_statistics(card: str) -> str:
    """The generated statistics block of a data card."""
    return card.split(CARD_BEGIN, 1)[1].split(CARD_END, 1)[0].strip()


def update_card(card_path: str | Path, stats: dict) -> None:
    card = Path(card_path).read_text(encoding="utf-8")
    if CARD_BEGIN not in card or CARD_END not in card:
        raise ValueError(f"{card_path} has no statistics markers; add {CARD_BEGIN} and {CARD_END}")
    head, rest = card.split(CARD_BEGIN, 1)
    tail = rest.split(CARD_END, 1)[1]
    Path(card_path).write_text(f"{head}{CARD_BEGIN}\n{format_statistics(stats)}\n{CARD_END}{tail}", encoding="utf-8")


def write_rows(rows, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            obj = r.model_dump(mode="json", exclude_none=True) if isinstance(r, CorpusRow) else r
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
