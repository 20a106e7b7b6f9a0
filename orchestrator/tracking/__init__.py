"""What a sweep leaves behind in MLflow: the runs and their helpers (:mod:`~orchestrator.tracking.runs`), the Tune
callback that writes every trial (:mod:`~orchestrator.tracking.callback`), figures
(:mod:`~orchestrator.tracking.figures`) and the leaderboard read back from the store
(:mod:`~orchestrator.tracking.report`).
"""
