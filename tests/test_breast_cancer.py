"""The breast-cancer dataset: the population split by tumour size, standardization, class
balance across the shift, and OOD sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from bayesbench.data.breast_cancer import BreastCancer, population_split
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Split, Task

SEVERITIES = [1, 2, 3, 4, 5]
RADIUS = 0  # column of "mean radius"


@pytest.fixture(scope="module")
def task() -> Task:
    return BreastCancer().build(0)


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return data.data, data.target


def match_rows(task: Task, x: torch.Tensor, raw: tuple) -> np.ndarray:
    """The patient (row of the original data) of each standardized row of ``x``.

    Standardization is affine per feature with a positive slope, and every patient sits in
    exactly one split (checked below), so each feature's slope and intercept follow from its
    smallest and largest value over all splits; then the nearest patient is the one.
    """
    features, _ = raw
    z_all = np.concatenate([s.x.double().numpy() for s in task.all_splits()])
    slope = (z_all.max(0) - z_all.min(0)) / (features.max(0) - features.min(0))
    intercept = z_all.min(0) - slope * features.min(0)
    recovered = (x.double().numpy() - intercept) / slope
    dist = np.abs((recovered[:, None, :] - features[None, :, :]) / features.std(0)).max(-1)
    rows = dist.argmin(1)
    assert np.all(dist[np.arange(len(rows)), rows] < 1e-4)  # an exact match, up to float32
    return rows


def test_registered() -> None:
    assert DATASETS.get("breast_cancer") is BreastCancer


def test_same_seed_gives_identical_tensors(task: Task) -> None:
    again = BreastCancer().build(0)
    for a, b in zip(task.all_splits(), again.all_splits()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name]), name


def test_different_seed_resplits_the_same_population(task: Task, raw: tuple) -> None:
    other = BreastCancer().build(1)
    assert set(match_rows(task, task.test.x, raw)) != set(match_rows(other, other.test.x, raw))
    inside = lambda t: {  # noqa: E731
        i for s in (t.train, t.val, t.test) for i in match_rows(t, s.x, raw)
    }
    assert inside(task) == inside(other)


def test_shapes_dtypes_labels_and_sizes(task: Task) -> None:
    assert task.name == "breast_cancer" and task.input_kind == "features"
    assert task.num_classes == 2 and task.class_names == ["malignant", "benign"]
    assert task.num_tokens == 30 and task.feature_dim == 30
    assert (len(task.train), len(task.val), len(task.test)) == (204, 51, 86)  # 341 = 60%
    assert [len(task.shifted["population"][s]) for s in SEVERITIES] == [46, 46, 46, 45, 45]
    for split in task.all_splits():
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (30,)
        assert split.y.dtype == torch.long and set(split.y.tolist()) <= {0, 1}
        assert split.true_probs is None


def test_every_patient_in_exactly_one_split(task: Task, raw: tuple) -> None:
    rows = np.concatenate([match_rows(task, s.x, raw) for s in task.all_splits()])
    assert sorted(rows) == list(range(569))
    features, labels = raw
    for split in task.all_splits():
        assert np.array_equal(split.y.numpy(), labels[match_rows(task, split.x, raw)])


def test_population_is_cut_by_mean_radius(task: Task, raw: tuple) -> None:
    features, _ = raw
    radius = {
        name: features[match_rows(task, s.x, raw), RADIUS]
        for name, s in [("train", task.train), ("val", task.val), ("test", task.test)]
        + [(f"band{s}", task.shifted["population"][s]) for s in SEVERITIES]
    }
    inside = np.concatenate([radius["train"], radius["val"], radius["test"]])
    assert inside.max() <= radius["band1"].min()
    assert abs(inside.max() - np.quantile(features[:, RADIUS], 0.6)) < 0.2
    for s, t in itertools.pairwise(SEVERITIES):
        assert radius[f"band{s}"].max() <= radius[f"band{t}"].min()
    assert radius["band5"].max() == features[:, RADIUS].max()


def test_class_balance_changes_across_the_shift(task: Task) -> None:
    def malignant(split: Split) -> float:
        return float((split.y == 0).float().mean())

    inside = torch.cat([task.train.y, task.val.y, task.test.y])
    assert int((inside == 0).sum()) == 32  # 9.4% of the 341 smaller tumours are malignant
    bands = [round(malignant(task.shifted["population"][s]), 2) for s in SEVERITIES]
    assert bands == [0.37, 0.72, 0.87, 1.0, 1.0]
    # stratified: the same malignant share in each in-distribution split, to a patient
    for split in (task.train, task.val, task.test):
        assert abs(malignant(split) * len(split) - 32 / 341 * len(split)) <= 1


def test_standardized_with_training_statistics(task: Task) -> None:
    x = task.train.x.double()
    assert torch.allclose(x.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(30, dtype=torch.float64),
                          atol=1e-5)
    # the larger tumours lie far out on the shift feature
    assert float(task.shifted["population"][5].x[:, RADIUS].min()) > 3.0


def test_population_split_on_ties() -> None:
    inside, bands = population_split(np.array([3.0, 1.0, 1.0, 2.0, 5.0, 4.0, 4.0]), 3 / 7, 2)
    assert inside.tolist() == [1, 2, 3]
    assert [b.tolist() for b in bands] == [[0, 5], [6, 4]]


def test_other_shift_feature_and_quantile(raw: tuple) -> None:
    features, _ = raw
    task = BreastCancer(shift_feature="worst area", in_distribution_quantile=0.5).build(0)
    assert len(task.train) + len(task.val) + len(task.test) == 284
    assert [len(task.shifted["population"][s]) for s in SEVERITIES] == [57] * 5
    col = list(load_breast_cancer().feature_names).index("worst area")
    z_inside = torch.cat([task.train.x, task.val.x, task.test.x])[:, col]
    assert float(z_inside.max()) <= float(task.shifted["population"][1].x[:, col].min())


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
        ({"in_distribution_quantile": 0.7}, r"in_distribution_quantile.*\[0.2, 0.64\]"),
        ({"in_distribution_quantile": 0.1}, "in_distribution_quantile"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.4, "test_fraction": 0.4}, "val_fraction"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        BreastCancer(**kwargs)
