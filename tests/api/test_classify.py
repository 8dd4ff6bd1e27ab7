"""/classify on a real BentoML server: answers, limits, bad input, consistency, no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from escalation.schema import MAX_TASKS_PER_REQUEST, MAX_TEXT_CHARS
from tests.conftest import ROOT

TASKS = [
    {"text": "Should billing keep its own database or share the orders one?", "role": "architect"},
    {"text": "fix typo in the architecture doc", "role": "implementer"},
    {"text": "bump the kafka client to 3.7.1"},
]


def classify(service, body, **kw):
    return httpx.post(f"{service.url}/classify", json=body, timeout=30, **kw)


def test_classify_returns_a_decision_per_task(service, model):
    r = classify(service, {"tasks": TASKS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 3
    assert out[0]["escalate"] is True and out[1]["escalate"] is False
    for d in out:
        assert set(d) >= {"escalate", "score", "probability", "threshold", "model_version", "reasons"}
        assert d["model_version"] == model.version and d["threshold"] == pytest.approx(model.threshold)
        assert d["reasons"][0].startswith("score ") and "most similar labeled examples" in d["reasons"][-1]
        assert 0 <= d["probability"] <= 1


def test_same_text_same_score_from_api_cli_and_python(service, model, tmp_path):
    api = [d["score"] for d in classify(service, {"tasks": TASKS}).json()]
    python = model.score([t["text"] for t in TASKS], [t.get("role") for t in TASKS]).score
    f = tmp_path / "tasks.jsonl"
    f.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    out = subprocess.run([sys.executable, "-m", "cli.main", "score", str(f)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["text"] for line in lines] == [t["text"] for t in TASKS]  # input fields kept, in order
    cli = [line["score"] for line in lines]
    np.testing.assert_allclose(api, python, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cli, python, rtol=0, atol=1e-6)
    assert "scoring" in out.stderr  # the progress bar goes to stderr


def test_concurrent_requests_are_batched_and_answered_in_order(service):
    texts = [f"task {i}: review the pagination change in the orders API" for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: classify(service, {"tasks": [{"text": t, "id": t}]}), texts))
    assert all(r.status_code == 200 for r in results)
    assert [r.json()[0]["id"] for r in results] == texts


@pytest.mark.parametrize("body, status, fragment", [
    ({"tasks": [{"text": ""}]}, 400, "empty or whitespace"),
    ({"tasks": [{"text": "   \n\t"}]}, 400, "empty or whitespace"),
    ({"tasks": [{"text": "x" * (MAX_TEXT_CHARS + 1)}]}, 400, f"the limit is {MAX_TEXT_CHARS}"),
    ({"tasks": [{"text": "plan the sprint", "role": "boss"}]}, 400, "architect"),
    ({"tasks": [{"text": 42}]}, 400, "string"),
    ({"tasks": "split the monolith"}, 400, "array"),
    ({"tasks": []}, 400, "at least 1"),
    ({"tasks": [{"text": "a"}] * (MAX_TASKS_PER_REQUEST + 1)}, 400, f"at most {MAX_TASKS_PER_REQUEST}"),
    ({"tasks": [{"text": "a", "colour": "red"}]}, 400, "Extra inputs"),
    ({}, 400, "tasks"),
])
def test_bad_input_gets_a_4xx_that_names_the_problem(service, body, status, fragment):
    r = classify(service, body)
    assert r.status_code == status, r.text
    assert fragment in r.text


@pytest.mark.parametrize("raw, fragment", [
    (b'{"tasks": [{"text": "unterminated', "Invalid JSON"),
    (b'{"tasks": [{"text": "caf\xe9"}]}', "Invalid JSON"),
    (b"", "tasks"),
])
def test_malformed_and_non_utf8_bodies_are_rejected(service, raw, fragment):
    r = httpx.post(f"{service.url}/classify", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment in r.text


def test_serving_processes_never_load_torch_mlflow_or_scikit_learn(service):
    """torch: the encoder is ONNX. mlflow and scikit-learn: 3 s of start-up and ~150 MB each worker
    would keep; the model loads from numpy arrays and the registry is read without mlflow."""
    pids = [service.proc.pid]
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(service.proc.pid)], capture_output=True, text=True)
    children = [int(p) for p in out.stdout.split()]
    for child in children:
        grand = subprocess.run(["ps", "-o", "pid=", "--ppid", str(child)], capture_output=True, text=True)
        pids += [child] + [int(p) for p in grand.stdout.split()]
    assert len(pids) >= 2  # the CLI and at least the BentoML worker
    for pid in pids:
        maps = open(f"/proc/{pid}/maps").read()
        assert "libtorch" not in maps and "/torch/" not in maps, f"process {pid} loaded torch"
        assert "/sklearn/" not in maps, f"process {pid} loaded scikit-learn"
    assert any("onnxruntime" in open(f"/proc/{pid}/maps").read() for pid in pids)


def test_the_service_runtime_imports_neither_mlflow_nor_scikit_learn(trained, tmp_path):
    """What a worker does at start (import the service, build the runtime, load the champion), in a
    fresh interpreter; pure-Python packages such as mlflow leave no trace in /proc/PID/maps."""
    code = (
        "import sys, serving.service\n"
        "from serving.runtime import Runtime\n"
        "rt = Runtime(start_ledger=False)\n"
        "assert rt.slot.model is not None, rt.slot.error\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'sklearn', 'torch', 'pandas'}))\n"
    )
    env = dict(os.environ, ESCALATION_DB_URL=f"sqlite:///{tmp_path / 'e.db'}")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version_and_health(service, model):
    assert httpx.get(f"{service.url}/livez").status_code == 200
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    v = httpx.get(f"{service.url}/version").json()
    assert v["model_version"] == model.version and v["config_version"].startswith("test+")
