"""The summary across datasets: mean ranks, win / tie / loss against map, cost ratios and a
one-line verdict per metric.

Inputs are per-seed values of the selected runs (:func:`per_seed_values`). For each summary
metric (:data:`SUMMARY_METRICS`):

* **mean rank** – per dataset, methods are ranked by their mean over seeds (1 = best, ties
  averaged), then the ranks are averaged over the largest complete block of datasets ×
  methods (:func:`~bayesbench.report.stats.complete_block`: a method missing on one dataset
  is not ranked, a dataset where most methods are missing is left out; the report says which);
* **Friedman + Nemenyi** (Demšar 2006) – Friedman's test over the datasets, and the
  critical difference of mean ranks at α = 0.05; the verdict lists the methods whose mean
  rank is within the critical difference of the best one ("not distinguishable");
* **win / tie / loss against map** – per dataset, a paired t-test of the method against
  ``map`` over their shared base seeds, Holm-corrected within each (method, metric) over the
  datasets; a win is a significant difference in the good direction;
* **training cost** – mean ``train_seconds`` over seeds divided by map's on the same dataset,
  pooled over datasets by the geometric mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayesbench.metrics import METRICS
from bayesbench.report.aggregate import OOD_MEAN, SHIFT_MEAN, add_summary_splits
from bayesbench.report.files import markdown_table
from bayesbench.report.stats import (
    ALPHA,
    complete_block,
    detectable_effect,
    friedman_pvalue,
    holm_by,
    min_wilcoxon_p,
    nemenyi_cd,
    paired_t_pvalues,
    rank_matrix,
)
from bayesbench.results import COST_SPLIT, TEST_SPLIT

REFERENCE_LABEL = "map"
SUMMARY_METRICS: list[tuple[str, str, str]] = [
    (TEST_SPLIT, "nll", "NLL"),
    (TEST_SPLIT, "ece", "ECE"),
    (SHIFT_MEAN, "accuracy", "shift accuracy"),
    (SHIFT_MEAN, "ece", "shift ECE"),
    (OOD_MEAN, "auroc_entropy", "OOD AUROC"),
]
COST = (COST_SPLIT, "train_seconds")
DEGENERATE_MARGIN = 0.1
"""A method is degenerate on a dataset when its mean test accuracy is below chance + this
fraction of the way from chance to 1 (8 classes: below 0.2125; 2 classes: below 0.55)."""
_GROUP = ["label", "dataset", "split", "metric"]


def per_seed_values(tidy: pd.DataFrame, full: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (label, method, dataset, seed, split, metric) with its value, derived
    summary splits included (:func:`add_summary_splits`; pass ``full`` when already
    computed); non-finite values dropped."""
    full = add_summary_splits(tidy) if full is None else full
    out = full[["label", "method", "dataset", "seed", "split", "metric", "value"]]
    return out[np.isfinite(out["value"].to_numpy(float))].reset_index(drop=True)


