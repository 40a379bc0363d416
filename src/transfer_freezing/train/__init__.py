"""Training: the training core, the train stage, MLflow tracking, the learning-rate sweep, the executor."""
