"""The MLflow pyfunc face of the model artifact, for anyone who loads it with `mlflow.pyfunc.load_model`.

The service does not go through pyfunc: it downloads the `model_dir` artifact and loads
`EscalationModel` directly, which keeps mlflow's model loader (and its dependencies) off the hot path.
This module imports mlflow, so nothing in `escalation/` imports it at package import.
"""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from escalation.model import EscalationModel


class EscalationPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model = EscalationModel(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        roles = model_input["role"].tolist() if "role" in model_input else None
        scored = self.model.score(model_input["text"].tolist(), roles)
        return pd.DataFrame({
            "score": scored.score,
            "probability": scored.probability,
            "escalate": scored.score >= self.model.threshold,
        })
