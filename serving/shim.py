"""The provider side of the routing shim: walk a model chain with retries, backoff and a circuit breaker.

Fallback rules (README "Routing shim"):
- 429, 5xx, timeouts, connection errors and malformed provider responses are retried on the same model
  (bounded, with backoff; Retry-After is honoured up to the cap), then the next model is tried;
- context-length errors go straight to the next model (a retry cannot help), and a model whose context
  window is smaller than the request's estimated size is skipped without a call;
- any other 4xx is the caller's problem: it is returned as is, with no fallback;
- a model with `circuit.failures` consecutive failures is skipped for `circuit.cooldown_s`, then one
  trial request decides whether it closes again;
- when streaming, fallback happens only before the first byte reaches the client; a failure after it
  ends the stream with an error event.
A model's `timeout_s` bounds a whole completion; when streaming, it bounds the wait for each event.
Every attempt (including a skip) is reported to `on_attempt`, which writes the ledger row.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from escalation.config import RoutingConfig

log = logging.getLogger(__name__)

CONTEXT_MARKERS = ("context_length", "context length", "maximum context", "too many tokens", "prompt is too long", "context window")


@dataclass
class Attempt:
    model: str
    attempt: int
    status: str  # ok | rate_limited | server_error | timeout | connection | context_length | client_error | circuit_open | bad_response | stream_cut
    http_status: int | None = None
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    message: str = ""

    def describe(self) -> str:
        code = f" {self.http_status}" if self.http_status else ""
        return f"{self.model} ({self.status}{code})"


class ProviderError(Exception):
    """Raised when the chain is exhausted, or a non-retryable 4xx ends it. Carries the path tried."""

    def __init__(self, message: str, http_status: int, attempts: list[Attempt], body: dict | None = None, code: str = "all_models_failed"):
        super().__init__(message)
        self.message, self.http_status, self.attempts, self.body, self.code = message, http_status, attempts, body, code

    def openai_error(self) -> dict:
        err = dict((self.body or {}).get("error") or {}) if isinstance((self.body or {}).get("error"), dict) else {}
        err.setdefault("message", self.message)
        err.setdefault("type", "invalid_request_error" if self.http_status < 500 else "provider_error")
        err.setdefault("code", self.code)
        err["path"] = [a.describe() for a in self.attempts]
        return {"error": err}


class _Failure(Exception):
    def __init__(self, status: str, http_status: int | None, message: str, retry_after: float | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.http_status, self.message, self.retry_after, self.body = status, http_status, message, retry_after, body


TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError)


def _transport_failure(e: Exception) -> _Failure:
    """A timeout or a connection-level error, as the attempt status the fallback rules act on."""
    if isinstance(e, TimeoutError):
        return _Failure("timeout", None, f"timed out: {type(e).__name__}")
    return _Failure("connection", None, f"{type(e).__name__}: {e}"[:300])


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._count: dict[str, int] = {}
        self._opened: dict[str, float] = {}

    def state(self, model: str) -> str:
        if model not in self._opened:
            return "closed"
        return "half_open" if self.clock() - self._opened[model] >= self.cooldown_s else "open"

    def allow(self, model: str) -> bool:
        return self.state(model) != "open"

    def record(self, model: str, ok: bool) -> None:
        if ok:
            self._count.pop(model, None)
            self._opened.pop(model, None)
            return
        self._count[model] = self._count.get(model, 0) + 1
        if self._count[model] >= self.failures or self.state(model) == "half_open":
            self._opened[model] = self.clock()


def estimate_tokens(text: str) -> int:
    """About four characters a token for English; used only when a provider reports no usage."""
    return max(1, len(text) // 4)


def messages_text(messages: list) -> str:
    parts = []
    for m in messages or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


@dataclass
class StreamResult:
    model: str
    attempts: list[Attempt]
    chunks: AsyncIterator[bytes]
    finished: asyncio.Future = field(default=None)  # resolves to the final Attempt when the stream ends


def _ssl_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


class ProviderHTTP:
    """The aiohttp session provider calls share: pooled keep-alive connections.

    aiohttp, not httpx: against the fake provider a kept-alive call cost 0.4 ms of CPU with aiohttp
    and 1.6 ms with httpx (same process, 500 calls each), and httpx was half the shim worker's GIL
    time in py-spy. A session belongs to the event loop it was made in, so one is made per loop.

    HTTP(S)_PROXY and NO_PROXY are honoured, as httpx did, but looked up once per provider URL:
    aiohttp's `trust_env=True` reads them (and ~/.netrc) on every call, 0.6-1 ms of CPU each.
    Certificates are checked against SSL_CERT_FILE when set, else certifi's bundle, as httpx did;
    aiohttp alone would use the system store, which slim containers may lack.
    """

    def __init__(self, max_connections: int = 200):
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[str, str | None] = {}

    def proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for this URL (None: connect directly)."""
        if url not in self._proxies:  # one entry per model endpoint
            parts = urlsplit(url)
            bypass = urllib.request.proxy_bypass(parts.hostname or "")
            self._proxies[url] = None if bypass else urllib.request.getproxies().get(parts.scheme)
        return self._proxies[url]

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections, ssl=_ssl_context())
            # read_bufsize bounds one streamed line; 1 MiB leaves room for large events
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20, auto_decompress=True)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class ProviderChain:
    def __init__(self, config: RoutingConfig, http: ProviderHTTP | None = None, sleep=asyncio.sleep):
        self.config = config
        self.http = http or ProviderHTTP()
        self.circuit = CircuitBreaker(config.retry.circuit.failures, config.retry.circuit.cooldown_s)
        self.sleep = sleep
        for name, p in config.providers.items():
            if not os.environ.get(p.api_key_env):
                log.warning("provider %s: environment variable %s is not set; calls go out without a key", name, p.api_key_env)

    async def _post(self, model_id: str, body: dict, stream: bool) -> aiohttp.ClientResponse:
        """Sends the request; the caller reads and releases the response. Raises _Failure."""
        spec = self.config.models[model_id]
        provider = self.config.providers[spec.provider]
        headers = {"content-type": "application/json"}
        key = os.environ.get(provider.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = {k: v for k, v in body.items() if k not in ("escalation",)}
        payload["model"] = model_id
        payload["stream"] = stream
        connect = min(spec.timeout_s, 10.0)
        timeout = (aiohttp.ClientTimeout(total=None, connect=connect, sock_read=spec.timeout_s) if stream
                   else aiohttp.ClientTimeout(total=spec.timeout_s, connect=connect))
        url = f"{provider.base_url}/chat/completions"
        try:
            # no redirects (httpx's default too): a redirected POST would turn into a GET
            return await self.http.session().post(url, data=json.dumps(payload).encode(), headers=headers, timeout=timeout,
                                                  proxy=self.http.proxy_for(url), allow_redirects=False)
        except TRANSPORT_ERRORS as e:
            raise _transport_failure(e) from None

    def _classify(self, status_code: int, text: str, headers) -> _Failure:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        message = ((body or {}).get("error") or {}).get("message") if isinstance((body or {}).get("error"), dict) else None
        message = message or text[:300] or f"HTTP {status_code}"
        if status_code == 429:
            retry_after = headers.get("retry-after")
            try:
                retry_after = float(retry_after) if retry_after else None
            except ValueError:
                retry_after = None
            return _Failure("rate_limited", 429, message, retry_after)
        if status_code >= 500:
            return _Failure("server_error", status_code, message)
        if any(m in text.lower() for m in CONTEXT_MARKERS):
            return _Failure("context_length", status_code, message, body=body)
        return _Failure("client_error", status_code, message, body=body)

    @staticmethod
    def _attempt(on_attempt, model: str, index: int, status: str, started: float, **kw) -> Attempt:
        a = Attempt(model=model, attempt=index, status=status, latency_ms=(time.perf_counter() - started) * 1000, **kw)
        on_attempt(a)
        return a

    def _backoff(self, tries: int, retry_after: float | None) -> float:
        r = self.config.retry
        delay = retry_after if retry_after is not None else r.backoff_s * (2 ** (tries - 1)) * (0.5 + random.random() / 2)
        return min(delay, r.max_backoff_s)

    async def _walk(self, chain: list[str], body: dict, call, on_attempt):
        """Runs `call(model)` down the chain until one succeeds or the chain is exhausted.

        Returns (result, failed attempts, (model, attempt index, start time) of the success); the caller
        writes the successful attempt's row, since only it knows the tokens. Raises ProviderError.
        """
        attempts: list[Attempt] = []
        prompt_tokens = estimate_tokens(messages_text(body.get("messages")))
        index = 0
        for model in chain:
            spec = self.config.models[model]
            if prompt_tokens > spec.context_window:
                index += 1
                attempts.append(self._attempt(on_attempt, model, index, "context_length", time.perf_counter(),
                                              message=f"~{prompt_tokens} prompt tokens exceed the {spec.context_window}-token window"))
                continue
            for tries in range(1, self.config.retry.attempts_per_model + 1):
                if not self.circuit.allow(model):
                    index += 1
                    attempts.append(self._attempt(on_attempt, model, index, "circuit_open", time.perf_counter(), message="circuit open"))
                    break
                index += 1
                started = time.perf_counter()
                try:
                    result = await call(model)
                except _Failure as f:
                    attempts.append(self._attempt(on_attempt, model, index, f.status, started, http_status=f.http_status, message=f.message))
                    if f.status == "client_error":
                        self.circuit.record(model, ok=True)  # the model answered; the request was wrong
                        raise ProviderError(f.message, f.http_status or 400, attempts, body=f.body, code="provider_rejected_request")
                    if f.status == "context_length":
                        break
                    self.circuit.record(model, ok=False)
                    if tries < self.config.retry.attempts_per_model and self.circuit.allow(model):
                        await self.sleep(self._backoff(tries, f.retry_after))
                    continue
                return result, attempts, (model, index, started)
        path = ", ".join(a.describe() for a in attempts) or "no model configured"
        raise ProviderError(f"every model in the chain failed: {path}", 502, attempts)

    async def complete(self, chain: list[str], body: dict, on_attempt: Callable[[Attempt], None]) -> tuple[dict, list[Attempt]]:
        async def call(model: str):
            resp = await self._post(model, body, stream=False)
            try:
                raw = await resp.read()
            except TRANSPORT_ERRORS as e:
                raise _transport_failure(e) from None
            finally:
                resp.release()
            if resp.status != 200:
                raise self._classify(resp.status, raw.decode("utf-8", "replace"), resp.headers)
            try:
                data = json.loads(raw)
                data["choices"]  # noqa: B018 - a completion without choices is malformed
            except (ValueError, KeyError, TypeError):
                raise _Failure("bad_response", 200, "provider returned malformed JSON") from None
            return data

        data, attempts, (model, index, started) = await self._walk(chain, body, call, on_attempt)
        self.circuit.record(model, ok=True)
        usage = data.get("usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or estimate_tokens(messages_text(body.get("messages"))))
        tokens_out = int(usage.get("completion_tokens") or estimate_tokens(
            "".join((c.get("message") or {}).get("content") or "" for c in data.get("choices", []))))
        ok = self._attempt(on_attempt, model, index, "ok", started, http_status=200, input_tokens=tokens_in, output_tokens=tokens_out,
                           cost_usd=self.config.models[model].cost(tokens_in, tokens_out))
        return data, attempts + [ok]

    async def stream(self, chain: list[str], body: dict, on_attempt: Callable[[Attempt], None]) -> StreamResult:
        """Returns once a model has produced its first event; fallback is over from then on."""

        async def call(model: str):
            resp = await self._post(model, body, stream=True)
            if resp.status != 200:
                try:
                    text = (await resp.read()).decode("utf-8", "replace")
                except TRANSPORT_ERRORS:
                    text = ""
                finally:
                    resp.release()
                raise self._classify(resp.status, text, resp.headers)
            lines = _lines(resp)
            head: list[str] = []
            try:
                async for line in lines:
                    head.append(line)
                    if line.startswith("data:"):
                        break
                else:
                    resp.close()
                    raise _Failure("stream_cut", 200, "stream ended before the first event")
            except TimeoutError:
                resp.close()
                raise _Failure("timeout", 200, "no first event before the timeout") from None
            except (aiohttp.ClientError, ValueError) as e:
                resp.close()
                raise _Failure("connection", 200, f"stream broke before the first event: {type(e).__name__}") from None
            return resp, lines, head

        (resp, lines, head), attempts, (model, index, started) = await self._walk(chain, body, call, on_attempt)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        prompt_tokens = estimate_tokens(messages_text(body.get("messages")))

        async def chunks() -> AsyncIterator[bytes]:
            usage, out_chars, status, message = {}, 0, "ok", ""
            finished = False  # a complete stream ends with [DONE] or a finish_reason
            try:
                pending = list(head)
                while True:
                    if pending:
                        line = pending.pop(0)
                    else:
                        try:
                            line = await lines.__anext__()
                        except StopAsyncIteration:
                            break
                    payload = line[5:].strip() if line.startswith("data:") else ""
                    if payload == "[DONE]":
                        finished = True
                    elif payload:
                        try:
                            event = json.loads(payload)
                            usage = event.get("usage") or usage
                            for c in event.get("choices") or []:
                                out_chars += len(((c.get("delta") or {}).get("content")) or "")
                                finished = finished or bool(c.get("finish_reason"))
                        except ValueError:
                            status, message = "stream_cut", "provider sent a malformed event"
                            yield _sse_error("provider sent a malformed event; the stream was ended", model)
                            return
                    yield (line + "\n").encode()
                if not finished:
                    status, message = "stream_cut", "provider closed the stream before it finished"
                    yield _sse_error(message, model)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                status, message = "stream_cut", f"stream broke after the first byte: {type(e).__name__}"
                yield _sse_error(message, model)
            except GeneratorExit:
                status, message = "client_closed", "the client went away mid-stream"
                raise
            finally:
                # a complete stream's connection goes back to the pool; a broken one is closed
                if status == "ok":
                    resp.release()
                else:
                    resp.close()
                tokens_in = int(usage.get("prompt_tokens") or prompt_tokens)
                tokens_out = int(usage.get("completion_tokens") or estimate_tokens("x" * out_chars))
                self.circuit.record(model, ok=status == "ok")
                final = Attempt(model, index, status, 200, (time.perf_counter() - started) * 1000, tokens_in, tokens_out,
                                self.config.models[model].cost(tokens_in, tokens_out), message)
                on_attempt(final)
                if not done.done():
                    done.set_result(final)

        return StreamResult(model=model, attempts=attempts, chunks=chunks(), finished=done)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The response body's lines, without their line ends (SSE events are separated by blank lines)."""
    async for raw in resp.content:
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


def _sse_error(message: str, model: str) -> bytes:
    payload = {"error": {"message": message, "type": "provider_error", "code": "stream_interrupted", "model": model}}
    return f"data: {json.dumps(payload)}\n\n".encode()
