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
