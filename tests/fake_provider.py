"""A real local HTTP server that speaks OpenAI's chat-completions protocol, for shim tests and
benchmarks. It is told what to do per model through a script:

    POST /_script  {"model": "z-ai/glm-4.5", "behaviours": ["500", "429", "ok"]}
    POST /_default {"behaviour": "ok"}          # for models with no script left
    GET  /_requests                             # every request it received, in order

Behaviours: ok, 429, 500, 503, timeout (sleeps longer than any client timeout), drop (closes the
connection without answering), malformed (200 with broken JSON), context (400 context length),
badrequest (400 other), cut (streams one event, then drops the connection), slowfirst (waits
`slow_s` before answering). Streaming follows the request's `stream` flag.

Run alone: python -m tests.fake_provider --port 8099
"""
from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeProvider:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, reply: str = "Decision noted.", slow_s: float = 0.2,
                 tls: ssl.SSLContext | None = None):
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.default = "ok"
        self.requests: list[dict] = []
        self.reply, self.slow_s = reply, slow_s
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle's algorithm on, the body
            # waits for the client's delayed ACK (40 ms on Linux) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _json(self, status: int, obj, extra: dict | None = None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/_requests":
                    with provider.lock:
                        self._json(200, provider.requests)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw or b"{}")
                if self.path == "/_script":
                    with provider.lock:
                        provider.scripts[body["model"]].extend(body["behaviours"])
                    return self._json(200, {"ok": True})
                if self.path == "/_default":
                    provider.default = body["behaviour"]
                    return self._json(200, {"ok": True})
                if self.path == "/_reset":
                    with provider.lock:
                        provider.scripts.clear()
                        provider.requests.clear()
                        provider.default = "ok"
                    return self._json(200, {"ok": True})
                if not self.path.endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                model = body.get("model", "")
                with provider.lock:
                    behaviour = provider.scripts[model].popleft() if provider.scripts[model] else provider.default
                    provider.requests.append({"model": model, "behaviour": behaviour, "stream": bool(body.get("stream")),
                                              "authorization": self.headers.get("authorization"), "time": time.time(),
                                              "path": self.path})  # an absolute URL when it came through as a proxy
                self.handle_behaviour(behaviour, model, body)

            def handle_behaviour(self, behaviour: str, model: str, body: dict):
                if behaviour in ("429", "500", "503"):
                    status = int(behaviour)
                    extra = {"retry-after": "0"} if status == 429 else None
                    return self._json(status, {"error": {"message": f"fake {status} from {model}", "type": "server_error", "code": status}}, extra)
                if behaviour == "context":
                    return self._json(400, {"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "code": "context_length_exceeded"}})
                if behaviour == "badrequest":
                    return self._json(400, {"error": {"message": "temperature must be between 0 and 2", "type": "invalid_request_error", "param": "temperature", "code": None}})
                if behaviour == "timeout":
                    time.sleep(60)
                    return
                if behaviour == "drop":
                    return self._drop()
                if behaviour == "malformed":
                    body_bytes = b'{"id": "x", "choices": [ {"message": '
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body_bytes)))
                    self.end_headers()
                    self.wfile.write(body_bytes)
                    return
                if behaviour == "slowfirst":
                    time.sleep(provider.slow_s)
                prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in body.get("messages", []))
                words = provider.reply.split(" ")
                if body.get("stream"):
                    return self._stream(model, words, prompt_tokens, cut=behaviour == "cut")
                self._json(200, {
                    "id": f"chatcmpl-fake-{int(time.time() * 1e6)}", "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": provider.reply}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)},
                })

            def _stream(self, model: str, words: list[str], prompt_tokens: int, cut: bool):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
                for i, w in enumerate(words):
                    delta = {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
                    self.wfile.write(f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n".encode())
                    self.wfile.flush()
                    if cut:
                        return self._drop()
                final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _drop(self):
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.close_connection = True

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS, for the certificate-verification tests
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.base_url = f"{'https' if tls else 'http'}://{host}:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeProvider":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, model: str, *behaviours: str) -> None:
        with self.lock:
            self.scripts[model].extend(behaviours)

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.requests.clear()
            self.default = "ok"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    fake = FakeProvider(port=args.port)
    print(f"fake provider on {fake.base_url}", flush=True)
    fake.server.serve_forever()
