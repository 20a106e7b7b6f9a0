"""OOD metrics as OpenOOD computes them, and the OOD metric matrix.

Scores are ID-ness scores (higher = more in-distribution).
- AUROC: area under the ROC curve of ID-vs-OOD separation.
- AUPR-In: ID is the positive class, score S; AUPR-Out: OOD positive, score −S (trapezoid areas).
- FPR@95, two conventions (both are in the literature; tables name the one used):
  * ``classic`` (ODIN, Energy, KNN, UM papers): fraction of OOD accepted at the threshold that accepts 95 % of ID.
  * ``openood`` (OpenOOD v1.5, pytorch-ood): fraction of ID rejected at the first ROC point where ≥ 95 % of OOD
    is rejected.

The curves are scikit-learn's (``roc_curve``, ``precision_recall_curve``, ``auc``: the functions OpenOOD calls),
computed here from one sort of the scores instead of through scikit-learn, deliberately: a post-hoc trial computes
24 curves, and scikit-learn's per-call input validation was most of a trial's scoring time, while importing it
(with SciPy's statistics and pandas) cost ~1.3 s in every Ray worker. ``tests/test_metrics.py`` checks every
number against scikit-learn's, ties included.
"""
from __future__ import annotations

import numpy as np

CONVENTIONS = ("classic", "openood")
COLUMNS = ("auroc", "aupr_in", "aupr_out", "fpr95")
COLUMN_TITLES = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95"}
#: The recall (true positive rate) FPR@95 is read at.
TPR_LEVEL = 0.95


def _check(s_id, s_ood):
    s_id = np.asarray(s_id, dtype=np.float64).ravel()
    s_ood = np.asarray(s_ood, dtype=np.float64).ravel()
    if len(s_id) == 0 or len(s_ood) == 0:
        raise ValueError("need at least one ID and one OOD score")
    if not (np.isfinite(s_id).all() and np.isfinite(s_ood).all()):
        raise ValueError("scores contain NaN or inf")
    return s_id, s_ood


class _Curves:
    """Confusion counts at every distinct threshold, for both directions, from one sort of the scores.

    ``tp_in``/``fp_in``: ID positive, threshold on S, thresholds descending — scikit-learn's
    ``confusion_matrix_at_thresholds(is_id, S)``; ``tp_out``/``fp_out``: OOD positive, threshold on −S (ascending S).
    Ties form one threshold, so the order among equal scores does not matter.
    """

    def __init__(self, s_id: np.ndarray, s_ood: np.ndarray):
        scores = np.concatenate([s_id, s_ood])
        is_id = np.zeros(len(scores))
        is_id[:len(s_id)] = 1.0
        order = np.argsort(scores, kind="stable")
        ascending, id_asc = scores[order], is_id[order]
        # Descending S (ID positive): the last index of each run of equal scores, read from the top.
        desc, id_desc = ascending[::-1], id_asc[::-1]
        ends = np.r_[np.flatnonzero(np.diff(desc)), len(desc) - 1]
        self.tp_in = np.cumsum(id_desc)[ends]
        self.fp_in = 1.0 + ends - self.tp_in
        # Ascending S = descending −S (OOD positive).
        ends = np.r_[np.flatnonzero(np.diff(ascending)), len(ascending) - 1]
        self.tp_out = np.cumsum(1.0 - id_asc)[ends]
        self.fp_out = 1.0 + ends - self.tp_out


def _roc(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) from (0, 0) through every threshold (``roc_curve(..., drop_intermediate=False)``)."""
    return np.r_[0.0, fp] / fp[-1], np.r_[0.0, tp] / tp[-1]


def _aupr(tp: np.ndarray, fp: np.ndarray) -> float:
    """``auc(recall, precision)`` of ``precision_recall_curve``: its points run from the lowest threshold to the
    highest, then (recall 0, precision 1); recall decreases, so the area is the negated trapezoid sum."""
    precision = np.r_[(tp / (tp + fp))[::-1], 1.0]
    recall = np.r_[(tp / tp[-1])[::-1], 0.0]
    return float(-np.trapezoid(precision, recall))


def _fpr_at(tp: np.ndarray, fp: np.ndarray) -> float:
    fpr, tpr = _roc(tp, fp)
    return float(fpr[np.argmax(tpr >= TPR_LEVEL)])


def fpr_at_95(s_id, s_ood, convention: str = "classic") -> float:
    return _fpr95(_Curves(*_check(s_id, s_ood)), convention)


def _fpr95(c: _Curves, convention: str) -> float:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FPR@95 convention {convention!r}; choose one of {CONVENTIONS}")
    if convention == "classic":
        # ID positive: FPR (OOD accepted) at the first ROC point with TPR (ID accepted) ≥ 95 %.
        return _fpr_at(c.tp_in, c.fp_in)
    # openood — OOD positive, score −S: FPR (ID rejected) at the first ROC point with TPR (OOD rejected) ≥ 95 %.
    return _fpr_at(c.tp_out, c.fp_out)


def roc_curve(s_id, s_ood) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of ID (positive) vs OOD at every distinct threshold, from (0, 0): the curve AUROC integrates."""
    c = _Curves(*_check(s_id, s_ood))
    return _roc(c.tp_in, c.fp_in)


