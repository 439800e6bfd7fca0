"""The NAS engine: data, training, metrics, cost counting, study, tracking, reporting."""
