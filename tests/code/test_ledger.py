"""The ledger never blocks or fails a response, and a crash loses no acknowledged row."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from sqlalchemy import create_engine, func, select

from escalation import store
from serving.ledger import LedgerWriter
from tests.conftest import ROOT


def count(url: str, table) -> int:
    with store.engine(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def attempt_row(i: int) -> dict:
    return {"request_id": f"r{i}", "time": store.utcnow(), "role": "architect", "model": "z-ai/glm-4.5", "attempt": 1,
            "status": "ok", "latency_ms": 12.5, "input_tokens": 100, "output_tokens": 20, "cost_usd": 0.0001}


def test_rows_written_by_a_process_killed_before_flushing_are_recovered(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    journal = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from escalation import store
        from serving.ledger import LedgerWriter
        from sqlalchemy import create_engine
        # the database is unreachable while this process lives, so rows can only be in the journal
        w = LedgerWriter(create_engine("sqlite:///{tmp_path}/no-such-dir/x.db"), __import__('pathlib').Path({str(journal)!r}))
        for i in range(500):
            w.write("attempts", {{"request_id": f"r{{i}}", "time": store.utcnow(), "model": "m", "attempt": 1, "status": "ok"}})
        print("acknowledged", flush=True)
        os._exit(0)  # a crash: no flush, no cleanup
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "acknowledged" in out.stdout, out.stderr
    assert count(url, store.attempts) == 0  # the crash left every row only in the journal
    writer = LedgerWriter(store.engine(url), journal)  # the next start recovers them
    writer.close()
    assert count(url, store.attempts) == 500


def test_recovery_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    writer = LedgerWriter(store.engine(url), tmp_path / "journal.jsonl")
    for i in range(20):
        writer.write("attempts", attempt_row(i))
    writer.flush()
    (tmp_path / "journal.checkpoint").write_text("0")  # as if the checkpoint write was lost
    writer.flush()
    writer.close()
    assert count(url, store.attempts) == 20


def test_database_down_does_not_fail_writes_and_rows_arrive_later(tmp_path):
    good_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store.engine(good_url)  # create the schema
    broken = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")  # cannot be opened
    writer = LedgerWriter(broken, tmp_path / "journal.jsonl", flush_interval_s=0.05)
    started = time.perf_counter()
    for i in range(200):
        writer.write("attempts", attempt_row(i))
    assert time.perf_counter() - started < 1.0  # appends only; nothing waits for the database
    time.sleep(0.3)
    assert writer.failures > 0
    writer._stop.set()
    writer.eng = store.engine(good_url)  # the database is back
    writer.flush()
    assert count(good_url, store.attempts) == 200


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_still_land(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    writer = LedgerWriter(store.engine(url), tmp_path / "journal.jsonl", flush_interval_s=3600)
    writer.write("attempts", attempt_row(1))
    writer.write("attempts", {**attempt_row(2), "time": None})  # NOT NULL column: the database refuses it
    writer.write("attempts", attempt_row(3))
    writer.flush()
    writer.write("attempts", attempt_row(4))  # the ledger keeps going afterwards
    writer.close()
    assert count(url, store.attempts) == 3
    rejected = (tmp_path / "journal.rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and '"request_id": "r2"' in rejected[0]
