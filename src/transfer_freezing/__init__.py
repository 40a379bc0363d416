"""transfer-freezing."""
