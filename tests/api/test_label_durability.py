"""A label the review API acknowledged survives the service being killed (SIGKILL) right after."""
from __future__ import annotations

import os
import signal

import httpx
from sqlalchemy import select

from escalation import store
from tests.conftest import start_service, write_test_config


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
    # its own session, so one killpg reaches the CLI, BentoML and its worker
    proc, url = start_service(config, tmp_path / "log", log, env=dict(os.environ, ESCALATION_DB_URL=db_url), start_new_session=True)
    try:
        acknowledged = []
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {token}"}) as client:
            for item in items:
                r = client.post(f"{url}/review/api/labels", json={"item_id": item, "verdict": "critical", "note": "shared data"})
                assert r.status_code == 200, r.text
                acknowledged.append(item)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole tree, the instant the last answer arrived
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    store._engines.pop(db_url, None)  # read the file afresh, as the next process would
    with store.engine(db_url).connect() as conn:
        rows = conn.execute(select(store.labels.c.item_id, store.labels.c.verdict, store.labels.c.reviewer)).all()
    assert sorted(r.item_id for r in rows) == sorted(acknowledged)
    assert {(r.verdict, r.reviewer) for r in rows} == {("critical", "kim")}
