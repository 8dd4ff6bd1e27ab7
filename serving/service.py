"""The BentoML service: /classify (adaptive batching), the routing shim, the review page, admin.

Thin by design: every endpoint parses and validates its input, calls the one `Runtime` built in
__init__, and shapes the answer. Start it with `escalation serve` (which sets the environment this
module reads: ESCALATION_CONFIG, ESCALATION_DB_URL, MLFLOW_TRACKING_URI).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from escalation.schema import MAX_TASKS_PER_REQUEST, MAX_TEXT_CHARS, ROLES, DecisionOut, Neighbour, TaskList
from serving.batcher import AdaptiveBatcher
from serving.errors import OVERRIDE_HEADER, RequestError
from serving.shim import ProviderError

MAX_BODY_BYTES = 4 * 1024 * 1024
STATIC = Path(__file__).resolve().parent / "static"

app = FastAPI(title="escalation shim", docs_url=None, redoc_url=None)


def error(message: str, status: int = 400, param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """OpenAI-style error object, so SDK clients surface the message as is."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers)


async def read_json(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", 413)
    if not raw.strip():
        raise RequestError("request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"request body is not UTF-8 (byte {e.start}); encode it as UTF-8") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object, got {type(body).__name__}")
    return body


def task_text(value, field: str = "text") -> str:
    if not isinstance(value, str):
        raise RequestError(f"{field} must be a string, got {type(value).__name__}", param=field)
    if not value.strip():
        raise RequestError(f"{field} is empty or whitespace; send the task description", param=field)
    return value


def last_user_message(messages) -> str:
    """The text classified for a chat request: the last user message (its text parts joined)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    for m in reversed(messages):
        if not isinstance(m, dict):
            raise RequestError("every message must be an object with role and content", param="messages")
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return task_text(content, "messages[].content")
    raise RequestError("messages has no user message; the shim classifies the last user message", param="messages")


def decision_headers(rd, extra: dict | None = None, attempts=None) -> dict:
    """The decision's headers; with the provider attempts, Server-Timing also gives their time."""
    d = rd.decision
    headers = {
        "x-request-id": rd.request_id,
        "x-escalation-decision": "escalate" if d.escalate else ("downgraded" if rd.downgraded else "standard"),
        "x-escalation-score": "" if d.score != d.score else f"{d.score:.6f}",
        "x-escalation-threshold": "" if d.threshold != d.threshold else f"{d.threshold:.6f}",
        "x-model-version": d.model_version,
        "x-config-version": rd.arm.config_version,
        "server-timing": f"classify;dur={rd.classify_ms:.2f}"
                         + (f", provider;dur={sum(a.latency_ms for a in attempts):.2f}" if attempts is not None else ""),
    }
    headers.update(extra or {})
    return headers


def attempt_headers(attempts, used: str | None) -> dict:
    return {
        "x-model-used": used or "",
        "x-fallback-path": " > ".join(a.describe() for a in attempts),
        "x-cost-usd": f"{sum(a.cost_usd for a in attempts):.6f}",
    }


# ----- routing shim ----------------------------------------------------------------------------
# The shim's two routes are plain Starlette endpoints, not FastAPI class views like the rest: a class
# view gets `self` from a synchronous dependency, which FastAPI runs in its thread pool on every
# request. As plain endpoints the shim's overhead fell from 3.99 and 3.92 to 3.36 and 3.42 ms at p50
# (benchmarks/shim_overhead.py, two runs each way).
def _runtime():
    return bentoml.get_current_service().runtime


async def route_task(request: Request):
    """The decision and the model chain, without calling a provider."""
    try:
        body = await read_json(request)
        text = task_text(body.get("text"))
        if len(text) > MAX_TEXT_CHARS:
            raise RequestError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}", param="text")
        role = body.get("role")
        if not isinstance(role, str):
            raise RequestError(f"role is required, one of {', '.join(ROLES)}", param="role")
        override = body.get("escalation") or request.headers.get(OVERRIDE_HEADER)
        # Scoring runs in a thread: the event loop keeps serving other requests meanwhile.
        rd = await asyncio.to_thread(_runtime().route, text, role, override)
    except RequestError as e:
        return error(str(e), e.status, e.param)
    return JSONResponse(rd.as_json(), headers=decision_headers(rd))


