"""SHE: stored patterns from correctly classified training samples, the three metrics by hand, edge classes."""
import numpy as np
import pytest

from methods.base import Outputs
from methods.she import METRICS, She, SheScorer
from orchestrator.knobs import KnobError


def predicted_as(classes, num_classes=4):
    """Logits whose argmax is each given class."""
    return 5.0 * np.eye(num_classes)[classes]


# class 0: (1, 0), (3, 2) correct, (9, 9) predicted 1 (left out) → m0 = (2, 1)
# class 1: (0, 2) correct, its only sample                         → m1 = (0, 2)
# class 2: (5, 5) predicted 0, no correct sample                   → m2 = (5, 5), the mean of all its samples
# class 3: no training sample                                      → m3 = 0
TRAIN = Outputs(predicted_as([0, 0, 1, 1, 0]), np.array([[1.0, 0.0], [3.0, 2.0], [9.0, 9.0], [0.0, 2.0], [5.0, 5.0]]),
                np.array([0, 0, 0, 1, 2]))
# one test input predicted as each class
TEST = Outputs(predicted_as([0, 1, 2, 3]), np.array([[1.0, 1.0], [2.0, 0.0], [1.0, 2.0], [4.0, 0.0]]))


def test_patterns_are_means_of_correct_samples():
    np.testing.assert_allclose(SheScorer().fit(TRAIN).patterns_[:2], [[2.0, 1.0], [0.0, 2.0]])


def test_class_without_a_correct_sample_falls_back_to_all_its_samples():
    np.testing.assert_allclose(SheScorer().fit(TRAIN).patterns_[2], [5.0, 5.0])


def test_class_without_a_correct_sample_is_recorded():
    assert SheScorer().fit(TRAIN).fallback_classes_ == [2]


def test_class_without_samples_gets_a_zero_pattern():
    np.testing.assert_array_equal(SheScorer().fit(TRAIN).patterns_[3], [0.0, 0.0])


def test_class_without_samples_is_recorded():
    assert SheScorer().fit(TRAIN).empty_classes_ == [3]


def test_inner_product_by_hand():
    # (1,1)·(2,1) = 3, (2,0)·(0,2) = 0, (1,2)·(5,5) = 15, (4,0)·0 = 0
    np.testing.assert_allclose(SheScorer().fit(TRAIN).score(TEST), [3.0, 0.0, 15.0, 0.0], atol=1e-12)


def test_cosine_by_hand():
    # 3/(√2·√5), 0, 15/(√5·√50), zero pattern → 0
    expected = [3 / np.sqrt(10), 0.0, 15 / np.sqrt(250), 0.0]
    np.testing.assert_allclose(SheScorer("cosine").fit(TRAIN).score(TEST), expected, atol=1e-12)


def test_euclidean_by_hand():
    # −‖(1,1) − (2,1)‖, −‖(2,0) − (0,2)‖, −‖(1,2) − (5,5)‖, −‖(4,0)‖
    expected = [-1.0, -np.sqrt(8), -5.0, -4.0]
    np.testing.assert_allclose(SheScorer("euclidean").fit(TRAIN).score(TEST), expected, atol=1e-12)


def test_zero_feature_has_zero_cosine():
    test = Outputs(predicted_as([0]), np.zeros((1, 2)))
    np.testing.assert_array_equal(SheScorer("cosine").fit(TRAIN).score(test), [0.0])


@pytest.mark.parametrize("metric", METRICS)
def test_scores_are_finite_for_every_class(metric):
    assert np.isfinite(SheScorer(metric).fit(TRAIN).score(TEST)).all()


def test_one_class():
    train = Outputs(np.zeros((2, 1)), np.array([[1.0, 3.0], [3.0, 1.0]]), np.array([0, 0]))
    test = Outputs(np.zeros((1, 1)), np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(SheScorer().fit(train).score(test), [4.0])


def test_fit_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        SheScorer().fit(Outputs(TRAIN.logits, TRAIN.features))


def test_fit_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match="labels"):
        SheScorer().fit(Outputs(TRAIN.logits, TRAIN.features, np.array([0, 0, 0, 1, 4])))


def test_score_before_fit_fails():
    with pytest.raises(RuntimeError, match="before fit"):
        SheScorer().score(TEST)


def test_score_refuses_other_feature_widths():
    with pytest.raises(ValueError, match="fitted on"):
        SheScorer().fit(TRAIN).score(Outputs(TEST.logits, np.zeros((4, 3))))


@pytest.mark.parametrize("metric", ["dot", "", None, "Cosine"])
def test_bad_metric_is_refused(metric):
    with pytest.raises(ValueError, match="metric"):
        SheScorer(metric)


def test_resolve_refuses_a_bad_metric():
    with pytest.raises(KnobError, match="metric"):
        She().resolve({"metric": "dot"})


def test_default_is_the_papers_inner_product():
    assert She().resolve({})["metric"] == "inner_product"
