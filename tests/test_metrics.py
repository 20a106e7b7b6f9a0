"""OOD metrics against values computed by hand (see the comments for each derivation)."""
import numpy as np
import pytest

from orchestrator.metrics import OODMatrix, fpr_at_95, ood_matrix, ood_metrics

S_ID = [0.9, 0.8, 0.4]
S_OOD = [0.7, 0.3]


def test_auroc_counts_correctly_ordered_pairs():
    # 6 (ID, OOD) pairs; only (0.4, 0.7) is misordered -> 5/6
    assert ood_metrics(S_ID, S_OOD)["auroc"] == pytest.approx(5 / 6)


def test_auroc_counts_ties_as_half():
    # pairs: (1,1) tie, (1,0) ok, (1,1) tie, (1,0) ok -> (0.5 + 1 + 0.5 + 1) / 4
    assert ood_metrics([1, 1], [1, 0])["auroc"] == pytest.approx(0.75)


def test_aupr_in_trapezoid():
    # ID positive, PR points (recall, precision): (0,1) (1/3,1) (2/3,1) (2/3,2/3) (1,3/4)
    # area = 1/3 + 1/3 + 0 + (2/3 + 3/4)/2 * 1/3 = 65/72
    assert ood_metrics(S_ID, S_OOD)["aupr_in"] == pytest.approx(65 / 72)


def test_aupr_out_trapezoid():
    # OOD positive on -S: points (0,1) (1/2,1) (1/2,1/2) (1,2/3) -> 1/2 + 0 + (1/2 + 2/3)/2 * 1/2 = 19/24
    assert ood_metrics(S_ID, S_OOD)["aupr_out"] == pytest.approx(19 / 24)


def test_fpr95_conventions_differ_as_derived():
    s_id = np.arange(1, 21, dtype=float)  # 20 ID scores 1..20
    s_ood = [0.5, 2.5, 5.5, 10.5]
    # classic: accept 19/20 ID (s >= 2) -> OOD accepted: 2.5, 5.5, 10.5 -> 3/4
    assert fpr_at_95(s_id, s_ood, "classic") == pytest.approx(0.75)
    # openood: reject >= 95% of OOD means all 4 (s <= 10.5) -> ID rejected: 1..10 -> 10/20
    assert fpr_at_95(s_id, s_ood, "openood") == pytest.approx(0.5)


def test_perfect_and_reversed_separation():
    good = ood_metrics([5, 6, 7], [1, 2])
    assert good == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    bad = ood_metrics([1, 2], [5, 6, 7])
    assert bad["auroc"] == 0.0 and bad["fpr95"] == 1.0
    assert fpr_at_95([1, 2], [5, 6, 7], "openood") == 1.0


def test_reference_gaussians_conventions_differ():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    a, b = fpr_at_95(s_id, s_ood, "classic"), fpr_at_95(s_id, s_ood, "openood")
    assert 0.5 < a < 0.9 and 0.5 < b < 0.9 and a != b


def test_rejects_nan_and_unknown_convention():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([np.nan, 1], [0])
    with pytest.raises(ValueError, match="convention"):
        fpr_at_95([1], [0], "nope")


def test_matrix_groups_means_and_flat_names():
    m = ood_matrix(S_ID, near={"a": S_OOD}, far={"b": [0.0, 0.1], "c": [0.85, 0.95]}, id_acc=0.5)
    flat = m.flat()
    assert flat["near/auroc"] == pytest.approx(5 / 6)
    assert flat["far/auroc"] == pytest.approx((1.0 + 1 / 6) / 2)  # c: only 0.9>0.85 of 6 pairs
    assert flat["b/fpr95"] == 0.0 and flat["id/acc"] == 0.5
    back = OODMatrix.from_json(m.to_json())
    assert back.flat() == flat
    text = m.format()
    assert "FPR@95 (classic)" in text and "near (mean)" in text and "ID accuracy: 50.00%" in text
    assert m.to_csv().splitlines()[0] == "ood_dataset,group,auroc,aupr_in,aupr_out,fpr95"


def _sklearn_reference(s_id, s_ood, convention):
    """The same metrics through scikit-learn's curves (what OpenOOD calls), for the equivalence tests."""
    from sklearn import metrics as skm

    scores = np.r_[s_id, s_ood]
    is_id = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    fpr, tpr, _ = skm.roc_curve(is_id, scores)
    p_in, r_in, _ = skm.precision_recall_curve(is_id, scores)
    p_out, r_out, _ = skm.precision_recall_curve(1 - is_id, -scores)
    if convention == "classic":
        f, t, _ = skm.roc_curve(is_id, scores, drop_intermediate=False)
    else:
        f, t, _ = skm.roc_curve(1 - is_id, -scores, drop_intermediate=False)
    return {"auroc": skm.auc(fpr, tpr), "aupr_in": skm.auc(r_in, p_in), "aupr_out": skm.auc(r_out, p_out),
            "fpr95": f[np.argmax(t >= 0.95)]}


@pytest.mark.parametrize("convention", ["classic", "openood"])
@pytest.mark.parametrize("case", ["continuous", "ties", "tiny"])
def test_equals_scikit_learn(case, convention):
    rng = np.random.default_rng(7)
    if case == "continuous":
        s_id, s_ood = rng.normal(1, 1, 3000), rng.normal(0, 1.5, 1700)
    elif case == "ties":  # scores on a coarse grid: many ties within and across the two sets
        s_id, s_ood = rng.integers(0, 12, 900).astype(float), rng.integers(-3, 8, 600).astype(float)
    else:
        s_id, s_ood = np.array([0.2, 0.2, 0.9]), np.array([0.2, 0.5])
    ours = ood_metrics(s_id, s_ood, convention)
    reference = _sklearn_reference(s_id, s_ood, convention)
    assert ours == pytest.approx(reference, abs=1e-12)
