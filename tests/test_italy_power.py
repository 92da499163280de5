"""ItalyPowerDemand: the .ts reader, leakage-free stratified splits, patches, the shifts
(noise, time warping, sensor drop-out: graded and nested), OOD sets, a missing package at
config time."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bayesbench.config import parse_config
from bayesbench.data import italy_power
from bayesbench.data.italy_power import (
    SHIFT_LADDERS,
    ItalyPowerDemand,
    read_ts,
    resample,
    sensor_dropout,
    shifted_series,
    time_warp,
    znormalize,
)
from bayesbench.errors import ConfigError, DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Task

REPO = Path(__file__).resolve().parent.parent
SEVERITIES = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def dataset() -> ItalyPowerDemand:
    return ItalyPowerDemand()


@pytest.fixture(scope="module")
def task(dataset) -> Task:
    return dataset.build(0)


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


def test_registered_with_source_licence_and_size_in_the_description() -> None:
    assert DATASETS.get("italy_power_demand") is ItalyPowerDemand
    for needed in ("sktime", "BSD-3", "UCR", "1,096"):
        assert needed in ItalyPowerDemand.description, needed


def test_read_ts_by_hand(tmp_path) -> None:
    path = tmp_path / "toy.ts"
    path.write_text("#a comment\n@problemName toy\n@classLabel true 1 2\n@data\n"
                    "1.0,2.5,-3:1\n\n0,0,1e-1:2\n")
    x, labels = read_ts(path)
    assert x.tolist() == [[1.0, 2.5, -3.0], [0.0, 0.0, 0.1]] and labels.tolist() == ["1", "2"]


def test_the_series(dataset) -> None:
    x, y = dataset.series()
    assert x.shape == (1096, 24) and int((y == 0).sum()) == 547
    assert np.allclose(x.mean(1), 0, atol=1e-6) and np.allclose(x.std(1, ddof=1), 1, atol=1e-5)
    assert len(np.unique(x.round(6), axis=0)) == 1096  # no two days alike


def test_same_seed_gives_identical_tensors(task, dataset) -> None:
    again = dataset.build(0)
    for a, b in zip(task.all_splits(), again.all_splits()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name])
    assert not np.array_equal(dataset.split_indices(1)["test"], dataset.split_indices(0)["test"])


def test_shapes_sizes_and_patches(task, dataset) -> None:
    assert task.input_kind == "vectors" and task.num_classes == 2
    assert (len(task.train), len(task.val), len(task.test)) == (657, 165, 274)
    assert task.train.x.shape[1:] == (6, 4) and task.num_tokens == 6 and task.feature_dim == 4
    x, _ = dataset.series()
    rows = dataset.split_indices(0)
    assert np.allclose(flat(task.test.x), x[rows["test"]], atol=1e-6)  # patches in time order
    two = ItalyPowerDemand(patch_size=2).build(0)
    assert two.train.x.shape[1:] == (12, 2)
    assert torch.equal(two.train.x.reshape(len(two.train), -1), task.train.x.reshape(
        len(task.train), -1))


def test_no_day_in_two_splits_and_stratified(task, dataset) -> None:
    rows = dataset.split_indices(0)
    parts = [set(rows[k].tolist()) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 1096
    by_content = [{tuple(r) for r in flat(s.x).round(5).tolist()}
                  for s in (task.train, task.val, task.test)]
    assert not (by_content[0] & by_content[1] or by_content[0] & by_content[2]
                or by_content[1] & by_content[2])
    for split in (task.train, task.val, task.test):
        assert abs(int((split.y == 0).sum()) - 547 / 1096 * len(split)) <= 1


def test_warp_and_dropout_by_hand() -> None:
    x = np.arange(24, dtype=float)[None].repeat(2, 0)  # a ramp: the warp is visible as is
    warped = time_warp(x, 0.2, np.array([1.0, -1.0]))
    assert warped[0, 0] == 0 and warped[0, -1] == 23  # endpoints fixed
    # on a ramp x(t) = t the warped reading at hour t is t + s (T-1)/pi sin(pi t / (T-1))
    assert np.isclose(warped[0, 12] - 12, 0.2 * 23 / np.pi * np.sin(np.pi * 12 / 23))
    assert np.all(np.diff(warped, axis=1) > 0)  # monotone
    assert np.all(warped[0, 1:-1] > x[0, 1:-1]) and np.all(warped[1, 1:-1] < x[1, 1:-1])
    gap = sensor_dropout(x, np.array([5, 0]), 3)
    assert gap[0, 5:8].tolist() == [4, 4, 4] and gap[1, 0:3].tolist() == [3, 3, 3]
    assert np.array_equal(gap[0, 8:], x[0, 8:]) and np.array_equal(gap[0, :5], x[0, :5])
    r = resample(np.array([[0.0, 10.0]]), 5)
    assert r.tolist() == [[0.0, 2.5, 5.0, 7.5, 10.0]]
    z = znormalize(np.array([[1.0, 2.0, 3.0]]))
    assert np.allclose(z, [[-1.0, 0.0, 1.0]])


def test_shifts_grow_and_are_nested(task) -> None:
    test = flat(task.test.x)
    for kind in SHIFT_LADDERS:
        assert sorted(task.shifted[kind]) == SEVERITIES
        distance = []
        for split in task.shifted[kind].values():
            assert torch.equal(split.y, task.test.y)
            distance.append(float(np.abs(flat(split.x) - test).mean()))
        assert all(b > a for a, b in itertools.pairwise(distance)), (kind, distance)
    noise = [flat(s.x) - test for s in task.shifted["gaussian_noise"].values()]
    for sigma, d in zip(SHIFT_LADDERS["gaussian_noise"], noise):  # one draw, scaled
        assert np.allclose(d / sigma, noise[0] / SHIFT_LADDERS["gaussian_noise"][0], atol=1e-4)
    # the gaps, seen on strictly increasing series (the real readings repeat values, so a
    # held value can equal the original): exactly h hours each, each inside the next longer
    ramps = np.sort(np.random.default_rng(0).standard_normal((300, 24)), axis=1)
    gaps = [v != ramps for v in shifted_series(ramps, seed=0)["sensor_dropout"].values()]
    for g, h in zip(gaps, SHIFT_LADDERS["sensor_dropout"]):
        assert (g.sum(1) == h).all()
        runs = np.diff(np.concatenate([np.zeros((300, 1)), g, np.zeros((300, 1))], 1), axis=1)
        assert ((runs == 1).sum(1) == 1).all()  # one contiguous gap
    for small, large in itertools.pairwise(gaps):
        assert not np.any(small & ~large)
    starts = [g.argmax(1) for g in gaps]
    assert len({tuple(s) for s in starts}) > 1  # the places are drawn, not fixed


def test_ood_sets(task) -> None:
    assert set(task.ood) == {"gunpoint", "reversed_days"}
    gunpoint = flat(task.ood["gunpoint"])
    assert gunpoint.shape == (200, 24)
    assert np.allclose(gunpoint.mean(1), 0, atol=1e-5)
    assert np.allclose(gunpoint.std(1, ddof=1), 1, atol=1e-5)
    assert np.allclose(flat(task.ood["reversed_days"]), flat(task.test.x)[:, ::-1])


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": 5}, "patch_size=5 does not tile 24 hours"),
    ({"test_fraction": 1.0}, "test_fraction=1.0 must lie in"),
    ({"val_fraction": 0.5, "test_fraction": 0.45}, "leaves under 10%"),
])
def test_bad_parameters_raise(kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        ItalyPowerDemand(**kwargs)


def test_missing_package_fails_at_config_time_with_the_install_line(monkeypatch) -> None:
    real = italy_power.importlib.util.find_spec
    monkeypatch.setattr(italy_power.importlib.util, "find_spec",
                        lambda n, *a: None if n.split(".")[0] == "sktime" else real(n, *a))
    with pytest.raises(DataError, match=r"pip install 'bayesbench\[timeseries\]'"):
        ItalyPowerDemand()
    config = yaml.safe_load((REPO / "benchmarks.yaml").read_text())
    config["datasets"] = [{"name": "italy_power_demand"}]
    with pytest.raises(ConfigError, match=r"pip install 'bayesbench\[timeseries\]'") as caught:
        parse_config(config, "bench.yaml")
    assert caught.value.exit_code == 2