def paired_against(values: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Paired t-tests over shared seeds of every label against a reference label.

    ``values``: per-seed rows (:func:`per_seed_values`); ``reference``: rows of (dataset,
    split, metric, ref_label). Returns one row per (label, dataset, split, metric) other than
    the reference itself: ``n`` (shared seeds), ``diff`` (mean of label − reference over
    them) and ``p`` (two-sided; NaN for n < 2).
    """
    columns = _GROUP + ["ref_label", "n", "diff", "p"]
    if values.empty or reference.empty:
        return pd.DataFrame(columns=columns)
    keyed = values.merge(reference, on=["dataset", "split", "metric"])
    ref = keyed[keyed["label"] == keyed["ref_label"]][
        ["dataset", "split", "metric", "seed", "value"]].rename(columns={"value": "ref_value"})
    other = keyed[keyed["label"] != keyed["ref_label"]]
    pairs = other.merge(ref, on=["dataset", "split", "metric", "seed"])
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    pairs = pairs.assign(d=pairs["value"] - pairs["ref_value"])
    g = pairs.groupby(_GROUP + ["ref_label"], sort=True)["d"].agg(["mean", "std", "count"])
    g = g.reset_index().rename(columns={"mean": "diff", "count": "n"})
    g["p"] = paired_t_pvalues(g["diff"], g["std"].fillna(0.0), g["n"])
    return g[columns]


def _direction(metrics: pd.Series) -> np.ndarray:
    """+1 where higher is better, -1 where lower is better (per metric name)."""
    return np.where(metrics.map(lambda m: METRICS[m].higher_is_better if m in METRICS
                                else False), 1.0, -1.0)


def reference_label(labels) -> str | None:
    """``map`` when there is such a label; None otherwise."""
    return REFERENCE_LABEL if REFERENCE_LABEL in set(labels) else None


@dataclass
class MetricRanking:
    """Ranks of one summary metric over datasets."""

    split: str
    metric: str
    title: str
    datasets: list[str]
    mean_ranks: pd.Series  # label -> mean rank (ranked labels only), ascending
    unranked: list[str]  # labels left out of the complete block (missing on a dataset)
    friedman_stat: float = math.nan
    friedman_p: float = math.nan
    cd: float = math.nan
    left_out: list[str] = field(default_factory=list)  # datasets left out of the block

    @property
    def k(self) -> int:
        return len(self.mean_ranks)

    @property
    def best(self) -> list[str]:
        if self.mean_ranks.empty:
            return []
        top = self.mean_ranks.min()
        return [lab for lab, r in self.mean_ranks.items() if r <= top + 1e-12]

    def indistinguishable(self) -> list[str]:
        """Labels other than the best whose mean rank is within the critical difference of
        the best (Nemenyi); every other label when Friedman's test does not reject."""
        best = self.best
        rest = [lab for lab in self.mean_ranks.index if lab not in best]
        if not best or math.isnan(self.cd):
            return []
        if not (self.friedman_p < ALPHA):
            return rest
        top = self.mean_ranks.min()
        return [lab for lab in rest if self.mean_ranks[lab] - top < self.cd]

    def verdict(self) -> str:
        arrow = METRICS[self.metric].arrow
        name = f"**{self.title}** {arrow}"
        n = len(self.datasets)
        if not self.k:
            return f"{name}: no method has values on every dataset."
        best = ", ".join(f"`{b}`" for b in self.best)
        if len(self.best) == self.k and self.k > 1:
            return (f"{name}: all {self.k} ranked methods tie on every one of the {n} "
                    f"dataset{'s' * (n != 1)} (mean rank {self.mean_ranks.min():.2f}).")
        ranks = f"mean rank {self.mean_ranks.min():.2f} of {self.k} over {n} dataset" \
                f"{'s' * (n != 1)}"
        if n < 2 or self.k < 3:
            return (f"{name}: best: {best} ({ranks}); with fewer than 2 datasets or 3 methods "
                    "there is no test across datasets: see the per-dataset tables.")
        same = self.indistinguishable()
        if not (self.friedman_p < ALPHA):
            test = (f"Friedman p = {self.friedman_p:.2g} ≥ {ALPHA}: no difference between "
                    f"methods is significant across these {n} datasets")
        else:
            test = f"Friedman p = {self.friedman_p:.2g}, Nemenyi CD = {self.cd:.2f}"
        lead = self.best[0]
        worse = [lab for lab in self.mean_ranks.index if lab not in self.best + same]
        if not same:
            others = "none"
        elif not worse:
            others = f"every other method ({len(same)})"
        elif len(same) > max(5, len(worse)):  # a long list: name the shorter one
            others = (f"every other method but {', '.join(f'`{w}`' for w in worse)}, "
                      "which are significantly worse")
        else:
            others = ", ".join(f"`{s}`" for s in same)
        return f"{name}: best: {best} ({ranks}); not distinguishable from `{lead}`: " \
               f"{others} ({test})."


@dataclass
class CrossDatasetSummary:
    """Everything the summary section shows; see the module docstring."""

    labels: list[str]
    datasets: list[str]
    reference: str | None
    rankings: list[MetricRanking] = field(default_factory=list)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)  # vs the reference
    cost_ratio: pd.DataFrame = field(default_factory=pd.DataFrame)  # label × dataset
    seeds: list[int] = field(default_factory=list)
    degenerate: dict[tuple[str, str], float] = field(default_factory=dict)

    def pooled_cost_ratio(self) -> pd.Series:
        """Geometric mean over datasets of each label's train-time ratio to the reference."""
        if self.cost_ratio.empty:
            return pd.Series(dtype=float)
        logs = np.log(self.cost_ratio.where(self.cost_ratio > 0))
        return np.exp(logs.mean(axis=1, skipna=True))

    def wtl(self) -> pd.DataFrame:
        """Per (label, split, metric): wins, ties, losses against the reference and the
        number of datasets without a test (fewer than 2 shared seeds)."""
        c = self.comparisons
        if c.empty:
            return pd.DataFrame(columns=["label", "split", "metric", "win", "tie", "loss",
                                         "untested"])
        counts = (c.assign(one=1).pivot_table(index=["label", "split", "metric"],
                                              columns="outcome", values="one", aggfunc="sum",
                                              fill_value=0))
        for col in ("win", "tie", "loss", "untested"):
            if col not in counts.columns:
                counts[col] = 0
        return counts[["win", "tie", "loss", "untested"]].reset_index()

    def order(self) -> list[str]:
        """Labels by their average mean rank over the summary metrics (unranked last)."""
        ranks = pd.DataFrame({f"{r.split}/{r.metric}": r.mean_ranks for r in self.rankings})
        avg = ranks.reindex(self.labels).mean(axis=1)
        return sorted(self.labels, key=lambda lab: (math.isnan(avg[lab]), avg[lab], lab))

    def markdown(self) -> list[str]:
        ref = self.reference
        wtl = self.wtl().set_index(["label", "split", "metric"]) if ref else None
        pooled = self.pooled_cost_ratio()
        rankings = [r for r in self.rankings if r.k]
        headers = ["method"] + [f"{r.title} {METRICS[r.metric].arrow}" for r in rankings]
        if ref:
            headers.append(f"train time × {ref}")
        rows = []
        for lab in self.order():
            row = [lab]
            for r in rankings:
                rank = r.mean_ranks.get(lab, math.nan)
                cell = "–" if math.isnan(rank) else f"{rank:.2f}"
                if lab in r.best:
                    cell = f"**{cell}**"
                if ref and lab != ref and wtl is not None \
                        and (lab, r.split, r.metric) in wtl.index:
                    w = wtl.loc[(lab, r.split, r.metric)]
                    tested = int(w["win"]) + int(w["tie"]) + int(w["loss"])
                    if not tested:
                        cell += " · n/a"
                    else:
                        cell += f" · {int(w['win'])}/{int(w['tie'])}/{int(w['loss'])}"
                        if int(w["untested"]):
                            cell += f" ({int(w['untested'])} n/a)"
                elif ref and lab == ref:
                    cell += " · ref"
                row.append(cell)
            if ref:
                ratio = pooled.get(lab, math.nan)
                row.append("–" if math.isnan(ratio) else f"{ratio:.2f}×")
            rows.append(row)
        n_seeds = len(self.seeds)
        out = ["## Summary across datasets", ""]
        if not rankings:
            return out + ["No summary metric has values for every method on any dataset.", ""]
        out += [
            f"{len(self.labels)} method labels on {len(self.datasets)} dataset"
            f"{'s' * (len(self.datasets) != 1)} ({', '.join(self.datasets)}). Each cell: the "
            "mean rank over datasets (1 = best; per dataset, methods ranked by their mean over "
            "seeds, ties averaged; **bold**: best)"
            + (f" · wins/ties/losses against `{ref}` over datasets (n/a: fewer than 2 seeds "
               "shared with it, no test)." if ref else "."),
            "",
            markdown_table(headers, rows),
            "",
        ]
        if ref:
            out += [
                f"Against `{ref}`: a paired t-test over the base seeds both methods share on a "
                f"dataset (same seed = same data split), two-sided, Holm-corrected within each "
                f"method and metric over the datasets, α = {ALPHA}; a win or loss is a "
                "significant difference (direction-aware), a tie is none. Why a t-test: with "
                f"{n_seeds} seed{'s' * (n_seeds != 1)} the exact Wilcoxon signed-rank test "
                f"cannot reach p < {ALPHA} (its smallest two-sided p with 3 pairs is "
                f"{min_wilcoxon_p(3):.2f}), so the t-test (which assumes roughly normal seed "
                "differences) is the only one with any power; more seeds would let a "
                f"rank test decide. {power_sentence(n_seeds)} Train time × "
                f"{ref}: mean training seconds over seeds divided by {ref}'s on the same "
                "dataset, geometric mean over datasets.",
                "",
            ]
        if self.degenerate:
            listed = "; ".join(f"`{lab}` on {d} (accuracy {acc:.3f})"
                               for (d, lab), acc in sorted(self.degenerate.items()))
            out += [f"Not above chance (test accuracy below chance + {DEGENERATE_MARGIN:g} of "
                    f"the way to 1), so left out of every ranking and best mark: {listed}.",
                    ""]
        gaps = [r for r in rankings if r.unranked or r.left_out]
        if gaps:
            out += ["Left out of a ranking so that every ranked method has a value on every "
                    "ranked dataset (Friedman's test needs complete blocks; whichever of a "
                    "method or a dataset loses fewer values goes):", ""]
            same = len(gaps) == len(rankings) and len(
                {(tuple(r.unranked), tuple(r.left_out)) for r in gaps}) == 1
            for r in gaps[:1] if same else gaps:
                parts = []
                if r.unranked:
                    parts.append("methods " + ", ".join(f"`{u}`" for u in r.unranked))
                if r.left_out:
                    parts.append("datasets " + ", ".join(r.left_out))
                title = "every metric" if same else r.title
                out.append(f"- {title}: {'; '.join(parts)} (ranked: {r.k} methods on "
                           f"{len(r.datasets)} dataset{'s' * (len(r.datasets) != 1)}).")
            out.append("")
        out += ["**Verdicts** (best by mean rank; \"not distinguishable\" by Friedman's test "
                "and the Nemenyi critical difference over datasets, Demšar 2006, α = "
                f"{ALPHA}):", ""]
        out += [f"- {r.verdict()}" for r in self.rankings]
        out.append("")
        return out


