"""``tfreeze ui``: the MLflow UI for the study's store, bound to 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

from ..config import Params
from ..train import tracking


def runs_link(host: str, port: int, experiment_id: str) -> str:
    """Direct link to the Model-training runs table (MLflow 3 opens the GenAI view otherwise)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def command(t: tracking.Tracking, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--workers", "1", "--backend-store-uri", t.uri]


def serve(p: Params, host: str = "127.0.0.1", port: int = 5000) -> None:
    """``tfreeze ui``'s entry point."""
    t = tracking.Tracking.from_params(p)
    exp_id = tracking.connect(t)
    print(f"MLflow UI for experiment {t.experiment!r}: {runs_link(host, port, exp_id)}")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run(command(t, host, port), env=env, check=False)
