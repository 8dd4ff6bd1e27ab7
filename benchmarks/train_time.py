"""`escalation train` on 5,000 rows from a cold start: no exported encoder, no cached embeddings.

    python benchmarks/train_time.py [--rows 5000]

Target (issue "Escalation classifier end to end"): within 3 minutes on 2 cores. The rows are a
stratified sample of data/tasks.jsonl (same label share per split); the run uses a scratch MLflow
store, database and state folder (ESCALATION_VAR), so it pays for everything a clean clone pays:
the torch -> ONNX export and int8 quantisation, embedding every row, cross-validating the heads,
calibration, plots and the MLflow registration. Printed as a ratio against the target.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, verdict  # noqa: E402

TARGET_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(ROOT / "data" / "tasks.jsonl", encoding="utf-8")]
    rng = random.Random(0)
    rng.shuffle(rows)
    share = args.rows / len(rows)
    sample = []
    for split in ("train", "test"):
        for label in (0, 1):
            group = [r for r in rows if r["split"] == split and r["label"] == label]
            sample += group[: round(len(group) * share)]
    scratch = Path(tempfile.mkdtemp(prefix="escalation-train-bench-"))
    corpus = scratch / "tasks.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample), encoding="utf-8")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", ESCALATION_DB_URL=f"sqlite:///{scratch / 'e.db'}",
               ESCALATION_VAR=str(scratch / "var"), PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "train", "--corpus", str(corpus), "--no-reviewed"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steps = [line for line in proc.stdout.splitlines() if "s)" in line or line.startswith("test split")]
    print("\n".join(steps[-8:]))
    print(f"`escalation train` on {len(sample)} rows, cold (encoder export + embeddings + CV + MLflow), {os.cpu_count()} cores: "
          f"{elapsed:.0f} s = {elapsed / TARGET_S:.2f}x of the 180 s target: {verdict(elapsed <= TARGET_S)}")


if __name__ == "__main__":
    main()
