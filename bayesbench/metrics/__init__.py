"""Metrics: pure functions of predictive samples and labels, plus the table of metric facts.

Every metric name that can appear in a result is in :data:`METRICS` with its direction and
the default tolerance the regression gate allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from bayesbench.metrics.calibration import (
    adaptive_calibration_error,
    calibration_error_from_statistics,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_statistics,
)
from bayesbench.metrics.classification import (
    accuracy,
    brier_score,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
)
from bayesbench.metrics.ood import OOD_SCORES, false_positive_rate_at_tpr, ood_detection_metrics
from bayesbench.metrics.selective import area_under_risk_coverage, risk_coverage_curve
from bayesbench.metrics.suite import evaluate_ood, evaluate_split
from bayesbench.metrics.true_posterior import kl_from_true, probability_rmse

__all__ = [
    "METRICS",
    "OOD_SCORES",
    "MetricInfo",
    "accuracy",
    "adaptive_calibration_error",
    "area_under_risk_coverage",
    "brier_score",
    "calibration_error_from_statistics",
    "evaluate_ood",
    "evaluate_split",
    "expected_calibration_error",
    "false_positive_rate_at_tpr",
    "kl_from_true",
    "maximum_calibration_error",
    "mutual_information",
    "negative_log_likelihood",
    "ood_detection_metrics",
    "predictive_entropy",
    "probability_rmse",
    "reliability_statistics",
    "risk_coverage_curve",
]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    tolerance: float  # absolute slack the regression gate allows before calling a regression
    description: str
    gated: bool = True  # timings are too noisy to gate by default

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _m(name: str, hib: bool, tol: float, desc: str, gated: bool = True) -> MetricInfo:
    return MetricInfo(name, hib, tol, desc, gated)


_OOD = {
    "max_prob": "maximum predictive probability",
    "entropy": "predictive entropy",
    "mutual_info": "mutual information between label and parameters (0 for S = 1)",
}

METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        _m("accuracy", True, 0.02, "fraction of argmax predictions that are correct"),
        _m("nll", False, 0.05, "mean negative log-likelihood of the label under the predictive"),
        _m("brier", False, 0.02, "mean over examples of sum_c (p_c - 1[y = c])^2"),
        _m("ece", False, 0.02, "expected calibration error, equal-width confidence bins"),
        _m("adaptive_ece", False, 0.02, "expected calibration error, equal-mass bins"),
        _m("mce", False, 0.1, "maximum calibration error over non-empty equal-width bins"),
        _m("aurc", False, 0.02, "area under the risk-coverage curve (selective prediction)"),
        _m("mean_entropy", False, float("inf"), "mean predictive entropy (nats)", gated=False),
        _m("kl_true", False, 0.02,
            "mean KL(true posterior || predictive), where the truth is known"),
        _m("prob_rmse_true", False, 0.02, "RMSE of predicted vs true class probabilities"),
        *[
            _m(f"{kind}_{score}", kind != "fpr95", 0.03, f"OOD {label} scored by {text}")
            for score, text in _OOD.items()
            for kind, label in [("auroc", "AUROC"), ("aupr", "AUPR (OOD positive)"),
                                ("fpr95", "false-positive rate at 95% TPR")]
        ],
        _m("train_seconds", False, float("inf"), "wall-clock training time", gated=False),
        _m("predict_seconds_per_1000", False, float("inf"), "prediction time per 1000 inputs",
           gated=False),
        _m("num_parameters", False, 0.0, "trainable parameters (incl. all ensemble members)",
           gated=False),
    ]
}