def ood_metrics(s_id, s_ood, convention: str = "classic") -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95 (the given convention) for one OOD set."""
    c = _Curves(*_check(s_id, s_ood))
    fpr, tpr = _roc(c.tp_in, c.fp_in)
    return {"auroc": float(np.trapezoid(tpr, fpr)), "aupr_in": _aupr(c.tp_in, c.fp_in),
            "aupr_out": _aupr(c.tp_out, c.fp_out), "fpr95": _fpr95(c, convention)}


def ood_matrix(s_id, near: dict, far: dict, id_acc: float | None = None, convention: str = "classic") -> OODMatrix:
    """The OOD metric matrix: one row per OOD dataset plus the near/far means (unweighted)."""
    rows, groups = {}, {}
    for group, sets in (("near", near), ("far", far)):
        for name, s_ood in sets.items():
            rows[name] = ood_metrics(s_id, s_ood, convention)
            groups[name] = group
    return OODMatrix(rows, groups, id_acc, convention)


class OODMatrix:
    """Rows = OOD datasets (near, then far) and the ``near``/``far`` means; columns = :data:`COLUMNS`."""

    def __init__(self, rows: dict[str, dict[str, float]], groups: dict[str, str], id_acc: float | None,
                 convention: str = "classic"):
        self.rows, self.groups, self.id_acc, self.convention = rows, groups, id_acc, convention

    def group_mean(self, group: str) -> dict[str, float]:
        names = [n for n, g in self.groups.items() if g == group]
        return {c: float(np.mean([self.rows[n][c] for n in names])) for c in COLUMNS} if names else {}

    def flat(self) -> dict[str, float]:
        """``<dataset>/<metric>``, ``near/<metric>``, ``far/<metric>`` and ``id/acc``: MLflow's metric names."""
        out = {f"{name}/{c}": v for name, row in self.rows.items() for c, v in row.items()}
        for group in ("near", "far"):
            out.update({f"{group}/{c}": v for c, v in self.group_mean(group).items()})
        if self.id_acc is not None:
            out["id/acc"] = float(self.id_acc)
        return out

    def to_records(self) -> list[dict]:
        recs = [{"ood_dataset": n, "group": self.groups[n], **self.rows[n]} for n in self.rows]
        for group in ("near", "far"):
            mean = self.group_mean(group)
            if mean:
                recs.append({"ood_dataset": f"{group} (mean)", "group": group, **mean})
        return recs

    def to_json(self) -> dict:
        return {"fpr95_convention": self.convention, "id_acc": self.id_acc, "rows": self.to_records()}

    @classmethod
    def from_json(cls, data: dict) -> OODMatrix:
        rows = {r["ood_dataset"]: {c: r[c] for c in COLUMNS} for r in data["rows"]
                if not r["ood_dataset"].endswith("(mean)")}
        groups = {r["ood_dataset"]: r["group"] for r in data["rows"] if not r["ood_dataset"].endswith("(mean)")}
        return cls(rows, groups, data.get("id_acc"), data.get("fpr95_convention", "classic"))

    def to_csv(self) -> str:
        header = "ood_dataset,group," + ",".join(COLUMNS)
        lines = [header] + [f"{r['ood_dataset']},{r['group']}," + ",".join(f"{r[c]:.6f}" for c in COLUMNS)
                            for r in self.to_records()]
        if self.id_acc is not None:
            lines.append(f"# id_acc={self.id_acc:.6f}")
        lines.append(f"# fpr95_convention={self.convention}")
        return "\n".join(lines) + "\n"

    def format(self) -> str:
        """A plain-text table (percentages), as printed at the end of a sweep."""
        titles = [COLUMN_TITLES[c] + (f" ({self.convention})" if c == "fpr95" else "") for c in COLUMNS]
        recs = self.to_records()
        width = max(12, *(len(r["ood_dataset"]) for r in recs))
        widths = [max(8, len(t)) for t in titles]
        def line(cells):
            return "  ".join([cells[0].ljust(width)] + [c.rjust(w) for c, w in zip(cells[1:], widths, strict=False)])

        out = [line(["OOD dataset", *titles])]
        means = [r for r in recs if r["ood_dataset"].endswith("(mean)")]
        for r in recs:
            if means and r is means[0]:
                out.append("-" * len(out[0]))
            out.append(line([r["ood_dataset"], *(f"{100 * r[c]:.2f}" for c in COLUMNS)]))
        if self.id_acc is not None:
            out.append(f"ID accuracy: {100 * self.id_acc:.2f}%")
        return "\n".join(out)
