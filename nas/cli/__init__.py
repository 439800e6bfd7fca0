"""Console entry points (Hydra applications)."""
