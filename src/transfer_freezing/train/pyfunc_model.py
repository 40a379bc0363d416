"""The pyfunc of a train run's MLflow logged model (MLflow "models from code"; no pickle).

MLflow copies this file into the logged model and runs it on ``mlflow.pyfunc.load_model``: the
model's one artifact is the run's lean ``model.pt``, loaded through ``checkpoint.load_model`` (so
the frozen-weights hash is checked); ``predict`` takes stored feature images (N, H, W), as
``data/features/<split>.npy`` holds them, and returns class probabilities (N, classes).
Imports are absolute: MLflow runs the file on its own, the project package must be installed.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from transfer_freezing.data.inputs import to_model_input
from transfer_freezing.train import checkpoint
from transfer_freezing.train.tracking import CHECKPOINT_ARTIFACT

BATCH = 64


class CheckpointModel(PythonModel):
    """A lean checkpoint as a pyfunc; ``self.model`` is the rebuilt torch module."""

    def load_context(self, context) -> None:
        self.model = checkpoint.load_model(context.artifacts[CHECKPOINT_ARTIFACT]).eval()

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        images = torch.as_tensor(np.asarray(model_input))
        with torch.no_grad():
            parts = [torch.softmax(self.model(to_model_input(images[i:i + BATCH])), 1)
                     for i in range(0, len(images), BATCH)]
        return torch.cat(parts).numpy()


mlflow.models.set_model(CheckpointModel())
