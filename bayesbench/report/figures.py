"""Reliability diagrams from the stored per-bin statistics (no re-running).

Each run stores, for its test split and ``n_bins`` equal-width confidence bins, ``counts[b]``,
``confidence_sum[b]`` and ``correct_sum[b]``. Pooling over seeds sums them bin-wise; the
diagram shows accuracy ``correct_sum[b] / counts[b]`` per bin against the diagonal, and the
pooled ECE ``sum_b |correct_sum[b] - confidence_sum[b]| / sum_b counts[b]``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bayesbench.results import RunResult


@dataclass
class PooledReliability:
    """Bin statistics summed over runs; arrays have shape ``[n_bins]``."""

    n_bins: int
    counts: np.ndarray
    confidence_sum: np.ndarray
    correct_sum: np.ndarray
    n_runs: int
    skipped_runs: int = 0  # runs without statistics or with another bin count

    @property
    def accuracy(self) -> np.ndarray:
        """Per-bin accuracy; NaN for empty bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.correct_sum / self.counts, np.nan)

    @property
    def confidence(self) -> np.ndarray:
        """Per-bin mean confidence; NaN for empty bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.confidence_sum / self.counts, np.nan)

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total <= 0:
            return math.nan
        return float(np.abs(self.correct_sum - self.confidence_sum).sum() / total)


def pool_reliability(runs: Iterable[RunResult]) -> PooledReliability | None:
    """Sum the runs' reliability statistics bin-wise; None when no run has any.

    Runs whose bin count differs from the first run's are skipped (and counted).
    """
    pooled: PooledReliability | None = None
    skipped = 0
    for run in runs:
        rel = run.reliability
        if not rel or not rel.get("counts"):
            skipped += 1
            continue
        n_bins = int(rel.get("n_bins", len(rel["counts"])))
        arrays = [np.asarray(rel[k], dtype=float) for k in
                  ("counts", "confidence_sum", "correct_sum")]
        if any(a.shape != (n_bins,) for a in arrays):
            skipped += 1
            continue
        if pooled is None:
            pooled = PooledReliability(n_bins, *[a.copy() for a in arrays], n_runs=1)
        elif n_bins != pooled.n_bins:
            skipped += 1
        else:
            pooled.counts += arrays[0]
            pooled.confidence_sum += arrays[1]
            pooled.correct_sum += arrays[2]
            pooled.n_runs += 1
    if pooled is not None:
        pooled.skipped_runs = skipped
    return pooled


def reliability_png(dataset: str, runs_by_label: dict[str, Sequence[RunResult]]) -> bytes:
    """PNG bytes of one reliability panel per method label (runs pooled over seeds)."""
    from matplotlib.figure import Figure  # lazy: keeps `import bayesbench` light; Agg canvas

    labels = list(runs_by_label)
    ncols = min(4, max(1, len(labels)))
    nrows = math.ceil(max(1, len(labels)) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, label in zip(axes.flat, labels):
        pooled = pool_reliability(runs_by_label[label])
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        if pooled is None:
            ax.set_title(f"{label}\n(no reliability data)", fontsize=9)
            continue
        width = 1.0 / pooled.n_bins
        centres = (np.arange(pooled.n_bins) + 0.5) * width
        acc = pooled.accuracy
        filled = pooled.counts > 0
        ax.bar(centres[filled], acc[filled], width=width, edgecolor="black", linewidth=0.5,
               color="tab:blue", alpha=0.8, label="accuracy")
        ax.plot(pooled.confidence[filled], acc[filled], "o", color="tab:red", markersize=3,
                label="(confidence, accuracy)")
        note = f"ECE {pooled.ece:.3f}, {pooled.n_runs} seed(s), n={int(pooled.counts.sum())}"
        if pooled.skipped_runs:
            note += f", {pooled.skipped_runs} skipped"
        ax.set_title(f"{label}\n{note}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Reliability on {dataset} (test split, pooled over seeds)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
