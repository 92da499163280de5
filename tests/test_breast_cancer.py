"""The breast-cancer dataset: the per-class population cut by tumour size, the graded cohort
mixtures of the shift (class counts, composition, nesting, growing covariate shift),
standardization, and OOD sets."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from bayesbench.config import expand, parse_config
from bayesbench.data.breast_cancer import (
    BreastCancer,
    cohort_mixture,
    population_split,
    stratified_population_split,
)
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Split, Task

SEVERITIES = [1, 2, 3, 4, 5]
RADIUS = 0  # column of "mean radius"
MALIGNANT, BENIGN = 0, 1


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return data.data, data.target


def cut_by_class(raw: tuple, quantile: float = 0.6, column: int = RADIUS) -> tuple[set, set]:
    """Reference: the patients below each class's own ``quantile`` of ``column``, and above
    (ties broken by row index)."""
    features, labels = raw
    inside: set[int] = set()
    for c in (MALIGNANT, BENIGN):
        members = sorted(np.flatnonzero(labels == c), key=lambda i: (features[i, column], i))
        inside |= set(members[: round(quantile * len(members))])
    return inside, set(range(len(labels))) - inside


def patients(task: Task, raw: tuple, quantile: float = 0.6, column: int = RADIUS) -> dict:
    """The patients (rows of the original data) of every split: name -> row indices.

    Standardization is affine per feature with a positive slope, and train / val / test hold
    exactly the in-distribution patients (checked below), so each feature's slope and
    intercept follow from its smallest and largest value over those three splits and over
    the reference in-distribution patients; then the nearest patient is the one.
    """
    features, _ = raw
    inside = sorted(cut_by_class(raw, quantile, column)[0])
    z_in = torch.cat([task.train.x, task.val.x, task.test.x]).double().numpy()
    f_in = features[inside]
    slope = (z_in.max(0) - z_in.min(0)) / (f_in.max(0) - f_in.min(0))
    intercept = z_in.min(0) - slope * f_in.min(0)

    def rows(x: torch.Tensor) -> np.ndarray:
        recovered = (x.double().numpy() - intercept) / slope
        dist = np.abs((recovered[:, None, :] - features[None, :, :]) / features.std(0)).max(-1)
        found = dist.argmin(1)
        assert np.all(dist[np.arange(len(found)), found] < 1e-4)  # exact, up to float32
        return found

    out = {name: rows(getattr(task, name).x) for name in ("train", "val", "test")}
    out.update({s: rows(split.x) for s, split in task.shifted["population"].items()})
    return out


@pytest.fixture(scope="module")
def task() -> Task:
    return BreastCancer().build(0)


@pytest.fixture(scope="module")
def rows(task: Task, raw: tuple) -> dict:
    return patients(task, raw)


def test_registered_and_versioned() -> None:
    assert DATASETS.get("breast_cancer") is BreastCancer
    assert BreastCancer.version == 2
    (spec, *_) = expand(parse_config({"datasets": ["breast_cancer"], "methods": ["map"]},
                                     "bench.yaml"))
    assert spec.dataset_version == 2
    old = dataclasses.replace(spec, dataset_version=1)
    assert spec.key != old.key and spec.config_hash != old.config_hash


def test_same_seed_gives_identical_tensors(task: Task) -> None:
    again = BreastCancer().build(0)
    assert len(task.all_splits()) == len(again.all_splits()) == 8
    for a, b in zip(task.all_splits(), again.all_splits()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name]), name


def test_different_seed_redraws_from_the_same_populations(raw: tuple, rows: dict) -> None:
    other = patients(BreastCancer().build(1), raw)
    inside, far = cut_by_class(raw)
    for r in (rows, other):
        assert set(r["train"]) | set(r["val"]) | set(r["test"]) == inside
        assert set(r[5]) <= far
    assert set(rows["test"]) != set(other["test"])
    assert set(rows[5]) != set(other[5])  # the far patients are drawn by the seed too


def test_shapes_dtypes_labels_and_sizes(task: Task) -> None:
    assert task.name == "breast_cancer" and task.input_kind == "features"
    assert task.num_classes == 2 and task.class_names == ["malignant", "benign"]
    assert task.num_tokens == 30 and task.feature_dim == 30
    assert (len(task.train), len(task.val), len(task.test)) == (204, 51, 86)  # 341 = 60%
    assert [len(task.shifted["population"][s]) for s in SEVERITIES] == [86] * 5
    for split in task.all_splits():
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (30,)
        assert split.y.dtype == torch.long and set(split.y.tolist()) <= {0, 1}
        assert split.true_probs is None


def test_splits_partition_the_patients_below_each_class_cut(
    task: Task, raw: tuple, rows: dict
) -> None:
    features, labels = raw
    inside, far = cut_by_class(raw)
    assert len(inside) == 341 and len(far) == 228
    parts = [set(rows[name]) for name in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 341  # disjoint, no repeats
    assert set.union(*parts) == inside
    for name, split in [("train", task.train), ("val", task.val), ("test", task.test)] + [
        (s, task.shifted["population"][s]) for s in SEVERITIES
    ]:
        assert np.array_equal(split.y.numpy(), labels[rows[name]]), name
        assert len(set(rows[name])) == len(split), name  # no patient twice in a set


def test_each_class_is_cut_at_its_own_quantile(raw: tuple) -> None:
    features, labels = raw
    inside, far = (np.array(sorted(s)) for s in cut_by_class(raw))
    radius = features[:, RADIUS]
    for c, n_inside, n_far, top in ((MALIGNANT, 127, 85, 18.25), (BENIGN, 214, 143, 12.65)):
        below, above = inside[labels[inside] == c], far[labels[far] == c]
        assert (len(below), len(above)) == (n_inside, n_far)  # round(0.6 * 212), round(0.6 * 357)
        assert radius[below].max() == top <= radius[above].min()
    # one cut over all patients would put the 60% quantile at 14.06 instead
    assert abs(np.quantile(radius, 0.6) - 14.06) < 0.01


def test_class_balance_is_the_test_splits_in_every_shifted_set(task: Task) -> None:
    def malignant(split: Split) -> int:
        return int((split.y == MALIGNANT).sum())

    inside = torch.cat([task.train.y, task.val.y, task.test.y])
    assert int((inside == MALIGNANT).sum()) == 127  # 37.2%, the whole data's 212 / 569
    for split in (task.train, task.val, task.test):  # stratified, to a patient
        assert abs(malignant(split) - 127 / 341 * len(split)) <= 1
    assert malignant(task.test) == 32
    assert [malignant(task.shifted["population"][s]) for s in SEVERITIES] == [32] * 5


def test_severity_k_swaps_k_fifths_of_the_test_patients_for_far_ones(
    raw: tuple, rows: dict
) -> None:
    _, labels = raw
    _, far = cut_by_class(raw)
    test = set(rows["test"])
    counts = {MALIGNANT: [], BENIGN: []}
    for s in SEVERITIES:
        band = set(rows[s])
        assert band <= test | far  # never a training or validation patient
        for c in counts:
            counts[c].append(sum(1 for i in band - test if labels[i] == c))
    # round(k/5 * 32) of the 32 malignant and round(k/5 * 54) of the 54 benign test patients
    assert counts[MALIGNANT] == [6, 13, 19, 26, 32]
    assert counts[BENIGN] == [11, 22, 32, 43, 54]
    assert not set(rows[5]) & test  # severity 5: the far cohort alone


def test_draws_are_nested(rows: dict) -> None:
    test = set(rows["test"])
    for s, t in itertools.pairwise(SEVERITIES):
        assert set(rows[s]) - test <= set(rows[t]) - test  # far patients only added
        assert set(rows[s]) & test >= set(rows[t]) & test  # test patients only removed


def squared_mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Biased squared MMD with the Gaussian kernel exp(-|x - y|^2 / (2 D)), D features."""
    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(x, y) ** 2 / (2 * x.shape[1]))

    a, b = a.double(), b.double()
    return float(kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covariate_shift_grows_with_severity(seed: int) -> None:
    task = BreastCancer().build(seed)
    sets = [task.test] + [task.shifted["population"][s] for s in SEVERITIES]
    for c in (MALIGNANT, BENIGN):
        # distance of each set's class-c mean from the test split's class-c mean
        centre = task.test.x[task.test.y == c].double().mean(0)
        shift = [float((s.x[s.y == c].double().mean(0) - centre).norm()) for s in sets]
        assert shift[0] == 0 and all(b > a for a, b in itertools.pairwise(shift)), shift
        # both classes present larger masses: the mean radius of the class grows
        radius = [float(s.x[s.y == c, RADIUS].mean()) for s in sets]
        assert all(b > a for a, b in itertools.pairwise(radius)), radius
    mmd = [squared_mmd(s.x, task.train.x) for s in sets[1:]]
    assert all(b > a for a, b in itertools.pairwise(mmd)), mmd
    assert mmd[-1] > 4 * mmd[0]


def test_standardized_with_training_statistics(task: Task, raw: tuple, rows: dict) -> None:
    x = task.train.x.double()
    assert torch.allclose(x.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(30, dtype=torch.float64),
                          atol=1e-5)
    # every far patient's mass is larger than any in-distribution one of its class
    test = set(rows["test"])
    severe = task.shifted["population"][5]
    inside = torch.cat([task.train.x, task.val.x, task.test.x])
    inside_y = torch.cat([task.train.y, task.val.y, task.test.y])
    assert not set(rows[5]) & test
    for c in (MALIGNANT, BENIGN):
        assert float(severe.x[severe.y == c, RADIUS].min()) > float(
            inside[inside_y == c, RADIUS].max()
        )


def test_population_split_on_ties() -> None:
    inside, bands = population_split(np.array([3.0, 1.0, 1.0, 2.0, 5.0, 4.0, 4.0]), 3 / 7, 2)
    assert inside.tolist() == [1, 2, 3]
    assert [b.tolist() for b in bands] == [[0, 5], [6, 4]]


def test_stratified_population_split_by_hand() -> None:
    values = np.array([5.0, 1.0, 9.0, 2.0, 2.0, 7.0, 3.0, 8.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    inside, outside = stratified_population_split(values, labels, 0.5)
    # class 0: values 5, 1, 9, 2 -> rows 1, 3 below; class 1: 2, 7, 3, 8 -> rows 4, 6
    assert inside.tolist() == [1, 3, 4, 6] and outside.tolist() == [0, 2, 5, 7]
    # ties within a class go by row index
    inside, outside = stratified_population_split(np.zeros(6), np.array([1, 0, 1, 0, 1, 0]), 1 / 3)
    assert inside.tolist() == [0, 1] and outside.tolist() == [2, 3, 4, 5]


def test_cohort_mixture_by_hand() -> None:
    labels = np.array([0] * 10 + [1] * 20)
    near = np.array([0, 1, 2, 3, 4, 10, 11, 12, 13, 14])  # 5 of each class
    far = np.concatenate([np.arange(5, 10), np.arange(15, 30)])  # 5 of class 0, 15 of class 1
    sets = cohort_mixture(near, far, labels, np.random.default_rng(0), severities=4)
    assert len(sets) == 4
    for k, rows in enumerate(sets, 1):
        m = round(k / 4 * 5)  # 1, 2 (round half to even), 4, 5
        assert len(rows) == len(set(rows.tolist())) == 10
        for c in (0, 1):
            assert int((labels[rows] == c).sum()) == 5
            assert int(np.isin(rows[labels[rows] == c], far).sum()) == m
    assert [int(np.isin(r, far).sum()) for r in sets] == [2, 4, 8, 10]
    assert not np.isin(sets[-1], near).any()
    again = cohort_mixture(near, far, labels, np.random.default_rng(0), severities=4)
    assert all(np.array_equal(a, b) for a, b in zip(sets, again))
    with pytest.raises(ValueError, match="class 0: 4 far rows for 5 near ones"):
        cohort_mixture(near, far[1:], labels, np.random.default_rng(0))


def test_other_shift_feature_and_quantile(raw: tuple) -> None:
    task = BreastCancer(shift_feature="worst area", in_distribution_quantile=0.5).build(0)
    col = list(load_breast_cancer().feature_names).index("worst area")
    assert len(task.train) + len(task.val) + len(task.test) == 284  # 106 + 178
    assert len(task.test) == 71  # ceil(0.25 * 284)
    test_malignant = int((task.test.y == MALIGNANT).sum())
    for s in SEVERITIES:
        band = task.shifted["population"][s]
        assert len(band) == 71 and int((band.y == MALIGNANT).sum()) == test_malignant
    r = patients(task, raw, quantile=0.5, column=col)
    assert set(r["train"]) | set(r["val"]) | set(r["test"]) == cut_by_class(raw, 0.5, col)[0]
    inside = torch.cat([task.train.x, task.val.x, task.test.x])
    inside_y = torch.cat([task.train.y, task.val.y, task.test.y])
    severe = task.shifted["population"][5]
    for c in (MALIGNANT, BENIGN):
        assert float(inside[inside_y == c, col].max()) <= float(severe.x[severe.y == c, col].min())


def test_ood_sets(task: Task) -> None:
    assert set(task.ood) == {"permuted_features", "out_of_range"}
    test = task.test.x
    permuted = task.ood["permuted_features"]
    assert permuted.shape == test.shape == task.ood["out_of_range"].shape
    # each feature keeps the test patients' values, shuffled independently per feature
    assert torch.equal(permuted.sort(0).values, test.sort(0).values)
    assert not any(torch.equal(permuted[:, 0], test[:, j]) for j in range(30))
    rows = {tuple(r) for r in test.tolist()}
    assert not rows & {tuple(r) for r in permuted.tolist()}
    # out of range: 5 features per row beyond anything in training, the others untouched
    oor = task.ood["out_of_range"]
    changed = oor != test
    assert changed.sum(1).tolist() == [5] * len(test)
    sd_units = oor[changed] - task.train.x.max(0).values.expand_as(oor)[changed]
    assert float(sd_units.min()) >= 1.0 - 1e-4 and float(sd_units.max()) <= 4.0 + 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shift_feature": "mean radus"}, "did you mean 'mean radius'"),
        ({"shift_feature": "size"}, "shift_feature='size' is not a feature"),
        ({"in_distribution_quantile": 0.8}, r"in_distribution_quantile=0.8 .*\[0.28, 0.79\]"),
        ({"in_distribution_quantile": 0.1}, r"\[0.28, 0.79\] with test_fraction=0.25"),
        ({"in_distribution_quantile": float("nan")}, "in_distribution_quantile=nan"),
        ({"test_fraction": 0.1}, r"\[0.69, 0.9\] with test_fraction=0.1.*e\.g\. 0\.8"),
        ({"test_fraction": 0.05}, "test_fraction=0.05 gives a test split under 40"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.4, "test_fraction": 0.4}, "val_fraction"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        BreastCancer(**kwargs)


@pytest.mark.parametrize("quantile", [0.28, 0.79])
def test_the_ends_of_the_quantile_range_build(quantile: float) -> None:
    task = BreastCancer(in_distribution_quantile=quantile).build(0)
    assert len(task.test) >= 40
    for s in SEVERITIES:
        assert len(task.shifted["population"][s]) == len(task.test)
