"""Metric values against hand computations and independent reference implementations."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bayesbench.metrics import (
    METRICS,
    accuracy,
    adaptive_calibration_error,
    area_under_risk_coverage,
    brier_score,
    calibration_error_from_statistics,
    evaluate_ood,
    evaluate_split,
    expected_calibration_error,
    false_positive_rate_at_tpr,
    kl_from_true,
    maximum_calibration_error,
    mutual_information,
    negative_log_likelihood,
    ood_detection_metrics,
    predictive_entropy,
    probability_rmse,
    reliability_statistics,
    risk_coverage_curve,
)
from bayesbench.metrics.ood import _auroc, _average_precision, detection_curve

# Five binary predictions; with n_bins=4 the edges are 0, .25, .5, .75, 1 and the confidences
# 0.5 and 0.75 sit exactly on edges (right-closed bins put them in bins 1 and 2).
HAND_PROBS = np.array([[0.5, 0.5], [0.75, 0.25], [0.4, 0.6], [0.1, 0.9], [1.0, 0.0]])
HAND_LABELS = np.array([1, 0, 1, 0, 0])  # correct: no, yes, yes, no, yes


def random_predictions(seed: int, n: int = 500, c: int = 4, s: int = 1):
    rng = np.random.default_rng(seed)
    samples = rng.dirichlet(np.full(c, 0.7), size=(s, n))
    labels = rng.integers(0, c, size=n)
    return samples, labels


# --- classification --------------------------------------------------------------------------


def test_accuracy_nll_brier_hand_computed():
    assert accuracy(HAND_PROBS, HAND_LABELS) == pytest.approx(0.6)
    expected_nll = -(math.log(0.5) + math.log(0.75) + math.log(0.6) + math.log(0.1)) / 5
    assert negative_log_likelihood(HAND_PROBS, HAND_LABELS) == pytest.approx(expected_nll)
    # per row: 0.5, 0.125, 0.32, 1.62, 0
    assert brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(2.565 / 5)


def test_nll_clips_zero_probability_of_the_label():
    assert negative_log_likelihood([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))


def test_argmax_ties_go_to_the_lowest_class():
    assert accuracy([[0.5, 0.5]], [0]) == 1.0
    assert accuracy([[0.5, 0.5]], [1]) == 0.0


def test_metrics_accept_torch_tensors():
    probs = torch.tensor(HAND_PROBS, dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(HAND_LABELS)
    assert accuracy(probs, labels) == pytest.approx(0.6)
    assert brier_score(probs, labels) == pytest.approx(0.513, abs=1e-6)


def test_predictive_entropy_values():
    h = predictive_entropy([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    np.testing.assert_allclose(h, [math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))])
    assert h[1] == 0.0 and not np.signbit(h[1])
    assert predictive_entropy(np.full((1, 4), 0.25))[0] == pytest.approx(math.log(4))


def test_mutual_information_zero_for_agreeing_samples():
    samples, _ = random_predictions(0, n=20, s=1)
    np.testing.assert_array_equal(mutual_information(samples), np.zeros(20))
    identical = np.repeat(samples, 5, axis=0)
    np.testing.assert_allclose(mutual_information(identical), 0.0, atol=1e-12)


def test_mutual_information_of_disagreeing_samples():
    # two confident members disagreeing: H(mean) = log 2, mean H = 0
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(mutual_information(samples), [math.log(2)])
    # partial disagreement: H([.5,.5]) - H([.9,.1])
    samples = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])
    h_member = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(mutual_information(samples), [math.log(2) - h_member])
    assert mutual_information(samples)[0] > 0


# --- calibration -----------------------------------------------------------------------------


def reference_ece(probs, labels, n_bins, norm="l1"):
    """Straightforward loop over (lower, upper] bins, as in torchmetrics' original code."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total, worst = 0.0, 0.0
    for b, (lower, upper) in enumerate(itertools.pairwise(edges)):
        in_bin = (conf > lower) & (conf <= upper)
        if b == 0:
            in_bin |= conf == 0
        if in_bin.sum() == 0:
            continue
        gap = abs(correct[in_bin].mean() - conf[in_bin].mean())
        total += in_bin.mean() * gap
        worst = max(worst, gap)
    return total if norm == "l1" else worst


def reference_adaptive_ece(probs, labels, n_bins):
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    order = np.argsort(conf, kind="stable")
    n = len(conf)
    total, start = 0.0, 0
    for b in range(n_bins):
        size = n // n_bins + (1 if b < n % n_bins else 0)
        idx = order[start : start + size]
        start += size
        if size:
            total += size / n * abs(correct[idx].mean() - conf[idx].mean())
    return total


