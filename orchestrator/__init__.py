"""oodsweep's orchestrator: benchmarks, training, evaluation, and the Ray Tune/Optuna/MLflow sweep."""

__version__ = "0.1.0"
