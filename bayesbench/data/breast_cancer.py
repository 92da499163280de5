"""Wisconsin diagnostic breast cancer (scikit-learn, offline) with a population shift.

Train, validation and test come from the patients with the smaller tumours; the shifted sets
are the patients with larger tumours, in five bands. It is the offline stand-in for a shift
between clinical cohorts (the paper's adult -> newborn ICU shift). OOD: feature vectors with
each feature permuted across patients, and out-of-range measurements."""

from __future__ import annotations

import difflib
import zlib

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from bayesbench.data.base import Dataset
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

NUM_BANDS = 5
"""Shift severities: bands of equal size over the sub-population above the cut."""

MIN_BAND_SIZE = 40
"""Fewest patients per severity band (fewer give too noisy an accuracy to compare)."""

OUT_OF_RANGE_FEATURES = 5
"""Features replaced by out-of-range values in each row of the ``out_of_range`` OOD set."""


def _rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, stream), so adding a stream changes no other one."""
    return np.random.default_rng([seed % 2**64, zlib.crc32(stream.encode())])


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


class BreastCancer(Dataset):
    """Diagnose a breast mass as malignant (0) or benign (1) from 30 features of a fine-needle
    aspirate image (scikit-learn's 569 Wisconsin patients; 212 malignant).

    Population shift, the offline stand-in for a change of clinical cohort (the paper's
    adult -> newborn ICU shift): the patients are ranked by ``shift_feature`` (default
    ``mean radius``); the lowest ``in_distribution_quantile`` (default 60%, 341 patients) are
    the training population, split stratified into train / val / test by ``val_fraction`` and
    ``test_fraction``. The remaining patients, in :data:`NUM_BANDS` equal bands of increasing
    ``shift_feature``, are the shifted sets ``population`` severities 1..5 (severity 1 just
    above the cut, 5 the largest tumours; 45 or 46 patients each by default).

    The class balance changes across the shift, because malignant tumours are larger: with the
    defaults 9% of the training population is malignant, and 37%, 72%, 87%, 100% and 100% of
    bands 1..5.

    Inputs are ``features``: ``x: [N, 30]`` float32, standardized with the training split's
    per-feature mean and sd (the model embeds each feature as a token, FT-Transformer style).
    OOD sets, as many as the test split: ``permuted_features`` (every feature of the test
    patients permuted independently across them: plausible marginals, impossible
    combinations) and ``out_of_range`` (test patients with :data:`OUT_OF_RANGE_FEATURES`
    random features set to 1 to 4 training sds beyond the training maximum).
    """

    name = "breast_cancer"
    description = (
        "Wisconsin breast cancer features; population shift from small to large tumours "
        "(stand-in for a clinical cohort shift); permuted features and out-of-range "
        "measurements as OOD"
    )

    def __init__(
        self,
        shift_feature: str = "mean radius",
        in_distribution_quantile: float = 0.6,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
    ) -> None:
        data = load_breast_cancer()
        names = [str(n) for n in data.feature_names]
        if shift_feature not in names:
            close = difflib.get_close_matches(str(shift_feature), names, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DataError(
                f"breast_cancer: shift_feature={shift_feature!r} is not a feature; {hint}"
                f"choose one of: {', '.join(names)}"
            )
        total = len(data.target)
        largest = np.floor((1 - NUM_BANDS * MIN_BAND_SIZE / total) * 100) / 100
        if not 0.2 <= in_distribution_quantile <= largest:
            raise DataError(
                f"breast_cancer: in_distribution_quantile={in_distribution_quantile!r} must lie "
                f"in [0.2, {largest:g}] to leave at least {MIN_BAND_SIZE} patients per shift "
                "band and enough to train on, e.g. 0.6"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise DataError(f"breast_cancer: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 0.8:
            raise DataError(
                f"breast_cancer: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                "leaves under 20% for training; make their sum less than 0.8"
            )
        self.shift_feature = shift_feature
        self.in_distribution_quantile = float(in_distribution_quantile)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        data = load_breast_cancer()
        features, labels = data.data.astype(np.float64), data.target
        column = list(data.feature_names).index(self.shift_feature)
        inside, bands = population_split(features[:, column], self.in_distribution_quantile)

        split_state = int(_rng(seed, "split").integers(2**31 - 1))
        rest, test = train_test_split(
            inside, test_size=self.test_fraction, stratify=labels[inside],
            random_state=split_state,
        )
        train, val = train_test_split(
            rest, test_size=self.val_fraction / (1 - self.test_fraction),
            stratify=labels[rest], random_state=split_state,
        )
        mean = features[train].mean(0)
        sd = features[train].std(0)

        def to_x(rows: np.ndarray) -> torch.Tensor:
            return torch.as_tensor((rows - mean) / sd, dtype=torch.float32)

        def split(index: np.ndarray) -> Split:
            return Split(to_x(features[index]), torch.as_tensor(labels[index], dtype=torch.long))

        test_rows = features[test]
        perm_rng = _rng(seed, "ood:permuted_features")
        permuted = np.stack(
            [perm_rng.permutation(test_rows[:, j]) for j in range(test_rows.shape[1])], axis=1
        )
        range_rng = _rng(seed, "ood:out_of_range")
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
