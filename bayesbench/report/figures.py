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
from typing import TYPE_CHECKING

import numpy as np

from bayesbench.report.render import FigureJob
from bayesbench.results import RunResult

if TYPE_CHECKING:
    import pandas as pd


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
    return pool_reliability_stats(run.reliability for run in runs)


def pool_reliability_stats(stats: Iterable[dict | None]) -> PooledReliability | None:
    """:func:`pool_reliability` of the runs' ``reliability`` records themselves."""
    pooled: PooledReliability | None = None
    skipped = 0
    for rel in stats:
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
    return reliability_stats_png(dataset, _reliability_stats(runs_by_label))


def _reliability_stats(runs_by_label: dict[str, Sequence[RunResult]]
                       ) -> dict[str, list[dict | None]]:
    return {label: [run.reliability for run in runs] for label, runs in runs_by_label.items()}


def reliability_figure(name: str, dataset: str,
                       runs_by_label: dict[str, Sequence[RunResult]]) -> FigureJob:
    """The report's job for :func:`reliability_png`: its input is the runs' reliability
    records only, so a change elsewhere in a run does not re-render the figure."""
    return FigureJob(name, reliability_stats_png, (dataset, _reliability_stats(runs_by_label)))


def reliability_stats_png(dataset: str, stats_by_label: dict[str, Sequence[dict | None]]
                          ) -> bytes:
    """:func:`reliability_png` from each label's runs' ``reliability`` records."""
    from matplotlib.figure import Figure  # lazy: keeps `import bayesbench` light; Agg canvas

    labels = list(stats_by_label)
    ncols = min(4, max(1, len(labels)))
    nrows = math.ceil(max(1, len(labels)) / ncols)
    width, height = max(3.2 * ncols, 5.0), 3.3 * nrows  # 5 in: room for the suptitle
    fig = Figure(figsize=(width, height))
    # explicit margins in inches (constrained layout was half of the drawing time): the
    # y label and ticks on the left, x label and ticks below, the suptitle above, and
    # between rows each panel's two-line title (inner tick labels are shared and hidden)
    cell = (height - 0.55 - 0.75) / nrows
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True, gridspec_kw={
        "left": 0.6 / width, "right": 1 - 0.1 / width, "bottom": 0.55 / height,
        "top": 1 - 0.75 / height, "wspace": 0.1, "hspace": 0.5 / (cell - 0.5)})
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, label in zip(axes.flat, labels):
        pooled = pool_reliability_stats(stats_by_label[label])
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
    for column in axes.T:  # the lowest drawn panel of each column (above an unused cell too)
        lowest = [ax for ax in column if ax.get_visible()][-1]
        lowest.set_xlabel("confidence")
        lowest.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Reliability on {dataset} (test split, pooled over seeds)", fontsize=10,
                 y=1 - 0.1 / height, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def cd_cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs ``(i, j)`` (indices into the ascending ``ranks``, ``i < j``) whose mean
    ranks lie within less than ``cd`` of each other: the groups a critical-difference diagram
    joins by a bar (no two members differ significantly)."""
    out: list[tuple[int, int]] = []
    for i in range(len(ranks)):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out


def cd_diagram_png(rankings: Sequence) -> bytes:
    """PNG of one critical-difference diagram (Demšar 2006) per ranked metric: methods on an
    axis of mean rank (1 = best, left), a bar of length CD, and thick lines joining methods
    whose mean ranks differ by less than CD (Nemenyi, α = 0.05). When Friedman's test does not
    reject, one line joins every method. ``rankings``: :class:`~bayesbench.report.summary.
    MetricRanking` objects."""
    from matplotlib.figure import Figure

    from bayesbench.metrics import METRICS

    shown = [r for r in rankings if r.k >= 2]
    if not shown:
        fig = Figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, "no metric has at least 2 ranked methods", ha="center")
        return _png(fig)
    heights = [1.2 + 0.28 * math.ceil(r.k / 2) for r in shown]
    # explicit margins: constrained layout costs seconds with this many text artists
    fig = Figure(figsize=(9, sum(heights)))
    axes = fig.subplots(len(shown), 1, squeeze=False, height_ratios=heights,
                        gridspec_kw={"left": 0.01, "right": 0.99, "top": 0.97,
                                     "bottom": 0.01, "hspace": 0.3})[:, 0]
    for ax, r in zip(axes, shown):
        names = list(r.mean_ranks.index)
        ranks = [float(v) for v in r.mean_ranks.to_numpy()]
        k = len(ranks)
        half = math.ceil(k / 2)
        step = 1.0
        # the rank axis takes the middle ~40% of the width; labels get the margins
        margin = max(2.0, 0.8 * (k - 1))
        ax.set_xlim(1 - margin, k + margin)
        ax.set_ylim(-(half + 1) * step, 1.6)
        ax.axis("off")
        ax.hlines(0, 1, k, color="black", linewidth=1)
        for t in range(1, k + 1):
            ax.vlines(t, 0, 0.15, color="black", linewidth=1)
            ax.text(t, 0.25, str(t), ha="center", va="bottom", fontsize=7)
        for i, (name, rank) in enumerate(zip(names, ranks)):
            if i < half:
                y, x_end, ha = -(i + 1) * step, 1 - 0.05 * margin, "right"
            else:
                y, x_end, ha = -(k - i) * step, k + 0.05 * margin, "left"
            ax.plot([rank, rank, x_end], [0, y, y], color="black", linewidth=0.8)
            ax.text(x_end + (-0.02 if ha == "right" else 0.02) * margin, y,
                    f"{name} ({rank:.2f})",
                    ha=ha, va="center", fontsize=7)
        significant = r.friedman_p < 0.05 and not math.isnan(r.cd)
        cliques = cd_cliques(ranks, r.cd) if significant else [(0, k - 1)]
        for j, (a, b) in enumerate(cliques):
            y = -0.2 - 0.6 * step * (j + 0.5) / max(1, len(cliques))
            ax.hlines(y, ranks[a] - 0.03, ranks[b] + 0.03, color="tab:red", linewidth=2)
        if not math.isnan(r.cd):
            ax.hlines(1.1, 1, 1 + r.cd, color="black", linewidth=1.5)
            ax.text(1 + r.cd / 2, 1.2, f"CD = {r.cd:.2f}", ha="center", va="bottom", fontsize=7)
        test = (f"Friedman p = {r.friedman_p:.2g}" if not math.isnan(r.friedman_p)
                else "no Friedman test (fewer than 3 methods or 2 datasets)")
        ax.set_title(f"{r.title} {METRICS[r.metric].arrow}: mean rank over {len(r.datasets)} "
                     f"datasets; {test}", fontsize=9, loc="left")
    return _png(fig)


def cost_quality_png(points: pd.DataFrame, reference: str) -> bytes:
    """PNG of training time as a ratio to ``reference`` (x, log scale) against test NLL and
    test ECE (y), one point per method label, one row of panels per dataset. ``points`` has
    columns dataset, label, ratio, nll, ece (means over seeds)."""
    from matplotlib.figure import Figure

    datasets = sorted(points["dataset"].unique())
    metrics = [m for m in ("nll", "ece") if m in points.columns]
    rows = max(1, len(datasets))
    fig = Figure(figsize=(5.0 * len(metrics), 3.6 * rows))
    axes = fig.subplots(rows, len(metrics), squeeze=False,
                        gridspec_kw={"left": 0.1, "right": 0.97, "bottom": 0.5 / (3.6 * rows),
                                     "top": 1 - 0.75 / (3.6 * rows), "hspace": 0.45,
                                     "wspace": 0.25})
    for i, dataset in enumerate(datasets):
        part = points[points["dataset"] == dataset]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            ok = part[np.isfinite(part["ratio"]) & np.isfinite(part[metric]) & (part["ratio"] > 0)]
            ax.scatter(ok["ratio"], ok[metric], s=18,
                       c=["tab:red" if lab == reference else "tab:blue" for lab in ok["label"]])
            for row in ok.itertuples(index=False):
                ax.annotate(row.label, (row.ratio, getattr(row, metric)), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
            ax.set_xscale("log")
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel(f"train time / {reference} (log)")
            ax.set_ylabel(f"test {metric.upper()} ↓")
            ax.set_title(f"{dataset}: {metric.upper()} against cost", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Cost and quality (means over seeds; lower left is better; red: "
                 f"{reference})", fontsize=10)
    return _png(fig)