def power_sentence(n_seeds: int) -> str:
    """How large a difference the paired t-test over ``n_seeds`` seeds detects with 80 %
    power, in standard deviations of the per-seed difference, beside 5 and 10 seeds."""
    if n_seeds < 2:
        return "With one seed no paired test is possible."
    others = [n for n in (5, 10) if n > n_seeds]
    more = "; ".join(f"{n} seeds: {detectable_effect(n):.1f}" for n in others)
    return (f"With {n_seeds} seeds it has 80 % power only for a true difference of "
            f"{detectable_effect(n_seeds):.1f} standard deviations of the per-seed difference"
            + (f" ({more})." if more else "."))


def _outcome(comparisons: pd.DataFrame) -> pd.DataFrame:
    c = comparisons.copy()
    if c.empty:
        c["p_holm"] = pd.Series(dtype=float)
        c["outcome"] = pd.Series(dtype=str)
        return c
    c["p_holm"] = holm_by(c, ["label", "split", "metric"], "p")
    better = c["diff"].to_numpy(float) * _direction(c["metric"])
    sig = c["p_holm"].to_numpy(float) < ALPHA
    c["outcome"] = np.select([c["p"].isna(), sig & (better > 0), sig & (better < 0)],
                             ["untested", "win", "loss"], "tie")
    return c


