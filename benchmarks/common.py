"""Helpers shared by the benchmark scripts: a service started the way a user starts it, timing, RSS."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def process_tree(pid: int) -> list[int]:
    out = [pid]
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    for c in children:
        out += process_tree(int(c))
    return out


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cmdline(pid: int) -> str:
    return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")


@contextmanager
def running_service(config: str | None = None, extra_env: dict | None = None):
    """`escalation serve` on a free port with a scratch database; yields (url, pid, seconds to ready)."""
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="escalation-bench-")
    env = dict(os.environ, ESCALATION_DB_URL=f"sqlite:///{scratch}/bench.db", BENTOML_DO_NOT_TRACK="True", **(extra_env or {}))
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)] + (["--config", config] if config else [])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(f"{scratch}/service.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(open(f"{scratch}/service.log").read()[-2000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield url, proc.pid, time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def verdict(ok: bool) -> str:
    return "MEETS" if ok else "MISSES"


class KeepAliveClient:
    """A minimal HTTP/1.1 JSON client on one kept-alive connection (http.client).

    The benchmarks time the service, not the client: httpx spent about 2 ms of CPU per request on
    this machine, on the same 2 cores the service needs.
    """

    def __init__(self, url: str, timeout: float = 120):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def post(self, path: str, body: dict) -> tuple[int, dict, bytes]:
        import json

        import http.client

        payload = json.dumps(body)
        for attempt in (1, 2):  # the server closes idle connections after a few seconds: reconnect once
            try:
                self.conn.request("POST", path, payload, {"content-type": "application/json"})
                r = self.conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt == 2:
                    raise
