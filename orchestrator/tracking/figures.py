"""Figures logged as MLflow artifacts (matplotlib, Agg backend; each renders in well under a second).

Per trial (:func:`log_trial_figures`): ``ood_matrix_heatmap.png``, the OOD metric matrix as a heatmap — drawn for
the best trial at the end of a sweep (and for seed repeats), not for every trial: one figure costs the driver
more than scoring a post-hoc configuration.

Per sweep, on the parent run (:func:`log_sweep_figures`), under ``figures/``:

- ``best_ood_matrix_heatmap.png`` — the best trial's matrix;
- ``best_score_histograms.png`` and ``best_roc_curves.png`` — ID-test vs each OOD test set, from the best
  configuration's scores (:func:`orchestrator.trial.best_scores` recomputes them from the model cache);
- ``optuna_history.png``, ``optuna_parallel_coordinate.png``, ``optuna_param_importances.png`` — Optuna's own
  plots of the sweep's stored study (rebuilt from the child runs — params + final validation metric — for a sweep
  without one). A plot that cannot be drawn
  (one trial, no searched knob) is skipped; ``figures/notes.txt`` says why.

Drawing (:func:`draw_sweep_figures`: PNG bytes) is apart from logging (:func:`log_sweep_figures`): a batched
post-hoc sweep's evaluator, which holds the best configuration's scores and is otherwise idle, draws them while the
driver writes the last MLflow runs, and the driver — which then never imports matplotlib — logs them.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under someone's interactive session
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from orchestrator.metrics import COLUMN_TITLES, COLUMNS, OODMatrix  # noqa: E402

DPI = 100


def _plain_style(fn):
    """Draw with matplotlib's default style whatever the global rcParams are (Optuna's plots switch to ggplot)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.style.context("default"):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- OOD metric matrix
@_plain_style
def heatmap_figure(matrix: OODMatrix, title: str | None = None):
    """Rows = OOD datasets then the near/far means; columns = AUROC, AUPR-In, AUPR-Out, FPR@95 (%).

    Colour = how good a cell is (green good): FPR@95 is coloured by 1 − value, so that every column reads alike.
    """
    recs = matrix.to_records()
    values = np.array([[r[c] for c in COLUMNS] for r in recs], dtype=float)
    good = values.copy()
    fpr = COLUMNS.index("fpr95")
    good[:, fpr] = 1.0 - good[:, fpr]
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(recs) + 1.4), dpi=DPI)
    ax.imshow(good, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{100 * values[i, j]:.1f}", ha="center", va="center", fontsize=9,
                    color="black" if 0.25 < good[i, j] < 0.85 else "white")
    ax.set_xticks(range(len(COLUMNS)),
                  [COLUMN_TITLES[c] + ("\n(" + matrix.convention + ", ↓)" if c == "fpr95" else "\n(↑)")
                   for c in COLUMNS],
                  fontsize=9)
    ax.set_yticks(range(len(recs)),
                  [r["ood_dataset"] if r["ood_dataset"].endswith("(mean)") else f"{r['group']}: {r['ood_dataset']}"
                   for r in recs], fontsize=9)
    means = [i for i, r in enumerate(recs) if r["ood_dataset"].endswith("(mean)")]
    if means:
        ax.axhline(means[0] - 0.5, color="black", linewidth=1.5)
    acc = f"; ID acc {100 * matrix.id_acc:.1f}%" if matrix.id_acc is not None else ""
    ax.set_title(title or f"OOD metric matrix (%){acc}", fontsize=10)
    ax.tick_params(length=0)
    fig.tight_layout()
    return fig


def log_trial_figures(client, run_id: str, matrix: OODMatrix) -> None:
    """Log ``ood_matrix_heatmap.png`` to a trial's run (call next to the matrix CSV/JSON artifacts)."""
    log_pngs(client, run_id, {"ood_matrix_heatmap.png": png(heatmap_figure(matrix))})


