"""`escalation`: the one command line for both paths. Each command imports what it needs when it
runs, so `escalation --help` is instant and serving commands never import torch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from escalation import settings


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Escalation classifier and routing shim (see README.md)."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


# ----- data ------------------------------------------------------------------------------------
@main.group()
def data():
    """The labeled corpus."""


@data.command("validate")
@click.argument("file", default=str(settings.CORPUS), type=click.Path(dir_okay=False))
@click.option("--no-targets", is_flag=True, help="check schema, duplicates and splits only (e.g. a review export)")
@click.option("--no-embeddings", is_flag=True, help="skip the near-duplicate check (needs the encoder)")
@click.option("--update-card", is_flag=True, help="rewrite the statistics block of data/README.md from FILE")
def data_validate(file, no_targets, no_embeddings, update_card):
    """Check FILE (default data/tasks.jsonl) and print its statistics; exit 1 on any problem."""
    from training.corpus import format_statistics, validate

    if not Path(file).exists():
        fail(f"{file} does not exist")
    embed = None
    if not no_embeddings:
        from training.embed_cache import embed as cached_embed
        from training.encoder_export import load_encoder

        fp32 = load_encoder(quantize=False)  # near-duplicates are judged with the unquantised model
        embed = lambda texts: cached_embed(fp32, texts)  # noqa: E731
    report = validate(file, embed=embed, corpus_targets=not no_targets)
    if report.stats:
        click.echo(format_statistics(report.stats))
    for name, ok, detail in report.targets:
        click.echo(f"{'ok  ' if ok else 'MISS'} {name}: {detail}")
    for e in report.errors[:50]:
        click.echo(f"error: {e}", err=True)
    if len(report.errors) > 50:
        click.echo(f"... and {len(report.errors) - 50} more errors", err=True)
    if update_card and report.stats:
        from training.corpus import update_card as write_card

        write_card(settings.PROJECT_ROOT / "data" / "README.md", report.stats)
        click.echo("updated the statistics in data/README.md")
    if not report.ok:
        click.echo(f"{file}: INVALID ({len(report.errors)} errors, {sum(not ok for _, ok, _ in report.targets)} targets missed)", err=True)
        sys.exit(1)
    click.echo(f"{file}: valid")


@data.command("baseline")
@click.argument("others", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--corpus", default=str(settings.CORPUS), type=click.Path(exists=True, dir_okay=False))
def data_baseline(others, corpus):
    """Embeddings + logistic regression on the train split, scored on the test split and OTHERS."""
    from training.baseline import baseline

    baseline(corpus, list(others))


# ----- learn -----------------------------------------------------------------------------------
@main.command()
@click.option("--corpus", default=str(settings.CORPUS), type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False), help="routing config (budget, prior)")
@click.option("--no-reviewed", is_flag=True, help="ignore reviewers' labels in the database")
def train(corpus, config_path, no_reviewed):
    """Train, calibrate and register a challenger (the first model also becomes champion)."""
    from training.labels import reviewed_rows
    from training.train import train as run

    reviewed = [] if no_reviewed else reviewed_rows(settings.db_url())
    result = run(corpus, config_path=config_path, reviewed=reviewed)
    m = result.metrics
    click.echo(
        f"test split: roc_auc {m['roc_auc']:.4f}, recall at threshold {m['recall_at_threshold']:.4f}, "
        f"traffic-weighted escalation rate {m['escalation_rate_traffic']:.4f}"
    )
    _notify_service()  # a running shadow starts scoring the new challenger


@main.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--model-uri", default=f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}")
@click.option("--out", default=None, help="folder for metrics.json and plots (default reports/eval-<file>-v<version>)")
@click.option("--no-mlflow", is_flag=True, help="do not log the evaluation as an MLflow run")
def evaluate(file, model_uri, out, no_mlflow):
    """Metrics and plots of a model on FILE (any labeled JSONL; default: the corpus test split)."""
    from training.evaluate import run_evaluation

    run_evaluation(file, model_uri, out, log_mlflow=not no_mlflow)


@main.command()
@click.option("--from-traffic", is_flag=True, required=True, help="use the scores the service logged")
@click.option("--hours", default=24 * 7, show_default=True, help="how far back to read decisions")
@click.option("--apply", is_flag=True, help="register the model with the new threshold as challenger")
def calibrate(from_traffic, hours, apply):
    """Derive the threshold again from logged traffic scores of the champion."""
    from training.recalibrate import recalibrate_from_traffic

    recalibrate_from_traffic(hours=hours, apply=apply)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model-uri", default=f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}")
def score(file, model_uri):
    """Score a JSONL file (text, optional role): one JSON line per input line on stdout, in order."""
    from escalation.predict import score_file

    score_file(file, model_uri)


@main.command()
@click.option("--force", is_flag=True, help="promote even if the gate refuses")
@click.option("--corpus", default=str(settings.CORPUS), type=click.Path(exists=True, dir_okay=False),
              help="labeled corpus whose test split the gate compares on")
def promote(force, corpus):
    """Move @champion to @challenger if recall at the budget does not drop."""
    from training.promote import promote as run

    ok = run(force=force, corpus=corpus)
    _notify_service()
    sys.exit(0 if ok else 1)


@main.command()
def rollback():
    """Point @champion back at the previous champion."""
    from training.promote import rollback as run

    run()
    _notify_service()


def _notify_service() -> None:
    """Asks a running service to reload the champion (and the shadow's challenger) from the registry."""
    import httpx

    url = os.environ.get("ESCALATION_SERVICE_URL", "http://127.0.0.1:3000")
    token = admin_token(create=False)
    if not token:
        return
    try:
        r = httpx.post(f"{url}/admin/reload", headers={"authorization": f"Bearer {token}"}, timeout=60)
        click.echo(f"service at {url}: {r.json()}")
    except httpx.HTTPError:
        click.echo(f"no service answering at {url}; it loads the registry's models when it starts")


# ----- serve -----------------------------------------------------------------------------------
def admin_token(create: bool) -> str | None:
    """ESCALATION_ADMIN_TOKEN, or a token kept in var/admin_token (made on first serve)."""
    if os.environ.get("ESCALATION_ADMIN_TOKEN"):
        return os.environ["ESCALATION_ADMIN_TOKEN"]
    path = settings.VAR / "admin_token"
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="routing config (default config/routing.yaml)")
def serve(host, port, config_path):
    """Run the service (trains the default model first when none is registered)."""
    from escalation.config import ConfigError, load_config
    from escalation.registry import fetch, local_copy, parse_uri, version_for

    path = Path(config_path or settings.config_path()).resolve()
    try:
        config, version = load_config(path)
    except ConfigError as e:
        fail(str(e))
    uri = config.classifier.model_uri
    if local_copy(uri) is None:  # not in the local cache: ask the registry (and train if it is empty)
        if version_for(uri) is None:
            if parse_uri(uri) != (settings.MODEL_NAME, settings.CHAMPION):
                fail(f"no model at {uri}; register one or point classifier.model_uri at an existing version")
            click.echo(f"no model at {uri}: training the default model from {settings.CORPUS} first")
            from training.train import train as run

            run(settings.CORPUS, config_path=path)
        fetch(uri)  # into the local cache, where the worker finds it without importing mlflow
    env = dict(os.environ, ESCALATION_CONFIG=str(path), BENTOML_DO_NOT_TRACK="True", MLFLOW_TRACKING_URI=settings.tracking_uri(),
               ESCALATION_DB_URL=settings.db_url())
    env["ESCALATION_ADMIN_TOKEN"] = admin_token(create=True)
    # BLAS threads would contend with ONNX Runtime's for the same cores on every request; the
    # heads' arithmetic is a few small products, so one BLAS thread is plenty.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    click.echo(f"config {version}; serving on http://{host}:{port} (admin token: ESCALATION_ADMIN_TOKEN or {settings.VAR / 'admin_token'})")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:EscalationService", "--host", host, "--port", str(port)]
    # exec, not a child process: signals (Ctrl-C, a supervisor's SIGTERM) reach BentoML directly,
    # which stops its workers; a child would be orphaned when this process is killed.
    os.chdir(settings.PROJECT_ROOT)
    os.execvpe(cmd[0], cmd, env)


