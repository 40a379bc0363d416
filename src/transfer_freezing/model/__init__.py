"""Model: the architectures registry, freeze strategies, exact fast-path rewrites, the activation cache."""
