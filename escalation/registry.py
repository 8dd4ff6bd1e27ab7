"""The MLflow model registry as both paths see it: aliases, versions, and a local copy of an artifact.

mlflow is imported inside the functions, so `import escalation` stays light; the service pays for it
once at start and on reload. Champion history lives in a registered-model tag so `rollback` knows
where to go back to.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from escalation import settings

HISTORY_TAG = "champion_history"


def client():
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri())
    return MlflowClient()


@dataclass
class ResolvedModel:
    uri: str
    version: str
    folder: Path  # the local artifact folder EscalationModel loads


def parse_uri(uri: str) -> tuple[str, str]:
    """`models:/name@alias` or `models:/name/3` -> (name, alias-or-version)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"model uri {uri!r} must look like models:/escalation-classifier@champion")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        return tuple(rest.split("@", 1))  # type: ignore[return-value]
    name, _, version = rest.partition("/")
    if not version:
        raise ValueError(f"model uri {uri!r} names no alias or version")
    return name, version


def version_for(uri: str) -> str | None:
    """The version number an alias points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    name, ref = parse_uri(uri)
    c = client()
    if ref.isdigit():
        return ref
    try:
        return str(c.get_model_version_by_alias(name, ref).version)
    except MlflowException:
        return None


def fetch(uri: str, cache: Path | None = None) -> ResolvedModel:
    """Downloads (once per version) the `model_dir` artifact of the model the uri points at."""
    name, _ = parse_uri(uri)
    version = version_for(uri)
    if version is None:
        raise LookupError(f"no model registered at {uri}; run `escalation train` first")
    store_key = hashlib.sha256(settings.tracking_uri().encode()).hexdigest()[:10]  # versions are per store
    cache = cache or settings.VAR / "models" / store_key
    target = cache / f"{name}-v{version}"
    folder = target / "artifacts" / "model_dir"
    if not (folder / "meta.json").exists():
        import mlflow

        client()
        tmp = cache / f".{name}-v{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return ResolvedModel(uri=uri, version=version, folder=folder)


def champion_history(name: str = settings.MODEL_NAME) -> list[str]:
    tags = client().get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def set_champion(version: str, name: str = settings.MODEL_NAME, history: list[str] | None = None) -> None:
    c = client()
    c.set_registered_model_alias(name, settings.CHAMPION, version)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history if history is not None else champion_history(name) + [version]))