# ----- ledger and costs ------------------------------------------------------------------------
@main.command()
@click.option("--hours", default=24.0, show_default=True, help="window: the last N hours")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="also write the tables as CSV")
def report(hours, csv_path):
    """Cost by model and role, escalations and their reasons, errors, fallbacks, latency."""
    from serving.report import print_report

    print_report(settings.db_url(), hours=hours, csv_path=csv_path)


@main.command("cost-compare")
@click.argument("trace", default=str(settings.TRACE), type=click.Path(exists=True, dir_okay=False))
@click.option("--baseline", default=str(settings.PREVIOUS_LANDSCAPE_CONFIG), type=click.Path(exists=True, dir_okay=False))
@click.option("--candidate", default=str(settings.DEFAULT_CONFIG), type=click.Path(exists=True, dir_okay=False))
@click.option("--model-uri", default=f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}")
@click.option("--chart", default=str(settings.REPORTS / "cost_compare.png"), show_default=True)
def cost_compare(trace, baseline, candidate, model_uri, chart):
    """Replay TRACE through the classifier under two configs and compare their cost."""
    from training.cost_compare import compare

    compare(trace, baseline, candidate, model_uri, chart)


@main.command("simulate-drift")
@click.option("--model-uri", default=f"models:/{settings.MODEL_NAME}@{settings.CHAMPION}")
@click.option("--phases", default="5:4000,12:4000,2:4000", show_default=True, help="critical share (%) and length of each phase")
@click.option("--mode", type=click.Choice(["hard", "soft"]), default="hard", show_default=True)
@click.option("--seed", default=0, show_default=True)
def simulate_drift(model_uri, phases, mode, seed):
    """Replay a drifting stream; print the escalation rate per 1,000 tasks with and without the controller."""
    from training.simulate import simulate

    simulate(model_uri, phases, mode, seed)