def _child_run(client, parent_run_id: str, trial_id: str) -> str | None:
    """The run id of the sweep's child run for ``trial_id`` (not a seed repeat), or None."""
    from orchestrator.tracking.runs import SEED_REPEAT_TAG, TRIAL_TAG

    parent = client.get_run(parent_run_id)
    found = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                             f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=5)
    return next((r.info.run_id for r in found if r.data.tags.get(SEED_REPEAT_TAG) != "true"), None)


@_plain_style
def histogram_figure(s_id: np.ndarray, ood: dict[str, tuple[str, np.ndarray]], title: str = ""):
    """One panel per OOD set: ID-test vs that set's score histograms (shared bins), AUROC in the panel title."""
    from orchestrator.metrics import ood_metrics

    n = len(ood)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.4), dpi=DPI, squeeze=False)
    for ax, (name, (group, s)) in zip(axes.flat, ood.items(), strict=False):
        both = np.r_[s_id, s]
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        ax.hist(s_id, bins=bins, alpha=0.55, density=True, label="ID (test)", color="tab:blue", histtype="stepfilled")
        ax.hist(s, bins=bins, alpha=0.55, density=True, label=name, histtype="stepfilled",
                color="tab:red" if group == "near" else "tab:orange")
        auroc = ood_metrics(s_id, s)["auroc"]
        ax.set_title(f"{group}: {name} (AUROC {100 * auroc:.1f}%)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.supxlabel("score (higher = more in-distribution)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@_plain_style
def roc_figure(s_id: np.ndarray, ood: dict[str, tuple[str, np.ndarray]], title: str = ""):
    """ROC curves (ID positive: TPR = ID accepted, FPR = OOD accepted), one per OOD set; the 95% TPR line."""
    from orchestrator.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=DPI)
    for name, (group, s) in ood.items():
        fpr, tpr = roc_curve(s_id, s)
        ax.plot(fpr, tpr, linestyle="-" if group == "near" else "--",
                label=f"{group}: {name} ({100 * np.trapezoid(tpr, fpr):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(0.95, color="grey", linewidth=0.8)
    ax.set_xlabel("FPR (OOD accepted)", fontsize=9)
    ax.set_ylabel("TPR (ID accepted)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, title="OOD set (AUROC %)", title_fontsize=8, loc="lower right")
    ax.set_title(title or "ROC curves, best configuration (test)", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- Optuna plots
def _distribution(knob):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if knob.type == "categorical":
        return CategoricalDistribution(knob.choices)
    if knob.type == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log, step=int(knob.step or 1))
    return FloatDistribution(float(knob.low), float(knob.high), log=knob.log, step=knob.step)


def _inside(dist, value) -> bool:
    """Whether ``value`` belongs to ``dist`` (a search space edited since the sweep ran may exclude it)."""
    if hasattr(dist, "choices"):
        return value in dist.choices
    try:
        return dist.low <= value <= dist.high
    except TypeError:
        return False


def study_from_runs(client, parent_run_id: str, space, fixed: dict[str, Any] | None = None):
    """An Optuna study of the sweep's finished trials (child runs; seed repeats excluded), in start order.

    Value = the trial's final ``space.metric`` (the first objective of a multi-objective sweep).
    """
    import optuna

    from orchestrator.tracking.runs import SEED_REPEAT_TAG, TRIAL_TAG, typed_config

    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000)
    runs = sorted((r for r in runs if TRIAL_TAG in r.data.tags and r.data.tags.get(SEED_REPEAT_TAG) != "true"
                   and r.info.status == "FINISHED" and space.metric in r.data.metrics),
                  key=lambda r: r.info.start_time)
    dists = {k.name: _distribution(k) for k in space.knobs}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize",
                                    study_name=parent.data.tags.get("oodsweep.sweep", parent_run_id))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for r in runs:
        config = typed_config(space, fixed or {}, r.data.params)
        params = {k: config[k] for k in dists if k in config and _inside(dists[k], config[k])}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=float(r.data.metrics[space.metric]),
                                                  user_attrs={"trial_id": r.data.tags[TRIAL_TAG]}))
    return study


