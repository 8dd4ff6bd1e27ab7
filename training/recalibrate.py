"""`escalation calibrate --from-traffic`: the threshold again, from the scores the service logged.

The corpus only approximates traffic; once the service has run, its own logged scores are the
traffic-like sample. The threshold becomes their (1 - budget) quantile (every decision weighs the
same). With --apply, the champion's artifact is registered again with the new threshold as
@challenger, so the change goes through the same promotion gate and can be rolled back.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from escalation import settings, store
from escalation.config import load_config
from escalation.predict import load_model
from training.calibrate import calibrate_threshold

MIN_DECISIONS = 200


def recalibrate_from_traffic(hours: float = 168, apply: bool = False, log=print) -> dict:
    model = load_model()
    budget = load_config(settings.config_path())[0].budget.share
    eng = store.engine(settings.db_url())
    since = store.utcnow() - timedelta(hours=hours)
    d = store.decisions
    with eng.connect() as conn:
        scores = np.array([s for (s,) in conn.execute(
            select(d.c.score).where(d.c.time >= since, d.c.model_version == model.version, d.c.score.is_not(None))
        )], dtype=float)
    if len(scores) < MIN_DECISIONS:
        raise SystemExit(f"only {len(scores)} logged decisions of model v{model.version} in the last {hours:g} h; "
                         f"need {MIN_DECISIONS} (serve traffic first, or widen --hours)")
    new = calibrate_threshold(scores, budget, prior=None)
    old_rate = float((scores >= model.threshold).mean())
    log(f"model v{model.version}: {len(scores)} logged decisions in the last {hours:g} h")
    log(f"current threshold {model.threshold:.4f} escalates {old_rate:.2%} of them (budget {budget:.0%})")
    log(f"traffic threshold {new['value']:.4f} escalates {new['escalation_rate']:.2%} (95% upper bound {new['escalation_rate_ucb95']:.2%})")
    if apply:
        from training.train import log_to_mlflow

        work = Path(tempfile.mkdtemp(prefix="escalation-recal-")) / "model_dir"
        shutil.copytree(model.folder, work)
        meta = json.loads((work / "meta.json").read_text())
        meta["threshold_from_corpus"] = meta["threshold"]
        meta["threshold"] = {**new, "prior": None, "recalibrated_from_version": model.version}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        _, version, _ = log_to_mlflow(work, meta, {"recalibrated_from": model.version, "threshold": new["value"], "budget": budget,
                                                   "traffic_decisions": len(scores)},
                                      {"threshold_escalation_rate": new["escalation_rate"],
                                       "threshold_escalation_rate_ucb95": new["escalation_rate_ucb95"]},
                                      run_name=f"recalibrate v{model.version} from traffic")
        log(f"registered v{version} with the traffic threshold as @{settings.CHALLENGER}; `escalation promote` to use it")
    return new
