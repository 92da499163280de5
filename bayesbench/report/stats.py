"""The statistics behind the report and the gate: paired tests over seeds, Holm's correction,
mean ranks over datasets, Friedman's test and the Nemenyi critical difference (Demšar 2006).

Why a paired t-test over seeds: runs of two methods with the same base seed share the data
split (and the seed-derived parts of the data), so their difference per seed is the paired
quantity. With the 3 seeds of the default suite the paired t-test is the only common test with
any power: the exact Wilcoxon signed-rank test cannot give a two-sided p below
``2 / 2**n = 0.25`` for ``n = 3`` (:func:`min_wilcoxon_p`), whatever the data.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


def paired_t_pvalues(diff_mean: np.ndarray, diff_std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p-values of the paired t-test from the per-pair differences' mean, sample
    std (ddof = 1) and count, vectorised: ``t = mean / (std / sqrt(n))`` on ``n - 1`` degrees
    of freedom (the same as :func:`scipy.stats.ttest_rel`).

    Conventions where scipy gives NaN: ``n < 2`` → NaN (no test); zero std with zero mean →
    1 (no difference at all); zero std with a non-zero mean → 0 (the same difference on every
    seed).
    """
    diff_mean = np.asarray(diff_mean, dtype=float)
    diff_std = np.asarray(diff_std, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff_mean / (diff_std / np.sqrt(n))
        p = 2.0 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1))
    scale = np.maximum(1.0, np.abs(diff_mean))
    zero_std = diff_std <= 1e-12 * scale
    p = np.where(zero_std, np.where(np.abs(diff_mean) <= 1e-12 * scale, 1.0, 0.0), p)
    return np.where(n < 2, np.nan, p)


def paired_t_pvalue(a, b) -> float:
    """Two-sided paired t-test p-value of samples ``a`` and ``b`` (same order, e.g. seeds)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan
    return float(paired_t_pvalues(d.mean(), d.std(ddof=1), len(d)))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count in the family):
    sorted ascending, ``p_(i) * (m - i + 1)``, made monotone by a running maximum, capped at 1.
    Reject at level α where the adjusted p-value is below α."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    values = np.empty(m)
    values[order] = adjusted
    out[ok] = values
    return out


def holm_by(frame: pd.DataFrame, by: list[str], column: str = "p") -> pd.Series:
    """:func:`holm` of ``frame[column]`` within each group of ``by`` (index-aligned)."""
    if frame.empty:
        return pd.Series(dtype=float, index=frame.index)
    return frame.groupby(by, sort=False, dropna=False)[column].transform(
        lambda s: pd.Series(holm(s.to_numpy()), index=s.index))


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n``
    pairs: every difference of one sign, ``2 / 2**n`` (0.25 for n = 3)."""
    return float(stats.wilcoxon(np.arange(1.0, n + 1)).pvalue)


def rank_matrix(values: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Ranks within each row (a dataset) of ``values`` (datasets × methods), 1 = best, ties
    get the average rank (as in Demšar 2006)."""
    signed = -values.to_numpy(float) if higher_is_better else values.to_numpy(float)
    ranks = stats.rankdata(signed, axis=1, method="average")
    return pd.DataFrame(ranks, index=values.index, columns=values.columns)


def complete_block(values: pd.DataFrame) -> pd.DataFrame:
    """The largest complete block of ``values`` (datasets × methods, NaN where a method has no
    value on a dataset) that Friedman's test and mean ranks can use, found greedily: while a
    cell is missing, drop the dataset or the method whose removal loses the fewest present
    values (a method on a tie: datasets are the test's blocks). One method missing on one
    dataset thus drops that method, and a dataset on which most methods are missing (a quick
    budget that leaves them at chance) drops that dataset instead of most methods."""
    block = values.dropna(how="all").dropna(axis=1, how="all")
    while block.size and block.isna().to_numpy().any():
        missing = block.isna()
        method_loss = block.shape[0] - missing.sum(axis=0)  # present cells of each method
        dataset_loss = block.shape[1] - missing.sum(axis=1)
        method_loss = method_loss[missing.any(axis=0)]
        dataset_loss = dataset_loss[missing.any(axis=1)]
        if dataset_loss.min() < method_loss.min():
            block = block.drop(index=dataset_loss.idxmin())
        else:
            block = block.drop(columns=method_loss.idxmin())
    return block


def friedman_pvalue(values: pd.DataFrame) -> tuple[float, float]:
    """Friedman's χ² statistic and p-value over the rows (datasets) of ``values`` (datasets ×
    methods; :func:`scipy.stats.friedmanchisquare`); NaN with fewer than 3 methods or 2
    datasets. All methods tied on every dataset → (0, 1)."""
    k, n = values.shape[1], values.shape[0]
    if k < 3 or n < 2:
        return math.nan, math.nan
    arr = values.to_numpy(float)
    if np.all(arr == arr[:, :1]):
        return 0.0, 1.0
    res = stats.friedmanchisquare(*arr.T)
    return float(res.statistic), float(res.pvalue)


@lru_cache(maxsize=256)
def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's (2006) ``q_α`` for ``k`` methods: the studentized range statistic's upper α
    quantile for ``k`` groups and infinite degrees of freedom, divided by √2 (Table 5:
    k = 2 → 1.960, 4 → 2.569, 10 → 3.164 at α = 0.05)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n_datasets: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of mean ranks, ``q_α √(k (k + 1) / (6 N))``: two methods
    whose mean ranks over ``N`` datasets differ by at least this differ significantly."""
    if k < 2 or n_datasets < 1:
        return math.nan
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_datasets))


def paired_t_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs against a true standardised
    difference ``effect`` = mean / std of the per-pair differences: with ``t_c`` the
    ``1 − α/2`` quantile of t on ``n − 1`` df and ``λ = effect √n``,
    ``P(T > t_c) + P(T < −t_c)`` for T noncentral t(n − 1, λ)."""
    if n < 2:
        return math.nan
    df, nc = n - 1, effect * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    return upper + (0.0 if math.isnan(lower) else lower)  # scipy: NaN far in the lower tail


def detectable_effect(n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest standardised difference (mean / std of the per-seed differences) that the
    two-sided paired t-test over ``n`` seeds detects with probability ``power``."""
    if n < 2:
        return math.inf
    from scipy.optimize import brentq

    high = 1.0
    while paired_t_power(high, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_t_power(d, n, alpha) - power, 1e-6, high))
