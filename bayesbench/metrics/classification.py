"""Accuracy, proper scoring rules and uncertainty decompositions of a predictive distribution.

Shapes: ``samples: [S, N, C]`` predictive samples of class probabilities (S = 1 for a
deterministic model); ``probs: [N, C]`` the predictive ``samples.mean(0)``; ``labels: [N]``
integer class indices. Torch tensors are accepted anywhere an array is. Logs are natural
(nats).
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-12
"""Probabilities are clipped to ``[EPS, 1]`` before a log so that log(0) never occurs."""


def as_array(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_probs(probs: Any) -> np.ndarray:
    """``probs`` as a float64 ``[N, C]`` array (raises ValueError on another ndim)."""
    p = as_array(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    return p


def as_samples(samples: Any) -> np.ndarray:
    """``samples`` as a float64 ``[S, N, C]`` array; a ``[N, C]`` input becomes S = 1."""
    s = as_array(samples)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise ValueError(f"samples must be [S, N, C] (or [N, C]), got shape {s.shape}")
    return s


def as_labels(labels: Any, n: int) -> np.ndarray:
    """``labels`` as an int64 ``[n]`` array (raises ValueError on another shape)."""
    y = as_array(labels, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must be [N] with N = {n}, got shape {y.shape}")
    return y


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose argmax class equals the label.

    ``mean_n 1[argmax_c p_nc = y_n]``; argmax ties go to the lowest class index.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> accuracy([[0.9, 0.1], [0.4, 0.6]], [0, 0])
    0.5
    """
    return float(np.mean(per_example_correct(probs, labels)))


def per_example_correct(probs: Any, labels: Any) -> np.ndarray:
    """``[N]`` bools: argmax class (ties to the lowest index) equals the label; its mean is
    :func:`accuracy`."""
    p = as_probs(probs)
    y = as_labels(labels, len(p))
    return p.argmax(axis=1) == y


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels under the predictive.

    ``-mean_n log max(p_{n, y_n}, EPS)`` with ``EPS = 1e-12``, so a confident miss costs at most
    ``-log(1e-12) ≈ 27.6`` nats. (sklearn's ``log_loss`` would renormalise rows and clip with
    a dtype-dependent eps; we want the fixed definition.)

    probs: ``[N, C]``; labels: ``[N]``.

    >>> round(negative_log_likelihood([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)
    0.490415
    """
    return float(np.mean(per_example_nll(probs, labels)))


def per_example_nll(probs: Any, labels: Any) -> np.ndarray:
    """``[N]``: each example's ``-log max(p_{n, y_n}, EPS)``; its mean is
    :func:`negative_log_likelihood` (per-example paired tests use the terms)."""
    p = as_probs(probs)
    y = as_labels(labels, len(p))
    p_true = p[np.arange(len(p)), y]
    return -np.log(np.clip(p_true, EPS, 1.0))


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: ``mean_n sum_c (p_nc - 1[y_n = c])^2``, in ``[0, 2]``.

    probs: ``[N, C]``; labels: ``[N]``.

    >>> brier_score([[1.0, 0.0], [0.5, 0.5]], [0, 0])
    0.25
    """
    return float(np.mean(per_example_brier(probs, labels)))


def per_example_brier(probs: Any, labels: Any) -> np.ndarray:
    """``[N]``: each example's ``sum_c (p_nc - 1[y_n = c])^2``; its mean is
    :func:`brier_score`."""
    p = as_probs(probs)
    y = as_labels(labels, len(p))
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), y] = 1.0
    return np.sum((p - onehot) ** 2, axis=1)


def _entropy(p: np.ndarray) -> np.ndarray:
    """``-sum_c p_c log p_c`` over the last axis, with ``0 log 0 = 0``."""
    return -np.sum(p * np.log(np.clip(p, EPS, 1.0)), axis=-1) + 0.0  # + 0.0 turns -0.0 into 0.0


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy of each predictive row: ``H[p_n] = -sum_c p_nc log p_nc`` (``0 log 0 = 0``).

    probs: ``[N, C]`` -> ``[N]`` in nats, between 0 and ``log C``.

    >>> predictive_entropy([[0.5, 0.5], [1.0, 0.0]]).round(4).tolist()
    [0.6931, 0.0]
    """
    return _entropy(as_probs(probs))


def mutual_information(samples: Any) -> np.ndarray:
    """Mutual information between the label and the parameters (epistemic uncertainty).

    ``I_n = H[mean_s p_snc] - mean_s H[p_snc]``; 0 when S = 1 or all samples agree, clipped at
    0 to absorb rounding.

    samples: ``[S, N, C]`` -> ``[N]`` in nats.

    >>> mutual_information([[[1.0, 0.0]], [[0.0, 1.0]]]).round(4).tolist()
    [0.6931]
    """
    s = as_samples(samples)
    mi = _entropy(s.mean(axis=0)) - _entropy(s).mean(axis=0)
    return np.maximum(mi, 0.0)
