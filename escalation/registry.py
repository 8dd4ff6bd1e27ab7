"""The MLflow model registry as both paths see it: aliases, versions, and a local copy of an artifact.

mlflow is imported inside the functions, so `import escalation` stays light. The service never
imports it (3 s of start-up and about 100 MB it would keep for its whole life): `local_copy`
answers from the local artifact cache, reading the alias straight from the registry's SQLite
table when the store is the default SQLite file, and otherwise `fetch_in_subprocess` resolves and
downloads in a short-lived child process.
Champion history lives in a registered-model tag so `rollback` knows where to go back to.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from escalation import settings

HISTORY_TAG = "champion_history"


def client():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in CLI output
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


def _cache_folder(name: str, version: str, cache: Path | None = None) -> tuple[Path, Path]:
    """(download target, artifact folder) of one version in the local cache; versions are per store."""
    store_key = hashlib.sha256(settings.tracking_uri().encode()).hexdigest()[:10]
    target = (cache or settings.VAR / "models" / store_key) / f"{name}-v{version}"
    return target, target / "artifacts" / "model_dir"


def fetch(uri: str, cache: Path | None = None) -> ResolvedModel:
    """Downloads (once per version) the `model_dir` artifact of the model the uri points at."""
    name, _ = parse_uri(uri)
    version = version_for(uri)
    if version is None:
        raise LookupError(f"no model registered at {uri}; run `escalation train` first")
    target, folder = _cache_folder(name, version, cache)
    if not (folder / "meta.json").exists():
        import mlflow

        client()
        tmp = target.parent / f".{target.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return ResolvedModel(uri=uri, version=version, folder=folder)


_engines: dict = {}


def local_copy(uri: str) -> ResolvedModel | None:
    """The cached artifact the uri points at now, found without mlflow; None when unsure.

    Only for the default SQLite store: the alias is one row of MLflow's `registered_model_aliases`
    table (schema of the pinned mlflow). Anything unexpected returns None and the caller asks
    mlflow itself, so this can make loading faster but never different.
    """
    tracking = settings.tracking_uri()
    if not tracking.startswith("sqlite:///") or not Path(tracking.removeprefix("sqlite:///")).exists():
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    name, ref = parse_uri(uri)
    version = ref
    if not ref.isdigit():
        try:
            eng = _engines.setdefault(tracking, create_engine(tracking))
            with eng.connect() as conn:
                rows = conn.execute(text("SELECT version FROM registered_model_aliases WHERE name = :n AND alias = :a"),
                                    {"n": name, "a": ref}).all()
        except SQLAlchemyError:
            return None
        if len(rows) != 1:
            return None
        version = str(rows[0][0])
    _, folder = _cache_folder(name, version)
    return ResolvedModel(uri, version, folder) if (folder / "meta.json").exists() else None


def fetch_in_subprocess(uri: str, timeout_s: float = 300) -> ResolvedModel:
    """`fetch` in a child process (`python -m escalation.registry URI`), for processes that must not
    import mlflow. Raises LookupError with the child's message when the uri resolves to nothing."""
    proc = subprocess.run([sys.executable, "-m", "escalation.registry", uri], capture_output=True, text=True,
                          timeout=timeout_s, env=dict(os.environ), cwd=settings.PROJECT_ROOT)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise LookupError(lines[-1] if lines else f"resolving {uri} failed (exit {proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return ResolvedModel(uri=out["uri"], version=out["version"], folder=Path(out["folder"]))


def champion_history(name: str = settings.MODEL_NAME) -> list[str]:
    tags = client().get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def set_champion(version: str, name: str = settings.MODEL_NAME, history: list[str] | None = None) -> None:
    c = client()
    c.set_registered_model_alias(name, settings.CHAMPION, version)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history if history is not None else champion_history(name) + [version]))


if __name__ == "__main__":  # used by fetch_in_subprocess: prints one JSON line, or the error and exits 1
    try:
        resolved = fetch(sys.argv[1])
    except Exception as e:  # the parent shows this line to the operator
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"uri": resolved.uri, "version": resolved.version, "folder": str(resolved.folder)}))
