"""What a sweep leaves behind in MLflow: the runs and their helpers (:mod:`~orchestrator.tracking.runs`), the Tune
callback that writes every trial (:mod:`~orchestrator.tracking.callback`), figures
(:mod:`~orchestrator.tracking.figures`) and the leaderboard read back from the store
(:mod:`~orchestrator.tracking.report`). Every write goes through one queue (:mod:`~orchestrator.tracking.writer`)
and the stores' clients (:mod:`~orchestrator.tracking.stores`); what a store that went away did not take is kept in
the sweep's spool (:mod:`~orchestrator.tracking.spool`) and replayed by ``python -m orchestrator sync``
(:mod:`~orchestrator.tracking.sync`).
"""
