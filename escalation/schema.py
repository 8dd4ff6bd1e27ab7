"""The shapes every part of the project agrees on: roles, input limits, corpus rows, API bodies.

One place for each fact: the serving API, the CLI and the corpus checks all import their limits and
field rules from here, so a limit changed here changes everywhere and the error messages stay the same.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROLES: tuple[str, ...] = ("architect", "orchestrator", "implementer", "critic", "integrator")
Role = Literal["architect", "orchestrator", "implementer", "critic", "integrator"]

# Documented input limits (README "API"). Text beyond the encoder's 256 tokens is truncated anyway;
# the character limit exists so that nobody ships megabytes per task by mistake.
MAX_TEXT_CHARS = 8_000
MAX_TASKS_PER_REQUEST = 256

SPLITS = ("train", "test")


def _clean_text(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("text must be a string")
    if not value.strip():
        raise ValueError("text is empty or whitespace; send the task description to classify")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(value)} characters; the limit is {MAX_TEXT_CHARS}, shorten or summarise it")
    return value


class TaskIn(BaseModel):
    """One task to classify. `role` is optional: without it the role features are all zero."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    role: Optional[Role] = None
    id: Optional[str] = Field(default=None, max_length=200, description="caller's id, echoed back")

    @field_validator("text")
    @classmethod
    def _check_text(cls, v: str) -> str:
        return _clean_text(v)


TaskList = Annotated[list[TaskIn], Field(min_length=1, max_length=MAX_TASKS_PER_REQUEST)]


class Neighbour(BaseModel):
    text: str
    label: int
    similarity: float


class DecisionOut(BaseModel):
    """What /classify returns per task. `reasons` is a list of short human-readable sentences."""

    id: Optional[str] = None
    escalate: bool
    score: Optional[float] = Field(description="the head's raw score; null when the classifier could not answer")
    probability: Optional[float] = Field(description="calibrated P(critical) under the traffic prior")
    threshold: Optional[float]
    model_version: str
    reasons: list[str]
    neighbours: list[Neighbour] = []


class CorpusRow(BaseModel):
    """One line of data/tasks.jsonl, and of the labels reviewers add (`source: review`).

    Reviewer fields are optional so that one schema covers both; retraining merges them by text.
    """

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    text: str
    label: Literal[0, 1]
    role: Role
    split: Literal["train", "test"]
    source: str = Field(min_length=1)
    tags: list[str] = []
    rationale: Optional[str] = None
    reviewer: Optional[str] = None
    reviewed_at: Optional[datetime] = None
    note: Optional[str] = None

    @field_validator("text")
    @classmethod
    def _check_text(cls, v: str) -> str:
        return _clean_text(v)

    @field_validator("rationale")
    @classmethod
    def _one_line(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and "\n" in v:
            raise ValueError("rationale must be one line")
        return v


class LineError(ValueError):
    """A problem on one line of a JSONL file; `str()` names the line, so the CLI can print it as is."""

    def __init__(self, path: str, lineno: int, problem: str):
        self.path, self.lineno, self.problem = path, lineno, problem
        super().__init__(f"{path}:{lineno}: {problem}")


def describe_validation_error(err: ValidationError) -> str:
    """Turns pydantic's error list into one sentence per field, e.g. "role: unknown role 'boss'"."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "line"
        if e["type"] == "missing":
            parts.append(f"missing {field}")
        elif e["type"] == "literal_error" and e["loc"][-1:] == ("role",):
            parts.append(f"unknown role {e['input']!r} (expected one of {', '.join(ROLES)})")
        elif e["type"] == "literal_error" and e["loc"][-1:] == ("label",):
            parts.append(f"label must be 0 or 1, got {e['input']!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_jsonl_line(path: str, lineno: int, raw: bytes | str) -> dict:
    """Decodes one JSONL line into a dict or raises LineError naming the problem."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LineError(path, lineno, f"not UTF-8 (byte {e.start}); re-save the file as UTF-8") from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LineError(path, lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise LineError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_corpus_row(path: str, lineno: int, raw: bytes | str) -> CorpusRow:
    obj = parse_jsonl_line(path, lineno, raw)
    try:
        return CorpusRow.model_validate(obj)
    except ValidationError as e:
        raise LineError(path, lineno, describe_validation_error(e)) from None