def draw_optuna_figures(study, metric: str) -> tuple[dict[str, bytes], list[str]]:
    """History, parallel coordinates and importances of ``study`` as PNGs by artifact path, and notes for the plots
    skipped."""
    import optuna
    import optuna.visualization.matplotlib as ovm

    notes: list[str] = []
    pngs: dict[str, bytes] = {}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    n = len(complete)
    searched = sorted({k for t in complete for k in t.params})
    # A multi-objective study is plotted on its first objective (the sweep's metric).
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    # rc_context: Optuna's plots call plt.style.use("ggplot"), which would otherwise leak into every later figure
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. identical axis limits when every trial has one value
        if n == 0:
            return pngs, ["no finished trial with the validation metric: no Optuna plots"]
        ax = ovm.plot_optimization_history(study, target=target, target_name=metric)
        pngs["figures/optuna_history.png"] = png(_fit(ax.figure))
        if searched:
            ax = ovm.plot_parallel_coordinate(study, target=target, target_name=metric)
            pngs["figures/optuna_parallel_coordinate.png"] = png(_fit(ax.figure))
        else:
            notes.append("parallel coordinates skipped: the search space has no searched knob")
        if n < 2 or len(searched) < 2:
            # One searched knob has importance 1 by definition (they are normalised): the plot would say nothing,
            # and Optuna's importance module imports scikit-learn (~1 s).
            notes.append(f"hyperparameter importances skipped: need at least 2 finished trials and 2 searched knobs "
                         f"(have {n} trial(s), {len(searched)} knob(s))")
        else:
            try:
                ax = ovm.plot_param_importances(study, target=target, target_name=metric)
                pngs["figures/optuna_param_importances.png"] = png(_fit(ax.figure))
            except Exception as exc:  # noqa: BLE001 - e.g. every trial has the same value
                plt.close("all")
                notes.append(f"hyperparameter importances skipped: {type(exc).__name__}: {exc}")
    return pngs, notes


def _fit(fig):
    fig.set_dpi(DPI)
    fig.set_size_inches(7.0, 4.4)
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    """``fig`` rendered as PNG, and closed."""
    import io

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def log_pngs(client, run_id: str, pngs: dict[str, bytes]) -> None:
    """Log PNGs as artifacts of ``run_id``, each at its artifact path."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, data in pngs.items():
            path = os.path.join(folder, os.path.basename(name))
            with open(path, "wb") as f:
                f.write(data)
            client.log_artifact(run_id, path, os.path.dirname(name) or None)


# ---------------------------------------------------------------- the sweep
@dataclass
class SweepFigures:
    """A sweep's figures, drawn: PNGs for the parent run by artifact path, the best trial's heatmap for its child
    run, and notes on what was skipped. Drawing needs no MLflow: a batched sweep's evaluator draws them (it holds
    the scores) while the driver writes the last runs, and the driver logs them."""

    parent: dict[str, bytes] = field(default_factory=dict)
    best_trial: bytes | None = None
    notes: list[str] = field(default_factory=list)

    def merged(self, other: SweepFigures) -> SweepFigures:
        """These figures and ``other``'s (drawn in two processes at once)."""
        return SweepFigures({**self.parent, **other.parent}, self.best_trial or other.best_trial,
                            self.notes + other.notes)


def draw_score_figures(scores, what: str) -> SweepFigures:
    """The best configuration's score histograms and ROC curves from its ``scores`` — (ID-test scores, {OOD set:
    (group, scores)}), :func:`orchestrator.trial.best_scores` — or a note when None; ``what``: "knn on
    fashion-mnist"."""
    drawn = SweepFigures()
    if scores is None:
        drawn.notes.append("best configuration's score histograms and ROC curves skipped: no scores given")
        return drawn
    try:
        s_id, ood = scores
        label = f"{what}, best configuration (test sets)"
        drawn.parent["figures/best_score_histograms.png"] = png(histogram_figure(s_id, ood, label))
        drawn.parent["figures/best_roc_curves.png"] = png(roc_figure(s_id, ood, f"ROC: {label}"))
    except Exception as exc:  # noqa: BLE001
        plt.close("all")
        drawn.notes.append(f"best configuration's score figures failed: {type(exc).__name__}: {exc}")
    return drawn