def rank_metric(means: pd.DataFrame, split: str, metric: str, title: str) -> MetricRanking:
    """Mean ranks, Friedman and Nemenyi CD of one metric; ``means`` holds (label, dataset,
    split, metric, mean) rows."""
    sub = means[(means["split"] == split) & (means["metric"] == metric)]
    matrix = sub.pivot_table(index="dataset", columns="label", values="mean", aggfunc="first")
    matrix = matrix.dropna(how="all")
    complete = complete_block(matrix)
    unranked = sorted(set(matrix.columns) - set(complete.columns))
    left_out = sorted(set(matrix.index) - set(complete.index))
    datasets = list(complete.index)
    if complete.empty:
        return MetricRanking(split, metric, title, datasets, pd.Series(dtype=float), unranked,
                             left_out=left_out)
    ranks = rank_matrix(complete, METRICS[metric].higher_is_better)
    mean_ranks = ranks.mean(axis=0).sort_values(kind="stable")
    stat, p = friedman_pvalue(complete)
    cd = nemenyi_cd(complete.shape[1], complete.shape[0])
    return MetricRanking(split, metric, title, datasets, mean_ranks, unranked, stat, p, cd,
                         left_out)


def cross_dataset_summary(values: pd.DataFrame,
                          metrics: list[tuple[str, str, str]] | None = None,
                          degenerate: dict[tuple[str, str], float] | None = None
                          ) -> CrossDatasetSummary:
    """The summary of per-seed ``values`` (:func:`per_seed_values`) of the selected runs;
    ``degenerate`` (dataset, label) pairs (:func:`degenerate_pairs`) are left out of the
    rankings (see :func:`rank_metric` for what a missing value leaves out)."""
    metrics = SUMMARY_METRICS if metrics is None else metrics
    labels = sorted(values["label"].unique())
    datasets = sorted(values["dataset"].unique())
    wanted = pd.MultiIndex.from_tuples([(s, m) for s, m, _ in metrics] + [COST],
                                       names=["split", "metric"])
    sub = values[pd.MultiIndex.from_frame(values[["split", "metric"]]).isin(wanted)]
    means = sub.groupby(_GROUP, sort=True)["value"].mean().rename("mean").reset_index()
    ranked = means
    if degenerate:
        bad = pd.MultiIndex.from_tuples(list(degenerate))
        ranked = means[~pd.MultiIndex.from_frame(means[["dataset", "label"]]).isin(bad)]
    rankings = [rank_metric(ranked, s, m, t) for s, m, t in metrics]
    ref = reference_label(labels)
    comparisons = pd.DataFrame()
    cost = pd.DataFrame()
    if ref:
        quality = sub[~((sub["split"] == COST[0]) & (sub["metric"] == COST[1]))]
        reference = quality[["dataset", "split", "metric"]].drop_duplicates().assign(
            ref_label=ref)
        comparisons = _outcome(paired_against(quality, reference))
        train = means[(means["split"] == COST[0]) & (means["metric"] == COST[1])]
        train = train.pivot_table(index="label", columns="dataset", values="mean",
                                  aggfunc="first")
        if ref in train.index:
            cost = train.div(train.loc[ref], axis=1)
    return CrossDatasetSummary(labels, datasets, ref, rankings, comparisons, cost,
                               sorted(int(s) for s in values["seed"].unique()),
                               dict(degenerate or {}))