async def chat_completions(request: Request):
    """OpenAI-compatible; `model` names a role. The last user message is what gets classified."""
    runtime = _runtime()
    try:
        body = await read_json(request)
        role = body.get("model")
        if role not in ROLES:
            raise RequestError(f"unknown role {role!r} in model; use one of {', '.join(ROLES)}", param="model")
        text = last_user_message(body.get("messages"))[:MAX_TEXT_CHARS]
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("stream must be true or false", param="stream")
        override = body.get("escalation") or request.headers.get(OVERRIDE_HEADER)
        rd = await asyncio.to_thread(runtime.route, text, role, override, "chat")
    except RequestError as e:
        return error(str(e), e.status, e.param)
    try:
        if stream:
            result = await runtime.stream(rd, body)
            headers = decision_headers(rd, attempt_headers(result.attempts, result.model))
            headers["x-fallback-path"] = " > ".join([a.describe() for a in result.attempts] + [f"{result.model} (streaming)"])
            return StreamingResponse(_with_cost_trailer(result), media_type="text/event-stream", headers=headers)
        data, attempts = await runtime.complete(rd, body)
    except ProviderError as e:
        return JSONResponse(e.openai_error(), status_code=e.http_status, headers=decision_headers(rd, attempt_headers(e.attempts, None), e.attempts))
    return JSONResponse(data, headers=decision_headers(rd, attempt_headers(attempts, attempts[-1].model), attempts))


app.add_route("/route", route_task, methods=["POST"])
app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])


@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": r, "object": "model", "owned_by": "escalation-shim"} for r in ROLES]}


# OpenTelemetry spans on the hot endpoints cost about 4% of throughput (16-client /classify
# benchmark) and go nowhere unless an exporter is configured: they are off unless
# ESCALATION_TRACE_HOT_PATHS=1, for an operator who configures BentoML tracing.
HOT_PATHS = ["/classify", "/route", "/v1/chat/completions"]
TRACING = {} if os.environ.get("ESCALATION_TRACE_HOT_PATHS") == "1" else {"excluded_urls": HOT_PATHS}
# BentoML's access log formats and writes a line per request on the event loop's thread: 0.3 ms of
# the shim's overhead (benchmarks/shim_overhead.py). The ledger already has a row per decision and
# per provider attempt, with its request id; ESCALATION_ACCESS_LOG=1 turns the access log on.
ACCESS_LOG = {"access": {"enabled": os.environ.get("ESCALATION_ACCESS_LOG") == "1"}}


