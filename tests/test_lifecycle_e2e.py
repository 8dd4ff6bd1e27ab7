"""The reviewer loop end to end, with real parts only (MLflow store, SQLite, BentoML server, Chromium):
a reviewer labels ten queued items in the browser, `escalation train` picks them up, promotion moves
the champion, the running service answers with the new version, and rollback brings the old one back.

v1 is trained on a quarter of the train split (the corpus as it was months ago); v2 on the whole
corpus plus the reviewers' labels. Training is seeded, so the gate's outcome is the same every run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import select

from escalation import store
from tests.conftest import ADMIN_TOKEN, ROOT, free_port, write_test_config
from training.corpus import load_rows, write_rows

# Tasks the service sees; the reviewer's verdict for each is the value.
TRAFFIC = {
    "Decide whether the loyalty service keeps its own points ledger or writes to the billing ledger": "critical",
    "Pick the message broker every team will publish domain events to": "critical",
    "Should mobile clients talk to the partner warehouse API directly or only through our gateway?": "critical",
    "Move tenant data for the EU customers into a separate region and database": "critical",
    "Agree on one identity provider for staff tools and the customer portal": "critical",
    "One schema per tenant or a tenant_id column everywhere?": "critical",
    "Replace nightly batch exports with change data capture for all downstream consumers": "critical",
    "update the onboarding doc with the new VPN steps": "routine",
    "fix the flaky checkout test that times out on CI": "routine",
    "bump the postgres driver to the latest patch release": "routine",
    "rename OrderManager to OrderService in the admin module": "routine",
    "add pagination to the invoices list endpoint": "routine",
    "review the PR that adds retries to the shipping client": "routine",
    "merge the release branch for 4.2 after the smoke tests pass": "routine",
    "write a unit test for the discount rounding helper": "routine",
    "regenerate the architecture diagrams after the folder rename": "routine",
    "tidy the log messages in the import job": "routine",
    "add an index on orders.created_at for the monthly report": "routine",
}


def run_cli(env, *args, timeout=900):
    out = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"escalation {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture
def lifecycle(tmp_path, fake_provider, monkeypatch):
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ESCALATION_DB_URL": f"sqlite:///{tmp_path / 'escalation.db'}",
        "ESCALATION_ADMIN_TOKEN": ADMIN_TOKEN,
    })
    for key in ("MLFLOW_TRACKING_URI", "ESCALATION_DB_URL"):
        monkeypatch.setenv(key, env[key])
    rows = load_rows(ROOT / "data" / "tasks.jsonl")
    early = [r for r in rows if r.split == "test" or int(r.id[-2:], 16) % 4 == 0]
    write_rows(early, tmp_path / "early.jsonl")
    run_cli(env, "train", "--corpus", str(tmp_path / "early.jsonl"))

    config = write_test_config(tmp_path / "routing.yaml", fake_provider.base_url,
                               **{"review.sample_rate": 1.0, "review.band": 0.5, "shadow.enabled": True})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env["ESCALATION_SERVICE_URL"] = url
    log = open(tmp_path / "service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--config", str(config)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
        time.sleep(0.3)
    yield env, url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def version(url) -> str:
    return httpx.get(f"{url}/version").json()["model_version"]


def test_label_retrain_promote_reload_rollback(lifecycle):
    from playwright.sync_api import sync_playwright

    env, url = lifecycle
    assert version(url) == "1"
    token = run_cli(env, "reviewers", "add", "ana").strip()
    r = httpx.post(f"{url}/classify", json={"tasks": [{"text": t, "role": "architect"} for t in TRAFFIC]}, timeout=60)
    assert r.status_code == 200 and all(d["model_version"] == "1" for d in r.json())

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(f"{url}/review")
        page.fill("#token", token)
        page.click("#signin-btn")
        page.wait_for_selector(".item.current")
        assert "signed in as ana" in page.inner_text("#who")
        for n in range(10):
            current = page.locator(".item.current .text").inner_text()
            page.keyboard.press("c" if TRAFFIC[current] == "critical" else "r")
            page.wait_for_function(f"document.getElementById('status').textContent.includes('Saved') && "
                                   f"document.querySelectorAll('.item').length === {len(TRAFFIC) - n - 1}")
        browser.close()

    eng = store.engine(env["ESCALATION_DB_URL"])
    with eng.connect() as conn:
        labels = conn.execute(select(store.labels)).mappings().all()
    assert len(labels) == 10 and {lab["reviewer"] for lab in labels} == {"ana"}
    assert all(lab["verdict"] == TRAFFIC[lab["text"]] for lab in labels)

    trained = run_cli(env, "train")
    merge = json.loads(trained.split("merged reviewed labels: ", 1)[1].splitlines()[0].replace("'", '"'))
    assert merge["reviewed_rows"] == 10 and merge["reviewed_added"] + merge["reviewed_held_out"] + merge["reviewed_overrides"] + merge["reviewed_agreeing"] == 10
    assert "registered escalation-classifier version 2 as @challenger" in trained
    status = httpx.get(f"{url}/admin/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert (status["model_version"], status["shadow_version"]) == ("1", "2")  # train told the service: the shadow scores v2

    promoted = run_cli(env, "promote")
    assert "@champion -> v2 (was v1)" in promoted
    assert version(url) == "2"  # the running service reloaded, no restart
    assert httpx.post(f"{url}/classify", json={"tasks": [{"text": "Split the ledger per tenant?"}]}).json()[0]["model_version"] == "2"

    rolled = run_cli(env, "rollback")
    assert "@champion -> v1 (rolled back from v2" in rolled
    assert version(url) == "1"
