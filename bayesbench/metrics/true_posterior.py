"""Distances from the exact Bayes posterior, for datasets whose generating process is known.

``true_probs: [N, C]`` is ``p(y | x_n)`` under the data-generating process; ``probs: [N, C]``
is the model's predictive.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesbench.metrics.classification import EPS, as_probs


def _pair(true_probs: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = as_probs(true_probs), as_probs(probs)
    if t.shape != p.shape:
        raise ValueError(f"true_probs has shape {t.shape} but probs has shape {p.shape}")
    return t, p


def kl_from_true(true_probs: Any, probs: Any) -> float:
    """Mean KL divergence from the true posterior to the predictive, in nats.

    ``mean_n sum_c t_nc log(t_nc / max(p_nc, EPS))`` with ``0 log(0 / p) = 0``.

    true_probs, probs: ``[N, C]``.

    >>> round(kl_from_true([[1.0, 0.0]], [[0.5, 0.5]]), 6)
    0.693147
    """
    t, p = _pair(true_probs, probs)
    positive = t > 0
    terms = np.zeros_like(t)
    terms[positive] = t[positive] * (np.log(t[positive]) - np.log(np.clip(p[positive], EPS, 1.0)))
    return float(np.mean(terms.sum(axis=1)))


def probability_rmse(true_probs: Any, probs: Any) -> float:
    """Root-mean-square error of the class probabilities: ``sqrt(mean_{n,c} (p_nc - t_nc)^2)``.

    true_probs, probs: ``[N, C]``.

    >>> probability_rmse([[1.0, 0.0]], [[0.5, 0.5]])
    0.5
    """
    t, p = _pair(true_probs, probs)
    return float(np.sqrt(np.mean((p - t) ** 2)))
