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


def stop_service(proc: subprocess.Popen, log, timeout: float = 30) -> None:
    """Stops what `start_service` started: SIGTERM, then SIGKILL if it has not exited in `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def service(trained, fake_provider, tmp_path_factory):
    """A real `escalation serve` on loopback, against the fake provider. Yields its base URL."""
    folder = tmp_path_factory.mktemp("service")
    config = write_test_config(folder / "routing.yaml", fake_provider.base_url)
    log = open(folder / "service.log", "w")
    proc, url = start_service(config, folder / "service.log", log)
    yield type("Service", (), {"url": url, "proc": proc, "log": folder / "service.log", "config": config})
    stop_service(proc, log, timeout=20)


# ----- a registry of its own: champion and a worse challenger ------------------------------------
GATE_SAMPLE = {"train": 1000, "test_critical": 100, "test_routine": 400}


@pytest.fixture(scope="session")
def weak_challenger(tmp_path_factory):
    """A deliberately worse model, trained in seconds and not registered anywhere.

    Logistic regression alone (no lexical head, 2 CV folds) on 1,000 train rows whose labels are
    shuffled, so it has learned nothing; its threshold is calibrated on a sample of the frozen test
    split (100 critical, 400 routine rows). That corpus file is returned too: the promotion gate
    compares on its test split, which keeps each gate run to a few hundred texts. Embeddings come
    from the shared cache in var/ (every text is in the corpus), so no text is encoded here.
    """
    import numpy as np

    from training.corpus import load_rows, write_rows
    from training.train import load_training_config, train

    rng = np.random.default_rng(7)
    rows = load_rows(ROOT / "data" / "tasks.jsonl")
    by_kind = {
        "train": [r for r in rows if r.split == "train"],
        "test_critical": [r for r in rows if r.split == "test" and r.label == 1],
        "test_routine": [r for r in rows if r.split == "test" and r.label == 0],
    }
    picked = {k: [by_kind[k][i] for i in sorted(rng.choice(len(by_kind[k]), n, replace=False))] for k, n in GATE_SAMPLE.items()}
    shuffled = rng.permutation([r.label for r in picked["train"]])
    train_rows = [r.model_copy(update={"label": int(y)}) for r, y in zip(picked["train"], shuffled)]
    folder = tmp_path_factory.mktemp("weak_challenger")
    corpus = folder / "corpus.jsonl"
    write_rows(train_rows + picked["test_critical"] + picked["test_routine"], corpus)
    tc = dict(load_training_config(), heads=["logreg"], lexical=False, cv_folds=2, index_size=200)
    result = train(corpus, config_path=ROOT / "config" / "routing.yaml", training_config=tc, register=False, log=lambda *a: None)
    return type("WeakChallenger", (), {"folder": result.folder, "corpus": corpus})


@pytest.fixture
def private_registry(trained, weak_challenger, tmp_path, monkeypatch):
    """An MLflow store, service database and state folder of this test's own, so the session's
    champion (and every other test using it) is never disturbed: the session's model is registered
    as v1 (@champion), the weak challenger as v2 (@challenger).

    In this process the stores move through the environment and `settings.VAR`; `env` carries the
    same for child processes (`escalation serve`). The state folder links the
    shared encoder export and embedding cache, so nothing is exported or embedded again, and model
    copies and ledger journals stay in tmp_path. MLflow artifacts go to tmp_path too.
    """
    import json

    from escalation import settings
    from escalation.predict import load_model
    from escalation.registry import client
    from training.train import log_to_mlflow

    var = tmp_path / "var"
    var.mkdir()
    for cache in ("encoders", "embeddings"):
        (var / cache).symlink_to((settings.VAR / cache).resolve(), target_is_directory=True)
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ESCALATION_DB_URL": f"sqlite:///{tmp_path / 'escalation.db'}",
        "ESCALATION_VAR": str(var),
        # `escalation promote` asks a service here to reload: nobody listens, not a stray one on :3000
        "ESCALATION_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings, "VAR", var)
    client().create_experiment(settings.EXPERIMENT_NAME, artifact_location=(tmp_path / "mlartifacts").as_uri())
    versions = []
    for name, folder in (("champion", trained.folder), ("weak challenger", weak_challenger.folder)):
        meta = json.loads((folder / "meta.json").read_text())
        params = {"head": meta["head"], "corpus_hash": meta["corpus_hash"], "threshold": meta["threshold"]["value"]}
        versions.append(log_to_mlflow(folder, meta, params, {}, run_name=f"test {name}")[1])
    assert versions == ["1", "2"]
    models = {v: load_model(f"models:/{settings.MODEL_NAME}/{v}") for v in versions}  # into var/models, where the service looks
    yield type("PrivateRegistry", (), {
        "env": dict(os.environ), "champion": "1", "challenger": "2", "models": models, "gate_corpus": weak_challenger.corpus,
        "db_url": env["ESCALATION_DB_URL"],
    })


def gate_runs() -> list:
    """The `promotion-gate` MLflow runs of the current store, oldest first."""
    from escalation import settings
    from escalation.registry import client

    c = client()
    exp = c.get_experiment_by_name(settings.EXPERIMENT_NAME)
    return c.search_runs([exp.experiment_id], filter_string="tags.kind = 'promotion-gate'", order_by=["attributes.start_time ASC"])
