"""The Python API (bayesbench.api, re-exported by `import bayesbench`)."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from fake_results import fake_result

import bayesbench
from bayesbench import api
from bayesbench.errors import ConfigError, InputFileError, StoreError
from bayesbench.store import ResultStore

TINY = {
    "seeds": [0],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "datasets": [{"name": "markov", "params": {"num_train": 120, "num_val": 40,
                                              "num_test": 60}}],
    "methods": ["map", {"name": "mfvi", "sweep": {"prior_scale": [0.1, 1.0]}}],
}


def test_module_examples_run(tmp_path, monkeypatch):
    """The docstring examples (a tiny grid run into a store, then read back) are tested."""
    monkeypatch.chdir(tmp_path)
    for module in (api, bayesbench):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_import_bayesbench_stays_light():
    code = ("import sys, bayesbench; assert bayesbench.__version__; "
            "print(sorted(m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    assert set(bayesbench.__all__) >= {"run", "score", "load_runs", "load_metrics",
                                       "load_aggregates", "get_run"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bayesbench.nope  # noqa: B018


def test_score_takes_arrays_tensors_and_samples():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    from_numpy = bayesbench.score(probs, labels)
    from_torch = bayesbench.score(torch.tensor(probs), torch.tensor(labels))
    assert from_numpy == from_torch
    assert from_numpy["test"]["accuracy"] == pytest.approx(0.75)
    assert from_numpy["test"]["brier"] == pytest.approx(np.mean(
        np.sum((probs - np.eye(2)[labels]) ** 2, axis=1)))
    # two identical samples S x N x C score like the single prediction
    assert bayesbench.score(np.stack([probs, probs]), labels)["test"]["nll"] == \
        pytest.approx(from_numpy["test"]["nll"])
    with pytest.raises(InputFileError, match="softmax"):
        bayesbench.score(np.array([[2.0, -1.0], [0.5, 0.1]]), [0, 1])


def test_run_a_dict_config_then_read_the_grid(tmp_path):
    store = tmp_path / "r.sqlite"
    grid = bayesbench.run(TINY, store=store, methods=["MAP", "mfvi"])  # a group selects all
    assert sorted(r.label for r in grid.results) == [
        "map", "mfvi@prior_scale=0.1", "mfvi@prior_scale=1.0"]
    assert not grid.failed and not grid.interrupted and len(grid.keys) == 3
    tidy = grid.metrics()
    assert set(tidy["key"]) == set(grid.keys)
    acc = tidy.query("split == 'test' and metric == 'accuracy'")["value"]
    assert len(acc) == 3 and ((acc >= 0) & (acc <= 1)).all()
    agg = grid.aggregates()
    assert set(agg["n"]) == {1}
    # the store as DataFrames
    runs = bayesbench.load_runs(store)
    assert len(runs) == 3 and set(runs["status"]) == {"complete"}
    assert bayesbench.load_metrics(store).shape == tidy.shape
    assert len(bayesbench.load_aggregates(store)) == len(agg)
    again = bayesbench.run(TINY, store=store, methods=["map"])
    assert again.results == [] and [s.label for s in again.skipped] == ["map"]
    record = bayesbench.get_run(store, "map")
    assert record.metric("test", "accuracy") == pytest.approx(
        float(tidy.query("label == 'map' and split == 'test' and metric == 'accuracy'")
              ["value"].iloc[0]))


def test_load_metrics_selects_what_reports_use(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    store.write(fake_result("map", "toy", 0, 0.9, 0.1))
    store.write(fake_result("map", "toy", 0, 0.5, 0.3, quick=True))
    store.write(fake_result("map", "toy", 1, 0.1, 0.1, status="failed", error="boom"))
    tidy = bayesbench.load_metrics(store)
    assert set(tidy["quick"]) == {False}
    assert tidy.query("split == 'test' and metric == 'accuracy'")["value"].tolist() == [0.9]
    assert set(bayesbench.load_metrics(store, quick=True)["quick"]) == {True}
    assert set(bayesbench.load_metrics(store, latest=False)["quick"]) == {False, True}
    agg = bayesbench.load_aggregates(store, quick=True)
    acc = agg.query("split == 'test' and metric == 'accuracy'")
    assert acc["mean"].tolist() == [0.5] and acc["n"].tolist() == [1]
    assert sorted(bayesbench.load_runs(store)["status"]) == ["complete", "complete", "failed"]


def test_bad_input_raises_errors_that_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="--methods mapp: not in <config dict>. Did you mean "
                                          "'map'?"):
        bayesbench.run(TINY, store=tmp_path / "s.sqlite", methods=["mapp"])
    with pytest.raises(ConfigError, match="<config dict>: methods"):
        bayesbench.run({**TINY, "methods": "map"}, store=tmp_path / "s.sqlite")
    with pytest.raises(ConfigError, match="expected a benchmarks.yaml path or a dict"):
        bayesbench.load_config(42)
    with pytest.raises(ConfigError, match="no such config file"):
        bayesbench.load_config(tmp_path / "missing.yaml")
    assert not (tmp_path / "s.sqlite").exists()  # nothing was written
    for load in (bayesbench.load_runs, bayesbench.load_metrics, bayesbench.load_aggregates):
        with pytest.raises(StoreError, match="no results at"):
            load(tmp_path / "none.sqlite")