def not_worse_than_best(agg: pd.DataFrame, values: pd.DataFrame,
                        columns: list[tuple[str, str, str]],
                        exclude: set[tuple[str, str]] | None = None
                        ) -> set[tuple[str, str, str, str]]:
    """(dataset, label, split, metric) of every value that is not significantly worse than
    the best mean of its (dataset, split, metric): a two-sided paired t-test over the shared
    seeds against the best label gives p ≥ α (uncorrected, so the marks err towards "not
    distinguishable"). Fewer than 2 shared seeds: no test, no mark. ``exclude``: (dataset,
    label) pairs that are never the best nor marked (degenerate methods)."""
    wanted = [(s, m) for s, m, _ in columns if m in METRICS]
    keep = (pd.MultiIndex.from_arrays([agg["split"], agg["metric"]]).isin(wanted)
            & np.isfinite(agg["mean"].to_numpy(float)))
    if exclude:
        keep &= ~pd.MultiIndex.from_arrays([agg["dataset"], agg["label"]]).isin(list(exclude))
    sub = agg[keep]
    if sub.empty:
        return set()
    sub = sub.assign(score=sub["mean"].to_numpy(float) * _direction(sub["metric"]))
    best = sub.loc[sub.groupby(["dataset", "split", "metric"], sort=False)["score"].idxmax()]
    reference = best[["dataset", "split", "metric", "label"]].rename(
        columns={"label": "ref_label"})
    comp = paired_against(values, reference)
    tied = comp[comp["p"] >= ALPHA]
    out = set(zip(tied["dataset"], tied["label"], tied["split"], tied["metric"]))
    return {t for t in out if (t[0], t[1]) not in (exclude or set())}


def chance_levels(runs) -> dict[str, float]:
    """Per dataset, chance accuracy 1 / C, with C from the runs' ``spec["task"]``
    (``num_classes``, else the length of ``class_names``); datasets whose runs record
    neither are left out (and never flagged)."""
    out: dict[str, float] = {}
    for run in runs:
        if run.dataset in out:
            continue
        task = (run.spec or {}).get("task") or {}
        c = task.get("num_classes") or len(task.get("class_names") or [])
        if isinstance(c, int) and c >= 2:
            out[run.dataset] = 1.0 / c
    return out


def degenerate_pairs(agg: pd.DataFrame, chance: dict[str, float]) -> dict[tuple[str, str], float]:
    """(dataset, label) -> mean test accuracy, for every method not above chance on a dataset
    (:data:`DEGENERATE_MARGIN`): such a method is never marked best nor ranked."""
    acc = agg[(agg["split"] == TEST_SPLIT) & (agg["metric"] == "accuracy")]
    floor = acc["dataset"].map(lambda d: chance.get(d, math.nan))
    floor = floor + DEGENERATE_MARGIN * (1 - floor)
    low = acc[acc["mean"] < floor]
    return {(d, lab): float(m) for d, lab, m in zip(low["dataset"], low["label"], low["mean"])}
