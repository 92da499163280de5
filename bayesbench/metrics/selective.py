"""Selective prediction: the risk of answering only the most confident inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesbench.metrics.classification import as_labels, as_probs


def risk_coverage_curve(probs: Any, labels: Any) -> np.ndarray:
    """Selective risk at coverage ``k / N`` for ``k = 1..N``: ``[N]``.

    Inputs are ranked by confidence ``max_c p_nc``, most confident first, and
    ``risk_k = (errors among the k most confident) / k``, an error being
    ``argmax_c p_nc != y_n``. **Ties**: inside a group of ``m`` equally confident inputs with
    ``e`` errors, the ``j``-th one taken adds ``e / m`` expected errors, i.e. the risk is the
    expectation over a random order of the ties, so the curve does not depend on input order.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> risk_coverage_curve([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]], [0, 1, 0]).tolist()
    [0.0, 0.5, 0.3333333333333333]
    """
    p = as_probs(probs)
    y = as_labels(labels, len(p))
    if len(p) == 0:
        raise ValueError("risk-coverage curve of an empty set of predictions")
    confidence = p.max(axis=1)
    error = (p.argmax(axis=1) != y).astype(np.float64)
    # groups of equal confidence, most confident group first
    _, group, group_size = np.unique(-confidence, return_inverse=True, return_counts=True)
    group_errors = np.bincount(group, weights=error)
    errors_before = np.concatenate([[0.0], np.cumsum(group_errors)[:-1]])
    size_before = np.concatenate([[0], np.cumsum(group_size)[:-1]])
    # for each coverage k: its group and how many of that group are taken (1..m)
    k = np.arange(1, len(p) + 1)
    g = np.repeat(np.arange(len(group_size)), group_size)
    taken = k - size_before[g]
    expected_errors = errors_before[g] + taken * group_errors[g] / group_size[g]
    return expected_errors / k


def area_under_risk_coverage(probs: Any, labels: Any) -> float:
    """AURC: ``mean_{k=1..N} risk_k``, the risk-coverage curve of
    :func:`risk_coverage_curve` averaged over coverages ``1/N .. 1`` (ties: expected value
    over a random order of equally confident inputs). Lower is better; an oracle ranking
    of a model with error rate r gets ``(1/N) sum_{k > (1-r)N} (k - (1-r)N) / k``.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> round(area_under_risk_coverage([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]], [0, 1, 0]), 6)
    0.277778
    """
    return float(np.mean(risk_coverage_curve(probs, labels)))
