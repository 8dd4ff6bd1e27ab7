"""`escalation data baseline`: the corpus' quick baseline, for the data card.

Embeddings from the service's encoder + plain logistic regression, trained on the train split;
ROC AUC and recall at a 5% budget on the test split, and the same model on any other labeled file
(such as ../shared/eval-dev/dev_public.jsonl), so the corpus' reach to real data is known.
On the test split (19% positives) the budget is applied as in calibration: the threshold escalates
5% of the split reweighted to a 5% prior. On another file it escalates the top 5% of that file, the
convention of the eval-dev README.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from escalation.encoder import OnnxEncoder
from escalation.model import features
from training.corpus import load_rows
from training.embed_cache import embed
from training.encoder_export import export_encoder
from training.evaluate import read_labeled
from training.heads import recall_at_budget


def top_share_recall(y, s, share: float = 0.05) -> float:
    return float((s[y == 1] >= np.quantile(s, 1 - share)).mean())


def baseline(corpus: str | Path, others: list[str], echo=print) -> dict:
    rows = load_rows(corpus)
    encoder = OnnxEncoder(export_encoder())
    vectors = embed(encoder, [r.text for r in rows])
    train = np.array([r.split == "train" for r in rows])
    y = np.array([r.label for r in rows])
    X = features(vectors, [r.role for r in rows])
    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=3000).fit(X[train], y[train])
    results = {}
    s = model.predict_proba(X[~train])[:, 1]
    results["test split (reweighted to a 5% prior)"] = (int((~train).sum()), float(roc_auc_score(y[~train], s)),
                                                       recall_at_budget(y[~train], s, 0.05, 0.05))
    for path in others:
        if not Path(path).exists():
            echo(f"skipping {path}: not found")
            continue
        labeled = read_labeled(path)
        v = encoder.encode([r["text"] for r in labeled])
        yl = np.array([r["label"] for r in labeled])
        sl = model.predict_proba(features(v, [r["role"] for r in labeled]))[:, 1]
        results[Path(path).name] = (len(labeled), float(roc_auc_score(yl, sl)), top_share_recall(yl, sl))
    echo("| evaluated on | rows | ROC AUC | recall at 5% budget |")
    echo("|---|---:|---:|---:|")
    for name, (n, auc, rec) in results.items():
        echo(f"| {name} | {n} | {auc:.3f} | {rec:.3f} |")
    return results
