"""The MLflow tag names oodsweep writes and reads (a module without imports: ``report`` and ``--help`` stay fast)."""

#: A sweep's child run: the trial's id within the sweep.
TRIAL_TAG = "oodsweep.trial_id"
#: A sweep's parent run: the sweep's name.
SWEEP_TAG = "oodsweep.sweep"
#: A study's parent run and the sweeps nested under it (python -m orchestrator benchmark).
STUDY_TAG = "oodsweep.study"
#: A seed-repeat child run (``sweep --seeds``) and the trial whose configuration it repeats.
SEED_REPEAT_TAG = "oodsweep.seed_repeat"
SOURCE_TRIAL_TAG = "oodsweep.source_trial_id"
#: MLflow's own tag of a nested run.
PARENT_TAG = "mlflow.parentRunId"
#: Every run oodsweep creates: the key it was given before it existed (a replayed spool finds it by this tag).
SPOOL_TAG = "oodsweep.spool_id"
#: A run a spool was replayed into: the digest of that spool's records of the run (a second replay skips it).
SYNCED_TAG = "oodsweep.spool_synced"
#: A trained method's child run under the ID-accuracy constraint (orchestrator.sweep.constraint): its validation
#: ID-accuracy drop against the cross-entropy reference (points), and 1.0 / 0.0 for feasible / not.
DROP_METRIC = "constraint/id_acc_drop"
FEASIBLE_METRIC = "constraint/feasible"