# ----- review ----------------------------------------------------------------------------------
@main.group()
def reviewers():
    """People who label borderline cases."""


@reviewers.command("add")
@click.argument("name")
def reviewers_add(name):
    """Create a reviewer and print their personal token (shown once)."""
    from escalation import store

    try:
        token = store.add_reviewer(store.engine(settings.db_url()), name)
    except ValueError as e:
        fail(str(e))
    click.echo(token)


@main.command()
@click.option("--reviewer", required=True, help="your reviewer name (see `escalation reviewers add`)")
@click.option("--limit", default=20, show_default=True)
def review(reviewer, limit):
    """Label pending borderline items in the terminal: c critical, r routine, s skip, q quit."""
    from training.labels import terminal_review

    terminal_review(settings.db_url(), reviewer, limit)


@main.group()
def labels():
    """Reviewers' labels."""


@labels.command("export")
@click.option("--out", default="-", help="file to write (default stdout)")
def labels_export(out):
    """Write reviewed labels as corpus rows (source: review), one per text, majority verdict."""
    from training.labels import export

    export(settings.db_url(), out)


# ----- config ----------------------------------------------------------------------------------
@main.group()
def config():
    """Routing config versions."""


@config.command("history")
def config_history():
    """Every config the service loaded, newest first."""
    from sqlalchemy import select

    from escalation import store

    eng = store.engine(settings.db_url())
    with eng.connect() as conn:
        rows = conn.execute(select(store.config_versions).order_by(store.config_versions.c.id.desc())).mappings().all()
    if not rows:
        click.echo("no config loaded yet; start the service with `escalation serve`")
    for r in rows:
        click.echo(f"{r['loaded_at']:%Y-%m-%d %H:%M:%S}  {r['version']:40s}  {r['reason']:24s}  {r['source']}")


@config.command("rollback")
@click.argument("version", required=False)
def config_rollback(version):
    """Revert the running service to VERSION (default: the one before the current), no restart."""
    import httpx

    url = os.environ.get("ESCALATION_SERVICE_URL", "http://127.0.0.1:3000")
    token = admin_token(create=False)
    if not token:
        fail("no admin token: set ESCALATION_ADMIN_TOKEN (or start the service once with `escalation serve`)")
    try:
        r = httpx.post(f"{url}/admin/config/rollback", json={"version": version} if version else {},
                       headers={"authorization": f"Bearer {token}"}, timeout=30)
    except httpx.HTTPError as e:
        fail(f"no service answering at {url} ({type(e).__name__}); set ESCALATION_SERVICE_URL")
    if r.status_code != 200:
        fail(r.json().get("error", {}).get("message", r.text))
    click.echo(json.dumps(r.json()))


if __name__ == "__main__":
    main()