@bentoml.service(name="escalation", workers=1, traffic={"timeout": 300, "concurrency": 512}, tracing=TRACING, logging=ACCESS_LOG)
@bentoml.asgi_app(app, path="/")
class EscalationService:
    def __init__(self) -> None:
        from serving.runtime import Runtime  # here, not at module level: see serving/errors.py

        self.runtime = Runtime()
        self.admin_token_env = self.runtime.config.admin_token_env
        self.batcher = AdaptiveBatcher(self.runtime.classify, MAX_TASKS_PER_REQUEST, on_batch=self.runtime.observe_batch)

    def __is_ready__(self) -> bool:
        return self.runtime.slot.model is not None

    # Adaptive batching is serving/batcher.py's, not BentoML's `batchable=True`, whose dispatcher
    # runs one batch at a time (see the module for the measurement). The ContentType spares BentoML
    # rebuilding the output's JSON schema on every response to find its media type (5% of the
    # worker's CPU under sequential load, py-spy).
    @bentoml.api
    async def classify(self, tasks: TaskList) -> Annotated[list[DecisionOut], ContentType("application/json")]:
        """Scores tasks and decides which escalate. Concurrent requests are batched together."""
        decisions = await self.batcher.submit([t.text for t in tasks], [t.role for t in tasks])
        return [
            DecisionOut(
                id=t.id, escalate=d.escalate, score=_num(d.score), probability=_num(d.probability), threshold=_num(d.threshold),
                model_version=d.model_version, reasons=d.reasons, neighbours=[Neighbour(**n) for n in d.neighbours],
            )
            for t, d in zip(tasks, decisions)
        ]

    # ----- review ------------------------------------------------------------------------------
    @app.get("/review")
    async def review_page(self):
        return HTMLResponse((STATIC / "review.html").read_text(encoding="utf-8"))

    @app.get("/review/api/items")
    async def review_items(self, request: Request, limit: int = 20):
        from serving.review import pending_items

        reviewer = self._reviewer(request)
        if reviewer is None:
            return error("sign in with your reviewer token (`escalation reviewers add NAME` prints one)", 401)
        return {"reviewer": reviewer, "items": pending_items(self.runtime, reviewer, max(1, min(limit, 100)))}

    @app.post("/review/api/labels")
    async def review_label(self, request: Request):
        reviewer = self._reviewer(request)
        if reviewer is None:
            return error("sign in with your reviewer token (`escalation reviewers add NAME` prints one)", 401)
        try:
            body = await read_json(request)
            item_id = body.get("item_id")
            if not isinstance(item_id, str):
                raise RequestError("item_id must be a string", param="item_id")
            note = body.get("note")
            if note is not None and not isinstance(note, str):
                raise RequestError("note must be a string", param="note")
            return self.runtime.submit_label(item_id, None, None, str(body.get("verdict")), (note or "")[:2000], reviewer)
        except RequestError as e:
            return error(str(e), e.status, e.param)

    def _reviewer(self, request: Request) -> str | None:
        from escalation.store import reviewer_for_token

        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        return reviewer_for_token(self.runtime.eng, token)

    # ----- version and admin -------------------------------------------------------------------
    @app.get("/version")
    async def version(self):
        return {"model_version": self.runtime.slot.version, "config_version": self.runtime.baseline.config_version}

    def _admin(self, request: Request) -> JSONResponse | None:
        expected = os.environ.get(self.admin_token_env)
        if not expected:
            return error(f"admin endpoints are off: set {self.admin_token_env} before starting the service", 403)
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth.removeprefix("Bearer ").strip().encode(), expected.encode()):
            return error("admin token missing or wrong (Authorization: Bearer <token>)", 401)
        return None

    @app.get("/admin/status")
    async def admin_status(self, request: Request):
        return self._admin(request) or self.runtime.status()

    @app.post("/admin/reload")
    async def admin_reload(self, request: Request):
        denied = self._admin(request)
        if denied:
            return denied
        try:
            # in a thread: resolving a uri the local cache cannot answer runs a child process
            return await asyncio.to_thread(self.runtime.reload_model)
        except Exception as e:
            return error(f"reload failed, still serving {self.runtime.slot.version}: {e}", 409)

    @app.post("/admin/config/rollback")
    async def admin_config_rollback(self, request: Request):
        denied = self._admin(request)
        if denied:
            return denied
        try:
            body = await read_json(request) if (await request.body()).strip() else {}
            version = body.get("version")
            if version is not None and not isinstance(version, str):
                raise RequestError("version must be a string", param="version")
            return self.runtime.rollback_config(version)
        except RequestError as e:
            return error(str(e), e.status, e.param)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        await self.runtime.http.aclose()  # on the event loop the provider connections belong to
        self.runtime.close()


def _num(x):
    return None if x is None or x != x else float(x)


async def _with_cost_trailer(result):
    """Passes the provider's events through, then an SSE comment with the final cost (clients ignore it)."""
    async for chunk in result.chunks:
        yield chunk
    final = await result.finished
    cost = sum(a.cost_usd for a in result.attempts) + final.cost_usd
    yield f": x-cost-usd={cost:.6f} x-model-used={final.model} status={final.status}\n\n".encode()
