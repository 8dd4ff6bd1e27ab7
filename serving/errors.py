"""What the HTTP layer and the runtime share without importing each other's weight.

Kept apart from serving/runtime.py so that BentoML's supervisor, which imports the service module
only to read its definition, does not load the model stack (about a second of start-up).
"""
from __future__ import annotations

OVERRIDE_HEADER = "x-escalation-override"


class RequestError(ValueError):
    """A 4xx the caller can fix; `status` is the HTTP status, the message says what to change."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param
