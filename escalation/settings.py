"""Where things live, and the environment variables that move them. Read once, imported everywhere.

Embedded defaults keep a fresh clone self-contained: MLflow in `mlflow.db` + `mlartifacts/`, the
service database in `escalation.db`, caches in `var/`, all in the project folder and ignored by git.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("ESCALATION_HOME", Path(__file__).resolve().parent.parent))

MODEL_NAME = "escalation-classifier"
EXPERIMENT_NAME = "escalation-classifier"
CHAMPION, CHALLENGER = "champion", "challenger"

DEFAULT_CONFIG = PROJECT_ROOT / "config" / "routing.yaml"
PREVIOUS_LANDSCAPE_CONFIG = PROJECT_ROOT / "config" / "previous_landscape.yaml"
TRAINING_CONFIG = PROJECT_ROOT / "config" / "training.yaml"
CORPUS = PROJECT_ROOT / "data" / "tasks.jsonl"
TRACE = PROJECT_ROOT / "data" / "trace.jsonl"
REPORTS = PROJECT_ROOT / "reports"
# Local state that can be rebuilt: encoder exports, embedding caches, model copies, ledger journals.
VAR = Path(os.environ.get("ESCALATION_VAR", PROJECT_ROOT / "var"))


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_location() -> str:
    """Artifacts sit beside the embedded store; with a remote tracking server the server decides."""
    return (PROJECT_ROOT / "mlartifacts").as_uri()


def db_url() -> str:
    return os.environ.get("ESCALATION_DB_URL") or f"sqlite:///{PROJECT_ROOT / 'escalation.db'}"


def config_path() -> Path:
    return Path(os.environ.get("ESCALATION_CONFIG", DEFAULT_CONFIG))
