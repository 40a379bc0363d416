"""Data: corpus sources, audio decoding, the synthetic corpus, splits, features and model inputs."""
