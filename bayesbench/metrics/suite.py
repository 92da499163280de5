"""Every metric of a split in one call, with the input checks the metric functions skip.

The ``check_*`` functions raise :class:`ValueError` whose message says what is wrong and how
to fix it; :mod:`bayesbench.scoring` reuses them, prefixing the file name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesbench.metrics.calibration import (
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)
from bayesbench.metrics.classification import (
    accuracy,
    as_array,
    brier_score,
    negative_log_likelihood,
    predictive_entropy,
)
from bayesbench.metrics.ood import ood_detection_metrics
from bayesbench.metrics.selective import area_under_risk_coverage
from bayesbench.metrics.true_posterior import kl_from_true, probability_rmse

SIMPLEX_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from 1 (float32 softmax is within ~1e-6)."""


def check_probabilities(values: Any, name: str = "samples") -> np.ndarray:
    """``values`` as float64 ``[S, N, C]`` (a ``[N, C]`` input becomes S = 1), checked to be
    finite, non-empty, with C >= 2 and every row on the probability simplex."""
    p = as_array(values)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(
            f"{name} must be [N, C] probabilities or [S, N, C] samples of them, "
            f"got {p.ndim} dimensions (shape {p.shape})"
        )
    if p.shape[1] == 0:
        raise ValueError(f"{name} has no examples (shape {p.shape})")
    if p.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {p.shape})")
    if p.shape[2] < 2:
        raise ValueError(
            f"{name} has {p.shape[2]} class column(s); give one probability column per class "
            "(at least 2)"
        )
    if not np.all(np.isfinite(p)):
        count = int(np.sum(~np.isfinite(p)))
        raise ValueError(f"{name} contains {count} NaN or infinite value(s); fix the predictions")
    deviation = float(np.max(np.abs(p.sum(axis=-1) - 1.0)))
    if p.min() < -SIMPLEX_TOLERANCE or p.max() > 1.0 + SIMPLEX_TOLERANCE:
        raise ValueError(
            f"{name} has values outside [0, 1] (min {p.min():.4g}, max {p.max():.4g}): these look "
            "like logits; apply softmax over the class axis before scoring"
        )
    if deviation > SIMPLEX_TOLERANCE:
        raise ValueError(
            f"{name} has rows that do not sum to 1 (largest deviation {deviation:.4g} > "
            f"{SIMPLEX_TOLERANCE}): these look like logits or unnormalised scores; apply "
            "softmax over the class axis before scoring"
        )
    return p


def check_labels(labels: Any, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as int64 ``[n]``, checked to be finite integers in ``[0, n_classes)``."""
    raw = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if raw.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {raw.shape}")
    if len(raw) != n:
        raise ValueError(f"{name} has {len(raw)} entries but the predictions have {n} rows")
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be integer class indices, got dtype {raw.dtype}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"{name} contains NaN or infinite values; every label must be a class")
        if not np.all(raw == np.round(raw)):
            bad = float(raw[raw != np.round(raw)][0])
            raise ValueError(f"{name} must be integer class indices, found {bad:g}")
    y = raw.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} must lie in [0, {n_classes}) for {n_classes} classes, found values from "
            f"{y.min()} to {y.max()}"
        )
    return y


def evaluate_split(
    samples: Any, labels: Any, *, n_bins: int = 15, true_probs: Any = None
) -> dict[str, float]:
    """All per-split metrics of predictive samples against labels.

    samples: ``[S, N, C]`` (or ``[N, C]``); labels: ``[N]``; true_probs: optional ``[N, C]``
    exact posterior. Metrics use the predictive ``probs = samples.mean(0)``. Returns plain
    floats under ``accuracy, nll, brier, ece, adaptive_ece, mce, aurc, mean_entropy`` and, with
    ``true_probs``, ``kl_true, prob_rmse_true``. Raises ValueError on malformed inputs.
    """
    s = check_probabilities(samples, "samples")
    _, n, c = s.shape
    y = check_labels(labels, n, c)
    probs = s.mean(axis=0)
    out = {
        "accuracy": accuracy(probs, y),
        "nll": negative_log_likelihood(probs, y),
        "brier": brier_score(probs, y),
        "ece": expected_calibration_error(probs, y, n_bins),
        "adaptive_ece": adaptive_calibration_error(probs, y, n_bins),
        "mce": maximum_calibration_error(probs, y, n_bins),
        "aurc": area_under_risk_coverage(probs, y),
        "mean_entropy": float(np.mean(predictive_entropy(probs))),
    }
    if true_probs is not None:
        t = check_probabilities(true_probs, "true_probs")
        if t.shape != (1, n, c):
            raise ValueError(f"true_probs must be [N, C] = [{n}, {c}], got {t.shape[1:]}")
        out["kl_true"] = kl_from_true(t[0], probs)
        out["prob_rmse_true"] = probability_rmse(t[0], probs)
    return {k: float(v) for k, v in out.items()}


def evaluate_ood(in_samples: Any, ood_samples: Any) -> dict[str, float]:
    """OOD-detection metrics (see :func:`~bayesbench.metrics.ood.ood_detection_metrics`).

    in_samples: ``[S, N, C]`` on test inputs; ood_samples: ``[S, M, C]`` on OOD inputs (either
    may be ``[N, C]``). Raises ValueError on malformed inputs or a class-count mismatch.
    """
    s_in = check_probabilities(in_samples, "in-distribution samples")
    s_ood = check_probabilities(ood_samples, "OOD samples")
    if s_in.shape[2] != s_ood.shape[2]:
        raise ValueError(
            f"OOD samples have {s_ood.shape[2]} classes but in-distribution samples have "
            f"{s_in.shape[2]}; both must come from the same model"
        )
    return {k: float(v) for k, v in ood_detection_metrics(s_in, s_ood).items()}
