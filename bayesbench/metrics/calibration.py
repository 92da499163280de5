"""Top-label calibration errors and the reliability-diagram statistics they are computed from.

Confidence is ``conf_n = max_c p_nc`` and correctness ``correct_n = 1[argmax_c p_nc = y_n]``.
For a set of bins ``B_b``, ``acc_b = mean_{n in B_b} correct_n`` and
``conf_b = mean_{n in B_b} conf_n``.

Equal-width bins (ECE, MCE, reliability statistics) have edges ``np.linspace(0, 1, n_bins + 1)``
and are **right-closed**, as in torchmetrics' ``(lower, upper]`` test: bin ``b`` holds
``edges[b] < conf <= edges[b + 1]``; the first bin also holds ``conf = 0`` and ``conf = 1``
falls in the last bin.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bayesbench.metrics.classification import as_labels, as_probs


def _confidence_and_correct(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_probs(probs)
    y = as_labels(labels, len(p))
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _check_n_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def _equal_width_bin_sums(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width, right-closed bin: ``(counts, confidence sums, correct sums)``."""
    _check_n_bins(n_bins)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="left" counts the inner edges strictly below conf, so conf on an edge goes left
    index = np.searchsorted(inner_edges, confidence, side="left")
    counts = np.bincount(index, minlength=n_bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return counts, confidence_sum, correct_sum


def _calibration_error_from_sums(
    counts: np.ndarray,
    confidence_sum: np.ndarray,
    correct_sum: np.ndarray,
    norm: Literal["l1", "max"],
) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    filled = counts > 0
    if not filled.any():
        raise ValueError("calibration error of an empty set of predictions")
    gap = np.abs(np.asarray(correct_sum)[filled] - np.asarray(confidence_sum)[filled])
    gap = gap / counts[filled]  # |acc_b - conf_b|
    if norm == "max":
        return float(gap.max())
    return float(np.sum(counts[filled] / counts.sum() * gap))


def reliability_statistics(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Equal-width reliability-diagram statistics, JSON-serialisable.

    Returns ``{"n_bins": int, "counts": list[int], "confidence_sum": list[float],
    "correct_sum": list[float]}``, one list entry per bin (binning in the module docstring).
    :func:`calibration_error_from_statistics` turns it into the ECE or MCE exactly.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> reliability_statistics([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2)["counts"]
    [0, 2]
    """
    counts, confidence_sum, correct_sum = _equal_width_bin_sums(
        *_confidence_and_correct(probs, labels), n_bins
    )
    return {
        "n_bins": int(n_bins),
        "counts": [int(c) for c in counts],
        "confidence_sum": [float(c) for c in confidence_sum],
        "correct_sum": [float(c) for c in correct_sum],
    }


def calibration_error_from_statistics(
    statistics: dict[str, Any], norm: Literal["l1", "max"] = "l1"
) -> float:
    """ECE (``norm="l1"``) or MCE (``norm="max"``) from :func:`reliability_statistics` output."""
    return _calibration_error_from_sums(
        np.asarray(statistics["counts"]),
        np.asarray(statistics["confidence_sum"]),
        np.asarray(statistics["correct_sum"]),
        norm,
    )


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error over equal-width bins (torchmetrics' L1 norm).

    ``ECE = sum_b (|B_b| / N) |acc_b - conf_b|`` over non-empty bins; bins in the module
    docstring.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> round(expected_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2), 6)
    0.25
    """
    sums = _equal_width_bin_sums(*_confidence_and_correct(probs, labels), n_bins)
    return _calibration_error_from_sums(*sums, norm="l1")


def maximum_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Maximum calibration error: ``max_b |acc_b - conf_b|`` over non-empty equal-width bins.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> round(maximum_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2), 6)
    0.25
    """
    sums = _equal_width_bin_sums(*_confidence_and_correct(probs, labels), n_bins)
    return _calibration_error_from_sums(*sums, norm="max")


def adaptive_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label calibration error over equal-mass bins.

    Examples are sorted by confidence (stable sort, so equal confidences keep input order)
    and cut into ``n_bins`` consecutive groups whose sizes differ by at most one
    (``np.array_split``); then ``sum_b (|B_b| / N) |acc_b - conf_b|``. With N < n_bins the
    empty groups are skipped.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> round(adaptive_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2), 6)
    0.35
    """
    _check_n_bins(n_bins)
    confidence, correct = _confidence_and_correct(probs, labels)
    order = np.argsort(confidence, kind="stable")
    groups = [g for g in np.array_split(order, n_bins) if len(g)]
    counts = np.array([len(g) for g in groups])
    confidence_sum = np.array([confidence[g].sum() for g in groups])
    correct_sum = np.array([correct[g].sum() for g in groups])
    return _calibration_error_from_sums(counts, confidence_sum, correct_sum, norm="l1")
