"""Out-of-distribution detection: how well an uncertainty score separates OOD from test inputs.

OOD inputs are the **positive** class. Every score is "larger = more OOD-like":

- ``max_prob``: ``1 - max_c p_nc`` of the predictive ``p = samples.mean(0)``;
- ``entropy``: predictive entropy ``H[p_n]``;
- ``mutual_info``: mutual information (constant 0 for S = 1, so AUROC 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bayesbench.metrics.classification import as_samples, mutual_information, predictive_entropy

OOD_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": lambda s: 1.0 - s.mean(axis=0).max(axis=1),
    "entropy": lambda s: predictive_entropy(s.mean(axis=0)),
    "mutual_info": mutual_information,
}
"""Score name -> function of ``samples: [S, N, C]`` giving ``[N]`` OOD scores."""


def ood_scores(samples: Any) -> dict[str, np.ndarray]:
    """Every score in :data:`OOD_SCORES` for ``samples: [S, N, C]``, each ``[N]``."""
    s = as_samples(samples)
    return {name: fn(s) for name, fn in OOD_SCORES.items()}


def false_positive_rate_at_tpr(is_ood: Any, scores: Any, tpr_target: float = 0.95) -> float:
    """FPR at the strictest threshold whose TPR reaches ``tpr_target``, without interpolation.

    With thresholds from :func:`sklearn.metrics.roc_curve` (every distinct score, flag
    ``score >= threshold`` as OOD), take the highest threshold at which at least
    ``tpr_target`` of the OOD inputs are flagged, and return the fraction of in-distribution
    inputs flagged there; equivalently the lowest FPR attainable with TPR >= ``tpr_target``.
    The TPR test counts flagged OOD inputs, so that 19 of 20 is exactly 95%.

    is_ood: ``[N]`` 0/1; scores: ``[N]``.

    >>> false_positive_rate_at_tpr([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9])
    0.5
    """
    from sklearn.metrics import roc_curve  # lazy: 0.7 s that `bayesbench report` never needs

    y = np.asarray(is_ood).astype(bool)
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    n_pos = int(y.sum())
    # compare integer counts, not float rates: 19 / 20 must reach 0.95
    flagged = np.rint(tpr * n_pos)
    needed = math.ceil(round(tpr_target * n_pos, 9))
    return float(fpr[np.argmax(flagged >= needed)])


def ood_detection_metrics(in_samples: Any, ood_samples: Any) -> dict[str, float]:
    """AUROC, AUPR (OOD positive) and FPR at 95% TPR for every OOD score.

    in_samples: ``[S, N, C]`` on in-distribution test inputs; ood_samples: ``[S', M, C]`` on
    OOD inputs. Returns ``{"auroc_<score>", "aupr_<score>", "fpr95_<score>"}`` for each score in
    :data:`OOD_SCORES`. A constant score gives AUROC 0.5, AUPR ``M / (N + M)`` and FPR 1.
    """
    s_in, s_ood = as_samples(in_samples), as_samples(ood_samples)
    if s_in.shape[1] == 0 or s_ood.shape[1] == 0:
        raise ValueError("OOD detection needs at least one in-distribution and one OOD input")
    if s_in.shape[2] != s_ood.shape[2]:
        raise ValueError(
            f"in-distribution samples have {s_in.shape[2]} classes, OOD samples {s_ood.shape[2]}"
        )
    return ood_metrics_from_scores(ood_scores(s_in), ood_scores(s_ood))


def ood_metrics_from_scores(scores_in: dict[str, np.ndarray],
                            scores_ood: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics of :func:`ood_detection_metrics` from the scores of :data:`OOD_SCORES`
    (``[N]`` on in-distribution inputs, ``[M]`` on OOD inputs, per score name)."""
    from sklearn.metrics import average_precision_score, roc_auc_score  # lazy, as above

    first = next(iter(OOD_SCORES))
    is_ood = np.concatenate([np.zeros(len(scores_in[first])), np.ones(len(scores_ood[first]))])
    out: dict[str, float] = {}
    for name in OOD_SCORES:
        scores = np.concatenate([scores_in[name], scores_ood[name]])
        out[f"auroc_{name}"] = float(roc_auc_score(is_ood, scores))
        out[f"aupr_{name}"] = float(average_precision_score(is_ood, scores))
        out[f"fpr95_{name}"] = false_positive_rate_at_tpr(is_ood, scores)
    return out