def test_ece_mce_hand_computed_with_confidences_on_bin_edges():
    # bins (.25,.5]: {0.5 wrong}; (.5,.75]: {0.75 right, 0.6 right}; (.75,1]: {0.9 wrong, 1 right}
    # gaps .5, |1 - .675| = .325, |.5 - .95| = .45
    ece = expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4)
    assert ece == pytest.approx((1 * 0.5 + 2 * 0.325 + 2 * 0.45) / 5)
    assert maximum_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.5)


def test_reliability_statistics_hand_computed_and_json_serialisable():
    stats = reliability_statistics(HAND_PROBS, HAND_LABELS, n_bins=4)
    assert stats["n_bins"] == 4
    assert stats["counts"] == [0, 1, 2, 2]
    np.testing.assert_allclose(stats["confidence_sum"], [0.0, 0.5, 1.35, 1.9])
    np.testing.assert_allclose(stats["correct_sum"], [0.0, 0.0, 2.0, 1.0])
    assert json.loads(json.dumps(stats)) == stats
    assert calibration_error_from_statistics(stats) == pytest.approx(0.41)
    assert calibration_error_from_statistics(stats, norm="max") == pytest.approx(0.5)


def test_adaptive_ece_hand_computed():
    # sorted confidences .5(wrong) .6 .75 | .9(wrong) 1.0: groups of 3 and 2
    # gaps |2/3 - 1.85/3| = .05 and |.5 - .95| = .45
    ace = adaptive_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=2)
    assert ace == pytest.approx(3 / 5 * 0.05 + 2 / 5 * 0.45)


@pytest.mark.parametrize("n_bins", [1, 7, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_errors_match_reference_loops(seed, n_bins):
    samples, labels = random_predictions(seed, n=503, c=5)
    probs = samples[0]
    ece = expected_calibration_error(probs, labels, n_bins)
    assert ece == pytest.approx(reference_ece(probs, labels, n_bins), abs=1e-12)
    assert maximum_calibration_error(probs, labels, n_bins) == pytest.approx(
        reference_ece(probs, labels, n_bins, norm="max"), abs=1e-12
    )
    assert adaptive_calibration_error(probs, labels, n_bins) == pytest.approx(
        reference_adaptive_ece(probs, labels, n_bins), abs=1e-12
    )
    stats = reliability_statistics(probs, labels, n_bins)
    assert sum(stats["counts"]) == len(labels)
    assert calibration_error_from_statistics(stats) == pytest.approx(ece, abs=1e-12)


def test_perfectly_confident_correct_predictions_have_zero_calibration_error():
    probs = np.eye(3)[[0, 1, 2, 1]]
    labels = np.array([0, 1, 2, 1])
    assert expected_calibration_error(probs, labels) == 0.0
    assert adaptive_calibration_error(probs, labels) == 0.0
    assert maximum_calibration_error(probs, labels) == 0.0


def test_bad_n_bins_raises():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=0)


# --- selective prediction --------------------------------------------------------------------


def test_aurc_hand_computed():
    # confidences .9 right, .8 wrong, .7 right, .6 wrong -> risks 0, 1/2, 1/3, 2/4
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])
    np.testing.assert_allclose(risk_coverage_curve(probs, labels), [0, 1 / 2, 1 / 3, 1 / 2])
    assert area_under_risk_coverage(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)


def test_aurc_ties_use_the_expected_risk_over_orderings():
    # two tied at .9 (one wrong, one right), then .6 right: orders give risks (1, 1/2, 1/3) and
    # (0, 1/2, 1/3); their average is (1/2, 1/2, 1/3) whatever the input order
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 0, 0])
    expected = (1 / 2 + 1 / 2 + 1 / 3) / 3
    assert area_under_risk_coverage(probs, labels) == pytest.approx(expected)
    assert area_under_risk_coverage(probs[[1, 0, 2]], labels) == pytest.approx(expected)
    # all tied: the risk is the error rate at every coverage
    flat = np.full((6, 3), 1 / 3)
    assert area_under_risk_coverage(flat, [0, 1, 1, 2, 0, 0]) == pytest.approx(3 / 6)