def draw_result_figures(best_matrix: OODMatrix | None, study, metric: str) -> SweepFigures:
    """The best trial's matrix heatmap and Optuna's plots of ``study`` (None: no Optuna plots, the caller says
    why)."""
    drawn = SweepFigures()
    if best_matrix is None:
        drawn.notes.append("no finished trial: no best-trial figures")
    else:
        try:
            drawn.best_trial = png(heatmap_figure(best_matrix))
            drawn.parent["figures/best_ood_matrix_heatmap.png"] = drawn.best_trial  # the same picture, drawn once
        except Exception as exc:  # noqa: BLE001
            plt.close("all")
            drawn.notes.append(f"best-trial figures failed: {type(exc).__name__}: {exc}")
    if study is None:
        return drawn
    try:
        pngs, notes = draw_optuna_figures(study, metric)
        drawn.parent.update(pngs)
        drawn.notes += notes
    except Exception as exc:  # noqa: BLE001
        plt.close("all")
        drawn.notes.append(f"Optuna figures failed: {type(exc).__name__}: {exc}")
    return drawn


def draw_sweep_figures(best_matrix: OODMatrix | None, scores, study, metric: str, what: str) -> SweepFigures:
    """Every figure of the module doc (:func:`draw_result_figures` and, for a sweep with a best trial,
    :func:`draw_score_figures`). A figure that fails becomes a note (a sweep's results matter more than its
    pictures)."""
    drawn = draw_result_figures(best_matrix, study, metric)
    return drawn.merged(draw_score_figures(scores, what)) if best_matrix is not None else drawn


def log_sweep_figures(prep, result, client=None, study=None, scores=None, drawn=None) -> list[str]:
    """Log the sweep's figures to its parent run and its best trial's child run; returns the notes on what was
    skipped (also logged, as ``figures/notes.txt``).

    The figures are drawn here (:func:`draw_sweep_figures`; ``study``: the sweep's stored Optuna study, rebuilt
    from the child runs when None; ``scores`` as there) — or, with ``drawn``, elsewhere: a callable returning
    their :class:`SweepFigures` (a batched sweep's evaluator and figure drawer). Never raises for a figure.
    """
    from orchestrator.tracking.runs import client_for

    client = client or client_for(result.tracking_uri)
    run_id = result.parent_run_id
    if drawn is not None:
        try:
            figures = drawn()
        except Exception as exc:  # noqa: BLE001 - e.g. the evaluator drawing them was lost
            figures = SweepFigures(notes=[f"figures could not be drawn: {type(exc).__name__}: {exc}"])
    else:
        failed = None
        if study is None:
            try:
                study = study_from_runs(client, run_id, prep.space, prep.fixed)
            except Exception as exc:  # noqa: BLE001
                failed = f"Optuna figures failed: {type(exc).__name__}: {exc}"
        figures = draw_sweep_figures(result.best_matrix, scores, study, prep.space.metric,
                                     f"{prep.opts.method} on {prep.bench.name}")
        figures.notes += [failed] if failed else []
    notes = list(figures.notes)
    try:
        log_pngs(client, run_id, figures.parent)
        best_id = client.get_run(run_id).data.tags.get("best_trial_id", "")
        best_child = _child_run(client, run_id, best_id) if best_id and figures.best_trial else None
        if best_child is not None:
            log_pngs(client, best_child, {"ood_matrix_heatmap.png": figures.best_trial})
    except Exception as exc:  # noqa: BLE001
        notes.append(f"logging the figures failed: {type(exc).__name__}: {exc}")
    if notes:
        client.log_text(run_id, "\n".join(notes) + "\n", "figures/notes.txt")
    return notes
