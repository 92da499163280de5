"""The report's statistics against reference values: scipy's own tests, Holm by hand, and
Demšar (2006)'s Table 5 critical values and worked example."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayesbench.report.stats import (
    complete_block,
    friedman_pvalue,
    holm,
    holm_by,
    min_wilcoxon_p,
    nemenyi_cd,
    nemenyi_q,
    paired_t_pvalue,
    paired_t_pvalues,
    rank_matrix,
)


def test_paired_t_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
        assert paired_t_pvalue(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    # vectorised form from (mean, std, n) of the differences
    d = [np.array([0.1, 0.07, 0.04]), np.array([0.08, 0.09, 0.10])]
    p = paired_t_pvalues([x.mean() for x in d], [x.std(ddof=1) for x in d], [3, 3])
    ref = [stats.ttest_1samp(x, 0.0).pvalue for x in d]
    assert p == pytest.approx(ref, rel=1e-10)
    # hand-worked: t = 0.07 / (0.03 / sqrt 3) = 4.041 on 2 df -> p = 0.0561
    assert p[0] == pytest.approx(0.0561, abs=5e-4)


def test_paired_t_conventions_where_scipy_gives_nan():
    assert math.isnan(paired_t_pvalue([1.0], [0.0]))  # one pair: no test
    assert paired_t_pvalue([1, 2, 3], [1, 2, 3]) == 1.0  # no difference at all
    assert paired_t_pvalue([1, 2, 3], [0, 1, 2]) == 0.0  # the same difference every seed
    assert paired_t_pvalue([1, 2, math.nan], [0, 1.5, 2]) == pytest.approx(
        stats.ttest_rel([1, 2], [0, 1.5]).pvalue)  # non-finite pairs dropped


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, math.nan, 0.02])  # NaN is not a member of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    frame = pd.DataFrame({"g": ["a", "a", "b"], "p": [0.01, 0.02, 0.01]})
    assert holm_by(frame, ["g"]).tolist() == pytest.approx([0.02, 0.02, 0.01])


def test_wilcoxon_cannot_reach_significance_with_three_seeds():
    """The reason the report uses a t-test: the best exact Wilcoxon p with 3 pairs is 1/4."""
    assert min_wilcoxon_p(3) == pytest.approx(0.25)
    assert min_wilcoxon_p(6) == pytest.approx(2 / 2**6)


def test_nemenyi_critical_values_match_demsar_table_5():
    table5 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031,
              9: 3.102, 10: 3.164}
    for k, q in table5.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=2e-3)
    assert nemenyi_q(4, alpha=0.10) == pytest.approx(2.291, abs=2e-3)  # Table 5, α = 0.10
    # Demšar's example: 4 methods on 14 datasets, CD = 2.569 sqrt(4·5 / (6·14)) = 1.25
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)


def test_ranks_and_friedman_against_demsar_formula():
    """Average ranks with ties, and Friedman's χ² = 12N / (k(k+1)) [Σ R_j² − k(k+1)²/4]
    (Demšar 2006, eq. 1) on a matrix without ties, against scipy."""
    values = pd.DataFrame([[0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.4, 0.3], [0.1, 0.3, 0.2, 0.4],
                           [0.3, 0.1, 0.2, 0.4], [0.1, 0.2, 0.4, 0.3]],
                          columns=list("abcd"))
    ranks = rank_matrix(values, higher_is_better=False)
    assert ranks.iloc[0].tolist() == [1, 2, 3, 4]
    assert rank_matrix(values, higher_is_better=True).iloc[0].tolist() == [4, 3, 2, 1]
    tied = rank_matrix(pd.DataFrame([[0.5, 0.5, 0.1]]), higher_is_better=False)
    assert tied.iloc[0].tolist() == [2.5, 2.5, 1.0]
    n, k = values.shape
    r = ranks.mean(axis=0).to_numpy()
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)
    stat, p = friedman_pvalue(values)
    assert stat == pytest.approx(chi2)
    assert p == pytest.approx(stats.chi2.sf(chi2, k - 1))
    # Demšar's worked example through the formula: mean ranks 3.143, 2.000, 2.893, 1.964 of
    # 4 methods on 14 datasets give χ²_F = 9.28
    demsar = np.array([3.143, 2.000, 2.893, 1.964])
    assert 12 * 14 / 20 * (np.sum(demsar**2) - 4 * 25 / 4) == pytest.approx(9.28, abs=0.01)
    assert friedman_pvalue(values.iloc[:, :2]) == (pytest.approx(math.nan, nan_ok=True),) * 2
    assert friedman_pvalue(pd.DataFrame([[1, 1, 1], [2, 2, 2]])) == (0.0, 1.0)


def test_complete_block_drops_whichever_loses_fewer_values():
    """One method missing on one dataset: that method goes (3 values lost, not 4); a dataset
    on which 3 of 5 methods are missing: that dataset goes (2 values lost, not 9); a full
    matrix and an empty one come back as they are."""
    nan = math.nan
    values = pd.DataFrame(np.arange(20.0).reshape(4, 5), index=list("wxyz"),
                          columns=list("abcde"))
    one = values.copy()
    one.loc["x", "c"] = nan
    block = complete_block(one)
    assert list(block.columns) == list("abde") and list(block.index) == list("wxyz")
    many = values.copy()
    many.loc["y", ["a", "b", "d"]] = nan
    block = complete_block(many)
    assert list(block.columns) == list("abcde") and list(block.index) == list("wxz")
    both = many.copy()
    both.loc["w", "e"] = nan  # then e goes too: 3 values left on it against 4 on w
    block = complete_block(both)
    assert list(block.columns) == list("abcd") and list(block.index) == list("wxz")
    assert not block.isna().to_numpy().any()
    pd.testing.assert_frame_equal(complete_block(values), values)
    assert complete_block(pd.DataFrame([[nan, nan]], columns=list("ab"))).empty


def test_power_of_the_paired_t_test_against_reference_values():
    """Effect sizes the two-sided paired t-test detects with 80 % power at α = 0.05: the
    textbook values (G*Power / Cohen) d = 0.99 for 10 pairs and 0.66 for 20, and a Monte
    Carlo check of the power at the 3-seed value."""
    from bayesbench.report.stats import detectable_effect, paired_t_power

    assert detectable_effect(10) == pytest.approx(0.99, abs=0.01)
    assert detectable_effect(20) == pytest.approx(0.66, abs=0.01)
    d3 = detectable_effect(3)
    assert paired_t_power(d3, 3) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(1)
    diffs = rng.normal(loc=d3, scale=1.0, size=(20000, 3))
    p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.01)
    assert math.isinf(detectable_effect(1))