def test_aurc_matches_sorted_loop_on_random_data_without_ties():
    samples, labels = random_predictions(3, n=200)
    probs = samples[0]
    order = np.argsort(-probs.max(1))
    errors = (probs.argmax(1) != labels)[order]
    reference = np.mean([errors[:k].mean() for k in range(1, len(labels) + 1)])
    assert area_under_risk_coverage(probs, labels) == pytest.approx(reference)


# --- OOD detection ---------------------------------------------------------------------------


def binary_samples_with_ood_score(scores):
    """[1, N, 2] predictions whose max_prob OOD score 1 - max p equals ``scores`` (<= .5)."""
    scores = np.asarray(scores, dtype=float)
    return np.stack([1 - scores, scores], axis=1)[None]


ID_SCORES = [0.05, 0.1, 0.15, 0.2, 0.3]
OOD_SCORES_HAND = [0.45] * 18 + [0.25, 0.12]


@pytest.mark.filterwarnings("error")
def test_ood_metrics_hand_computed():
    out = ood_detection_metrics(
        binary_samples_with_ood_score(ID_SCORES), binary_samples_with_ood_score(OOD_SCORES_HAND)
    )
    expected_keys = {
        f"{k}_{s}"
        for k in ("auroc", "aupr", "fpr95")
        for s in ("max_prob", "entropy", "mutual_info")
    }
    assert set(out) == expected_keys
    assert expected_keys <= set(METRICS)
    # OOD > ID pairs: 18 * 5 + 4 (0.25) + 2 (0.12) = 96 of 100
    assert out["auroc_max_prob"] == pytest.approx(0.96)
    # 95% TPR = 19 of 20 OOD flagged, first reached at threshold .25, where ID 0.3 is flagged
    assert out["fpr95_max_prob"] == pytest.approx(1 / 5)
    # entropy is monotone in 1 - max p for two classes: same ranking
    assert out["auroc_entropy"] == pytest.approx(0.96)
    assert out["fpr95_entropy"] == pytest.approx(1 / 5)
    # S = 1: mutual information is constant 0
    assert out["auroc_mutual_info"] == 0.5
    assert out["aupr_mutual_info"] == pytest.approx(20 / 25)
    assert out["fpr95_mutual_info"] == 1.0


def test_fpr95_hand_computed_and_exact_at_95_percent():
    # 20 OOD: 19 at 0.9 and one at 0.1; 4 ID: 0.2, 0.5, 0.95, 0.05
    is_ood = np.array([1] * 20 + [0] * 4)
    scores = np.array([0.9] * 19 + [0.1] + [0.2, 0.5, 0.95, 0.05])
    # threshold 0.9 flags 19/20 = 95% exactly; ID flagged there: 0.95 -> FPR 1/4
    assert false_positive_rate_at_tpr(is_ood, scores) == pytest.approx(0.25)
    # requiring 100% TPR moves the threshold to 0.1: ID 0.2, 0.5, 0.95 flagged
    assert false_positive_rate_at_tpr(is_ood, scores, tpr_target=1.0) == pytest.approx(0.75)


def test_auroc_matches_brute_force_pair_count():
    rng = np.random.default_rng(5)
    in_samples = rng.dirichlet(np.full(3, 2.0), size=(4, 60))
    ood_samples = rng.dirichlet(np.full(3, 1.0), size=(4, 40))
    out = ood_detection_metrics(in_samples, ood_samples)
    for name, score in [
        ("max_prob", lambda s: 1 - s.mean(0).max(1)),
        ("entropy", lambda s: predictive_entropy(s.mean(0))),
        ("mutual_info", mutual_information),
    ]:
        # rounding creates ties, which count one half
        s_in, s_ood = np.round(score(in_samples), 2), np.round(score(ood_samples), 2)
        diff = s_ood[:, None] - s_in[None, :]
        brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
        labels = np.r_[np.zeros(60), np.ones(40)]
        assert roc_auc_score(labels, np.r_[s_in, s_ood]) == pytest.approx(brute)
        # unrounded scores through the library
        diff = score(ood_samples)[:, None] - score(in_samples)[None, :]
        brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
        assert out[f"auroc_{name}"] == pytest.approx(brute)


