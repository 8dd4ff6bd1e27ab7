"""Shared fixtures: isolated stores, one trained model per session, the fake provider, a live service.

Tests never touch the developer's mlflow.db or escalation.db: every session gets its own MLflow
store and database under a temporary folder. The encoder export and the embedding cache in var/
are shared (they are keyed by content), so only the first run on a clean clone pays for them.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEV_SET = ROOT.parent / "shared" / "eval-dev" / "dev_public.jsonl"
ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """MLflow store and service database for the whole session (set in the environment)."""
    base = tmp_path_factory.mktemp("stores")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "ESCALATION_DB_URL": f"sqlite:///{base / 'escalation.db'}",
        "ESCALATION_ADMIN_TOKEN": ADMIN_TOKEN,
        "BENTOML_DO_NOT_TRACK": "True",
        "PROMETHEUS_MULTIPROC_DIR": str(base / "prom"),
    }
    (base / "prom").mkdir()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def trained(stores):
    """Trains on data/tasks.jsonl once per session and registers v1 as champion."""
    from training.train import train

    return train(ROOT / "data" / "tasks.jsonl", config_path=ROOT / "config" / "routing.yaml", log=lambda *a: None)


@pytest.fixture(scope="session")
def model(trained):
    from escalation.predict import load_model

    return load_model()


@pytest.fixture(scope="session")
def fake_provider():
    from tests.fake_provider import FakeProvider

    fake = FakeProvider().start()
    yield fake
    fake.stop()


def write_test_config(path: Path, base_url: str, **changes) -> Path:
    """config/routing.yaml pointed at the fake provider, with short timeouts; `changes` patch dotted keys."""
    cfg = yaml.safe_load((ROOT / "config" / "routing.yaml").read_text())
    cfg["version"] = "test"
    cfg["providers"]["openrouter"]["base_url"] = base_url
    for m in cfg["models"].values():
        m["timeout_s"] = 1.5
    cfg["retry"].update({"attempts_per_model": 2, "backoff_s": 0.01, "max_backoff_s": 0.05})
    cfg["retry"]["circuit"] = {"failures": 3, "cooldown_s": 1.0}
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_service(config: Path, log_path: Path, log, env: dict | None = None, **popen) -> tuple[subprocess.Popen, str]:
    """`escalation serve --config CONFIG` on a free loopback port; returns once /readyz answers 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--config", str(config)],
                            cwd=ROOT, env=env or dict(os.environ), stdout=log, stderr=subprocess.STDOUT, **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"service not ready: {log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def service(trained, fake_provider, tmp_path_factory):
    """A real `escalation serve` on loopback, against the fake provider. Yields its base URL."""
    folder = tmp_path_factory.mktemp("service")
    config = write_test_config(folder / "routing.yaml", fake_provider.base_url)
    log = open(folder / "service.log", "w")
    proc, url = start_service(config, folder / "service.log", log)
    yield type("Service", (), {"url": url, "proc": proc, "log": folder / "service.log", "config": config})
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
