"""Wisconsin diagnostic breast cancer (scikit-learn, offline) with a cohort shift.

Each class is cut at its own tumour-size quantile: train, validation and test come from the
patients with the smaller masses of each class; the shifted sets mix the test patients with
patients of larger masses, at the test split's class balance, from 20% to 100% of the set over
five severities. It is the offline stand-in for a shift between clinical cohorts (the paper's
adult -> newborn ICU shift). OOD: feature vectors with each feature permuted across patients,
and out-of-range measurements."""

from __future__ import annotations

import difflib
import math

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.splits import seeded_rng, split_state, stratified_holdout
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

NUM_BANDS = 5
"""Shift severities: severity k swaps k / NUM_BANDS of the test patients for far-cohort ones."""

MIN_BAND_SIZE = 40
"""Fewest patients per severity band, i.e. in the test split (fewer give too noisy an
accuracy to compare)."""

OUT_OF_RANGE_FEATURES = 5
"""Features replaced by out-of-range values in each row of the ``out_of_range`` OOD set."""


def population_split(
    values: np.ndarray, quantile: float, bands: int = NUM_BANDS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row indices of the sub-population below the cut, and of each band above it.

    Rows are ranked by ``values`` (ties by row index, so the split is deterministic): the
    first round(``quantile`` × N) are in distribution; the rest are cut into ``bands`` bands of
    (nearly) equal size in increasing order of ``values``.
    """
    order = np.argsort(values, kind="stable")
    cut = round(quantile * len(values))
    return order[:cut], list(np.array_split(order[cut:], bands))


def stratified_population_split(
    values: np.ndarray, labels: np.ndarray, quantile: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`population_split` within each class: rows below each class's own cut, and above.

    values, labels: ``[N]``. Class c's N_c rows are ranked by ``values`` among themselves; the
    first round(``quantile`` × N_c) are in distribution, the rest the far cohort. Both parts
    keep the class balance of all N rows (to a row per class); row indices come out sorted.
    """
    inside, outside = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        below, (above,) = population_split(values[rows], quantile, 1)
        inside.append(rows[below])
        outside.append(rows[above])
    return np.sort(np.concatenate(inside)), np.sort(np.concatenate(outside))


def cohort_mixture(
    near: np.ndarray,
    far: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    severities: int = NUM_BANDS,
) -> list[np.ndarray]:
    """Row indices of the shifted sets 1..``severities``: graded mixtures of two cohorts.

    near, far: row indices of the in-distribution test patients and of the far cohort;
    labels: ``[N]`` over all rows. Set k has, for each class c with n_c rows in ``near``,
    m = round(k / ``severities`` × n_c) rows of class c from ``far`` and n_c - m from ``near``:
    as many rows as ``near`` with the same class counts, a share k / ``severities`` of them far.
    Each class's rows of ``near`` and of ``far`` are put in one random order shared by all
    severities, so set k+1 is set k with some near rows swapped for far ones (nested draws).
    Raises ``ValueError`` if some class has fewer far rows than near ones.
    """
    near_parts, far_parts = [], []
    for c in np.unique(labels[near]):
        near_c, far_c = near[labels[near] == c], far[labels[far] == c]
        if len(far_c) < len(near_c):
            raise ValueError(f"class {c}: {len(far_c)} far rows for {len(near_c)} near ones")
        near_parts.append(rng.permutation(near_c))
        far_parts.append(rng.permutation(far_c))
    sets = []
    for k in range(1, severities + 1):
        rows = []
        for near_c, far_c in zip(near_parts, far_parts):
            m = round(k / severities * len(near_c))
            rows += [far_c[:m], near_c[: len(near_c) - m]]
        sets.append(np.sort(np.concatenate(rows)))
    return sets


def _test_sizes(
    class_counts: np.ndarray, quantile: float, test_fraction: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """(test split size, most test patients per class, far-cohort patients per class).

    The test split is ceil(``test_fraction`` × inside) patients (scikit-learn's rounding),
    stratified: class c gets at most ceil(n_test × inside_c / inside) of them.
    """
    inside = np.array([round(quantile * n) for n in class_counts])
    n_test = math.ceil(test_fraction * inside.sum())
    most = np.ceil(n_test * inside / inside.sum()).astype(int)
    return n_test, most, class_counts - inside


class BreastCancer(Dataset):
    """Diagnose a breast mass as malignant (0) or benign (1) from 30 features of a fine-needle
    aspirate image (scikit-learn's 569 Wisconsin patients; 212 malignant).

    Cohort shift, the offline stand-in for a change of clinical cohort (the paper's
    adult -> newborn ICU shift): a model built on patients whose masses were found small,
    deployed where a growing share of patients present later, with larger masses of either
    kind, and the prevalence stays the same, so that only the covariates move. Let q =
    ``in_distribution_quantile`` (default 0.6) and v = ``shift_feature`` (default
    ``mean radius``). Within each class c (N_c patients) the patients are ranked by v
    (:func:`stratified_population_split`): the round(q N_c) smallest are in distribution,
    the rest are the far cohort F_c. The in-distribution patients (341 by default, 37%
    malignant as in the whole data) are split stratified into train / val / test by
    ``val_fraction`` and ``test_fraction`` (204 / 51 / 86 by default).

    The shifted sets ``population`` severities k = 1..:data:`NUM_BANDS` are graded mixtures
    (:func:`cohort_mixture`) of the test patients T_c and the far cohort: with w_k = k / 5,
    set k holds, for each class c, m_k = round(w_k |T_c|) patients of F_c and
    |T_c| - m_k of T_c. So every set has the test split's size and class counts exactly
    (p_k(y) = p_test(y); 86 patients, 32 malignant by default) and
    p_k(x | y) = (1 - w_k) p_test(x | y) + w_k p_far(x | y): only the covariates move, the
    far cohort's weight growing linearly in k (in expectation each class's mean moves by w_k
    times the gap between the two cohorts' means), and severity 5 is the far cohort alone.
    The draws are nested (one random order of T_c and of F_c per seed), so each step up swaps
    test patients for far ones.

    The cut is per class because one cut over all patients leaves beyond it a cohort 79%
    malignant with only 48 benign patients, too few for sets at the test balance; and at the
    training prevalence those larger masses are classified about as well as the smaller ones
    (map, 30 epochs: 96% of the 48 benign and 74% of the malignant ones right, against 100%
    and 71% on the test split), so sets beyond one cut get harder only through their growing
    malignant share. Cut per class, the far cohort holds benign masses as large as typical
    malignant ones, which the model has never seen benign: map's accuracy (30 epochs, seeds
    0-2) falls from 0.98 on the test split to 0.88, 0.81, 0.73, 0.64 and 0.57 over
    severities 1..5, the malignant patients staying right and ever more benign ones wrong.

    Inputs are ``features``: ``x: [N, 30]`` float32, standardized with the training split's
    per-feature mean and sd (the model embeds each feature as a token, FT-Transformer style).
    OOD sets, as many as the test split: ``permuted_features`` (every feature of the test
    patients permuted independently across them: plausible marginals, impossible
    combinations) and ``out_of_range`` (test patients with :data:`OUT_OF_RANGE_FEATURES`
    random features set to 1 to 4 training sds beyond the training maximum).
    """

    name = "breast_cancer"
    description = (
        "Wisconsin breast cancer features; cohort shift toward larger tumours of both classes "
        "at the test class balance (stand-in for a clinical cohort shift); permuted features "
        "and out-of-range measurements as OOD"
    )
    version = 2  # v2: per-class cut and graded cohort mixtures (v1: bands by tumour size)

    def __init__(
        self,
        shift_feature: str = "mean radius",
        in_distribution_quantile: float = 0.6,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
    ) -> None:
        from sklearn.datasets import load_breast_cancer  # when used: not on import

        data = load_breast_cancer()
        names = [str(n) for n in data.feature_names]
        if shift_feature not in names:
            close = difflib.get_close_matches(str(shift_feature), names, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DataError(
                f"breast_cancer: shift_feature={shift_feature!r} is not a feature; {hint}"
                f"choose one of: {', '.join(names)}"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise DataError(f"breast_cancer: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 0.8:
            raise DataError(
                f"breast_cancer: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                "leaves under 20% for training; make their sum less than 0.8"
            )
        class_counts = np.bincount(data.target)

        def fits(quantile: float) -> bool:
            n_test, most, far = _test_sizes(class_counts, quantile, test_fraction)
            return n_test >= MIN_BAND_SIZE and bool(np.all(far >= most))

        valid = [q / 100 for q in range(20, 100) if fits(q / 100)]
        if not valid:
            raise DataError(
                f"breast_cancer: test_fraction={test_fraction:g} gives a test split under "
                f"{MIN_BAND_SIZE} patients for every in_distribution_quantile that leaves each "
                "class enough patients beyond its cut; the shifted sets copy the test split's "
                "size, so raise test_fraction, e.g. 0.25"
            )
        if not (valid[0] <= in_distribution_quantile <= valid[-1]
                and fits(in_distribution_quantile)):
            example = 0.6 if fits(0.6) else valid[len(valid) // 2]
            raise DataError(
                f"breast_cancer: in_distribution_quantile={in_distribution_quantile!r} must lie "
                f"in [{valid[0]:g}, {valid[-1]:g}] with test_fraction={test_fraction:g}, so that "
                f"the test split, whose size every shifted set copies, has at least "
                f"{MIN_BAND_SIZE} patients and each class has at least as many patients beyond "
                f"its cut as in the test split; e.g. {example:g}"
            )
        self.shift_feature = shift_feature
        self.in_distribution_quantile = float(in_distribution_quantile)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        from sklearn.datasets import load_breast_cancer  # when used: not on import

        data = load_breast_cancer()
        features, labels = data.data.astype(np.float64), data.target
        column = list(data.feature_names).index(self.shift_feature)
        inside, far = stratified_population_split(
            features[:, column], labels, self.in_distribution_quantile
        )

        state = split_state(seed)  # the splits keep train_test_split's order (unsorted)
        rest, test = stratified_holdout(inside, labels, self.test_fraction, state)
        train, val = stratified_holdout(
            rest, labels, self.val_fraction / (1 - self.test_fraction), state
        )
        bands = cohort_mixture(test, far, labels, seeded_rng(seed, "shift:population"))
        mean = features[train].mean(0)
        sd = features[train].std(0)

        def to_x(rows: np.ndarray) -> torch.Tensor:
            return torch.as_tensor((rows - mean) / sd, dtype=torch.float32)

        def split(index: np.ndarray) -> Split:
            return Split(to_x(features[index]), torch.as_tensor(labels[index], dtype=torch.long))

        test_rows = features[test]
        perm_rng = seeded_rng(seed, "ood:permuted_features")
        permuted = np.stack(
            [perm_rng.permutation(test_rows[:, j]) for j in range(test_rows.shape[1])], axis=1
        )
        range_rng = seeded_rng(seed, "ood:out_of_range")
        out_of_range = test_rows.copy()
        top = features[train].max(0)
        for row in out_of_range:
            cols = range_rng.choice(len(top), OUT_OF_RANGE_FEATURES, replace=False)
            row[cols] = top[cols] + range_rng.uniform(1.0, 4.0, len(cols)) * sd[cols]

        return Task(
            name=self.name,
            input_kind="features",
            num_classes=2,
            train=split(train),
            val=split(val),
            test=split(test),
            shifted={"population": {s: split(b) for s, b in enumerate(bands, 1)}},
            ood={"permuted_features": to_x(permuted), "out_of_range": to_x(out_of_range)},
            class_names=[str(n) for n in data.target_names],
        )
