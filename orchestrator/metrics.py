"""OOD metrics as OpenOOD computes them, and the OOD metric matrix.

Scores are ID-ness scores (higher = more in-distribution).
- AUROC: area under the ROC curve of ID-vs-OOD separation.
- AUPR-In: ID is the positive class, score S; AUPR-Out: OOD positive, score −S (trapezoid areas).
- FPR@95, two conventions (both are in the literature; tables name the one used):
  * ``classic`` (ODIN, Energy, KNN, UM papers): fraction of OOD accepted at the threshold that accepts 95 % of ID.
  * ``openood`` (OpenOOD v1.5, pytorch-ood): fraction of ID rejected at the first ROC point where ≥ 95 % of OOD
    is rejected.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

CONVENTIONS = ("classic", "openood")
COLUMNS = ("auroc", "aupr_in", "aupr_out", "fpr95")
COLUMN_TITLES = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95"}


def _check(s_id, s_ood):
    s_id = np.asarray(s_id, dtype=np.float64).ravel()
    s_ood = np.asarray(s_ood, dtype=np.float64).ravel()
    if len(s_id) == 0 or len(s_ood) == 0:
        raise ValueError("need at least one ID and one OOD score")
    if not (np.isfinite(s_id).all() and np.isfinite(s_ood).all()):
        raise ValueError("scores contain NaN or inf")
    return s_id, s_ood


def fpr_at_95(s_id, s_ood, convention: str = "classic") -> float:
    s_id, s_ood = _check(s_id, s_ood)
    if convention == "classic":
        # ID positive: FPR (OOD accepted) at the first ROC point with TPR (ID accepted) ≥ 95 %.
        labels = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
        fpr, tpr, _ = skm.roc_curve(labels, np.r_[s_id, s_ood], drop_intermediate=False)
    elif convention == "openood":
        # OOD positive, score −S: FPR (ID rejected) at the first ROC point with TPR (OOD rejected) ≥ 95 %.
        labels = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
        fpr, tpr, _ = skm.roc_curve(labels, -np.r_[s_id, s_ood], drop_intermediate=False)
    else:
        raise ValueError(f"unknown FPR@95 convention {convention!r}; choose one of {CONVENTIONS}")
    return float(fpr[np.argmax(tpr >= 0.95)])


def ood_metrics(s_id, s_ood, convention: str = "classic") -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95 (the given convention) for one OOD set."""
    s_id, s_ood = _check(s_id, s_ood)
    scores = np.r_[s_id, s_ood]
    is_id = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    fpr, tpr, _ = skm.roc_curve(is_id, scores)
    p_in, r_in, _ = skm.precision_recall_curve(is_id, scores)
    p_out, r_out, _ = skm.precision_recall_curve(1 - is_id, -scores)
    return {"auroc": float(skm.auc(fpr, tpr)), "aupr_in": float(skm.auc(r_in, p_in)),
            "aupr_out": float(skm.auc(r_out, p_out)), "fpr95": fpr_at_95(s_id, s_ood, convention)}


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
