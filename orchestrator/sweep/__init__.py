"""A sweep: validate (:mod:`~orchestrator.sweep.prepare`), run trials on Ray Tune with Optuna proposing
configurations (:mod:`~orchestrator.sweep.runner`, :mod:`~orchestrator.sweep.trainable`), schedule and compare them
(:mod:`~orchestrator.sweep.scheduling`), show progress (:mod:`~orchestrator.sweep.progress`), repeat the best with
other seeds (:mod:`~orchestrator.sweep.seeds`) and save what ``--resume`` needs (:mod:`~orchestrator.sweep.state`).
"""
