"""A label the review API acknowledged survives the service being killed (SIGKILL) right after."""
from __future__ import annotations

import os
import signal
import subprocess

import httpx
from sqlalchemy import select

from escalation import store
from tests.conftest import start_service, write_test_config


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (BentoML starts its worker in a process group of its own)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in out for p in process_tree(int(child))]


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().lower()
    except FileNotFoundError:
        return "zombie"


def test_acknowledged_labels_survive_a_kill_right_after_the_answer(trained, fake_provider, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'escalation.db'}"
    eng = store.engine(db_url)
    items = [f"item-{i}" for i in range(5)]
    with eng.begin() as conn:
        for i, item in enumerate(items):
            conn.execute(store.review_items.insert().values(
                id=item, created=store.utcnow(), text=f"Should service {i} keep its own database?", role="architect",
                score=0.5, probability=0.5, threshold=0.5, uncertainty=0.0, reason="borderline", model_version="1"))
    token = store.add_reviewer(eng, "kim")

    config = write_test_config(tmp_path / "routing.yaml", fake_provider.base_url)
    log = open(tmp_path / "log", "w")
    # its own BentoML home: BentoML empties <home>/prometheus_multiproc_dir at start, which would
    # wipe the metrics of the session's service
    env = dict(os.environ, ESCALATION_DB_URL=db_url, BENTOML_HOME=str(tmp_path / "bentoml"))
    proc, url = start_service(config, tmp_path / "log", log, env=env)
    try:
        acknowledged = []
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {token}"}) as client:
            for item in items:
                r = client.post(f"{url}/review/api/labels", json={"item_id": item, "verdict": "critical", "note": "shared data"})
                assert r.status_code == 200, r.text
                acknowledged.append(item)
        tree = process_tree(proc.pid)  # the CLI exec'd into BentoML's supervisor, and its worker
        for pid in tree:  # the instant the last answer arrived
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert len(tree) >= 2 and not any(os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid) for pid in tree)
    finally:
        for pid in process_tree(proc.pid) if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)

    store._engines.pop(db_url, None)  # read the file afresh, as the next process would
    with store.engine(db_url).connect() as conn:
        rows = conn.execute(select(store.labels.c.item_id, store.labels.c.verdict, store.labels.c.reviewer)).all()
    assert sorted(r.item_id for r in rows) == sorted(acknowledged)
    assert {(r.verdict, r.reviewer) for r in rows} == {("critical", "kim")}
