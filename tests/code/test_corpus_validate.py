"""`escalation data validate` on good and broken files: it names the line and the problem."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

GOOD = [
    {"id": "t-1", "text": "Should billing keep its own database or share the orders one?", "label": 1, "role": "architect",
     "split": "train", "source": "authored", "tags": ["hard_positive"], "rationale": "data ownership across services"},
    {"id": "t-2", "text": "fix typo in the architecture doc", "label": 0, "role": "implementer", "split": "train",
     "source": "authored", "tags": ["hard_negative"], "rationale": "documentation fix"},
    {"id": "t-3", "text": "add a unit test for the invoice rounding helper", "label": 0, "role": "critic", "split": "test",
     "source": "authored", "tags": []},
]


def run_validate(path, *args):
    return subprocess.run([sys.executable, "-m", "cli.main", "data", "validate", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def write(tmp_path, rows, raw_lines=()):
    p = tmp_path / "corpus.jsonl"
    with open(p, "wb") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())
        for line in raw_lines:
            f.write(line)
    return p


def test_good_file_passes_and_prints_statistics(tmp_path):
    result = run_validate(write(tmp_path, GOOD), "--no-targets", "--no-embeddings")
    assert result.returncode == 0, result.stderr
    assert "rows 3, positives 1" in result.stdout
    assert "| architect | 1 |" in result.stdout
    assert "valid" in result.stdout


@pytest.mark.parametrize("raw, problem", [
    (b'{"id": "x", "text": "broken\n', "malformed JSON"),
    (json.dumps({**GOOD[2], "id": "x", "text": "rename the cache module", "role": "boss"}).encode() + b"\n", "unknown role 'boss'"),
    (json.dumps({k: v for k, v in {**GOOD[2], "id": "x", "text": "rename the cache module"}.items() if k != "label"}).encode() + b"\n", "missing label"),
    (json.dumps({**GOOD[2], "id": "x", "text": "   "}).encode() + b"\n", "text is empty"),
    (b'{"id": "x", "text": "caf\xe9 menu", "label": 0}\n', "not UTF-8"),
    (b'[1, 2]\n', "expected a JSON object"),
])
def test_broken_line_is_named_with_its_problem(tmp_path, raw, problem):
    result = run_validate(write(tmp_path, GOOD, [raw]), "--no-targets", "--no-embeddings")
    assert result.returncode == 1
    assert f"corpus.jsonl:4: " in result.stderr
    assert problem in result.stderr


def test_exact_duplicate_and_one_word_swap_are_errors(tmp_path):
    rows = GOOD + [
        {**GOOD[1], "id": "t-4"},  # same text as t-2
        {**GOOD[2], "id": "t-5", "text": "add a unit test for the invoice rounding function"},  # one word swapped
    ]
    result = run_validate(write(tmp_path, rows), "--no-targets", "--no-embeddings")
    assert result.returncode == 1
    assert "exact duplicate: t-4 repeats t-2" in result.stderr
    assert "one-word swap: t-3 and t-5" in result.stderr


def test_positive_without_rationale_is_an_error(tmp_path):
    rows = [GOOD[0] | {"rationale": None}] + GOOD[1:]
    result = run_validate(write(tmp_path, rows), "--no-targets", "--no-embeddings")
    assert result.returncode == 1
    assert "needs a one-line rationale" in result.stderr


def test_near_duplicates_in_different_splits_are_an_error(tmp_path):
    rows = GOOD + [{**GOOD[0], "id": "t-6", "split": "test", "text": "Should billing keep its own database, or share the orders one?!"}]
    result = run_validate(write(tmp_path, rows), "--no-targets")
    assert result.returncode == 1
    assert "near duplicates in different splits: t-1 (train) and t-6 (test)" in result.stderr


def test_missed_corpus_targets_fail_a_small_file(tmp_path):
    result = run_validate(write(tmp_path, GOOD), "--no-embeddings")
    assert result.returncode == 1
    assert "MISS rows: 3 rows (>= 5000)" in result.stdout


def test_reviewer_fields_are_part_of_the_schema(tmp_path):
    reviewed = {**GOOD[2], "id": "t-7", "text": "Keep one event bus for every team", "label": 1, "source": "review",
                "reviewer": "ana", "reviewed_at": "2026-11-20T10:00:00", "rationale": "reviewed: 2 critical votes"}
    result = run_validate(write(tmp_path, GOOD + [reviewed]), "--no-targets", "--no-embeddings")
    assert result.returncode == 0, result.stderr
    assert "review 1" in result.stdout