def test_ood_metrics_equal_scikit_learns_with_ties():
    """One shared sort per score gives scikit-learn's AUROC, average precision and ROC
    points (on which FPR at 95% TPR is read) to the last bit, ties and tiny sets included."""
    from sklearn.metrics import average_precision_score, roc_curve

    rng = np.random.default_rng(11)
    for trial in range(300):
        n_in, n_ood = rng.integers(1, 120, size=2)
        labels = np.r_[np.zeros(n_in), np.ones(n_ood)]
        scores = rng.random(n_in + n_ood)
        if trial % 2:  # coarse scores: many ties, some across the two groups
            scores = np.round(scores, int(rng.integers(0, 3)))
        fps, tps = detection_curve(labels, scores)
        assert _auroc(fps, tps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert _average_precision(fps, tps) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        needed = math.ceil(round(0.95 * n_ood, 9))
        expected = fpr[np.argmax(np.rint(tpr * n_ood) >= needed)]
        assert false_positive_rate_at_tpr(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_mutual_information_detects_ensemble_disagreement():
    # members agree on test inputs, disagree on OOD ones
    agree = np.array([[[0.8, 0.2]] * 5] * 2)
    disagree = np.array([[[0.8, 0.2]] * 5, [[0.2, 0.8]] * 5])
    out = ood_detection_metrics(agree, disagree)
    assert out["auroc_mutual_info"] == 1.0
    assert out["fpr95_mutual_info"] == 0.0


# --- true posterior --------------------------------------------------------------------------


def test_kl_and_rmse_against_truth():
    samples, _ = random_predictions(2, n=50)
    truth = samples[0]
    assert kl_from_true(truth, truth) == 0.0
    assert probability_rmse(truth, truth) == 0.0
    t = np.array([[1.0, 0.0], [0.5, 0.5]])
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    expected_kl = (math.log(2) + 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert kl_from_true(t, p) == pytest.approx(expected_kl)
    assert probability_rmse(t, p) == pytest.approx(math.sqrt((0.25 * 2 + 0.0625 * 2) / 4))
    # zero predicted probability of a possible class: clipped, finite
    assert kl_from_true([[0.5, 0.5]], [[1.0, 0.0]]) == pytest.approx(
        0.5 * math.log(0.5 / 1e-12) + 0.5 * math.log(0.5)
    )


# --- suite -----------------------------------------------------------------------------------


def test_evaluate_split_returns_plain_floats_named_in_metrics():
    samples, labels = random_predictions(4, n=100, s=3)
    out = evaluate_split(samples, labels, true_probs=samples.mean(0))
    assert set(out) == {
        "accuracy",
        "nll",
        "brier",
        "ece",
        "adaptive_ece",
        "mce",
        "aurc",
        "mean_entropy",
        "kl_true",
        "prob_rmse_true",
    }
    assert set(out) <= set(METRICS)
    assert all(type(v) is float for v in out.values())
    probs = samples.mean(0)
    assert out["accuracy"] == pytest.approx(accuracy(probs, labels))
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert out["mean_entropy"] == pytest.approx(predictive_entropy(probs).mean())
    assert out["kl_true"] == pytest.approx(0.0, abs=1e-12)
    assert "kl_true" not in evaluate_split(samples, labels)


def test_evaluate_split_accepts_probs_and_tensors():
    samples, labels = random_predictions(6, n=30)
    from_array = evaluate_split(samples[0], labels, n_bins=5)
    from_tensor = evaluate_split(
        torch.tensor(samples, dtype=torch.float64), torch.tensor(labels), n_bins=5
    )
    assert from_array == pytest.approx(from_tensor)


def test_evaluate_ood_keys_and_values():
    samples, _ = random_predictions(7, n=30, s=2)
    ood, _ = random_predictions(8, n=20, s=2)
    out = evaluate_ood(samples, ood)
    assert len(out) == 9 and set(out) <= set(METRICS)
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in out.values())


@pytest.mark.parametrize(
    "samples, labels, match",
    [
        (np.array([[2.0, -1.0], [0.5, 0.5]]), [0, 1], "softmax"),
        (np.array([[0.5, 0.4], [0.5, 0.5]]), [0, 1], "do not sum to 1.*softmax"),
        (np.array([[np.nan, 0.5], [0.5, 0.5]]), [0, 1], "NaN"),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 2], r"\[0, 2\)"),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), [0, -1], r"\[0, 2\)"),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1, 1], "3 entries"),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 0.5], "integer"),
        (np.array([0.5, 0.5]), [0], "dimensions"),
    ],
)
def test_evaluate_split_rejects_bad_inputs(samples, labels, match):
    with pytest.raises(ValueError, match=match):
        evaluate_split(samples, np.asarray(labels))


def test_evaluate_ood_rejects_class_mismatch():
    with pytest.raises(ValueError, match="classes"):
        evaluate_ood(np.full((3, 2), 0.5), np.full((3, 4), 0.25))
