"""Stored predictions (bayesbench/predictions.py) and `bayesbench rescore`: every metric comes
back bit for bit from what a run keeps, and another binning equals a run trained for it."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest
import torch

from bayesbench.config import expand, parse_config
from bayesbench.metrics.classification import mutual_information
from bayesbench.predictions import SplitPredictions, decode, encode, rescore
from bayesbench.rescore import rescore_store
from bayesbench.runner import run_one
from bayesbench.store import ResultStore

TINY = {
    "seeds": [0],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 96, "max_eval": 40, "mc_samples": 3, "seeds": 1},
    "datasets": ["digits", {"name": "markov",
                            "params": {"num_train": 200, "num_val": 60, "num_test": 60}}],
    "methods": ["map", "mc_dropout"],
}
SCORED = ("test", "shift/", "ood/")


def _scored(metrics):
    return {(m.split, m.metric): m.value for m in metrics if m.split.startswith(SCORED)}


@pytest.fixture(scope="module")
def results():
    specs = expand(parse_config(TINY), quick=True)
    out = [run_one(spec, torch.device("cpu")) for spec in specs]
    assert all(r.status == "complete" for r in out), [r.error for r in out]
    return specs, out


def test_every_metric_comes_back_bit_for_bit_from_the_predictions(results):
    specs, runs = results
    for spec, run in zip(specs, runs):
        kept = decode(run.predictions)
        assert list(kept)[0] == "test" and any(s.startswith("ood/") for s in kept)
        assert (kept["test"].samples == 1) == (run.method == "map")
        again = rescore(kept, spec.evaluation["ece_bins"])
        assert _scored(again) == _scored(run.metrics)  # exact, NaN-free here
        assert [(m.split, m.metric) for m in again] == [
            (m.split, m.metric) for m in run.metrics if m.split.startswith(SCORED)]
    markov = next(r for r in runs if r.dataset == "markov")
    assert decode(markov.predictions)["test"].true_probs is not None  # kl_true rescored too


def test_the_summary_gives_the_samples_mutual_information_exactly():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.ones(4), size=(5, 30))
    p = SplitPredictions.of(samples)
    assert np.array_equal(p.ood_scores()["mutual_info"], mutual_information(samples))
    one = SplitPredictions.of(samples[:1])
    assert one.expected_entropy is None and not one.ood_scores()["mutual_info"].any()


def test_encode_decode_round_trip():
    a = SplitPredictions(np.full((3, 2), 0.5), np.arange(3.0), np.array([0, 1, 1]),
                         np.full((3, 2), 0.5), samples=4)
    b = SplitPredictions(np.eye(2), samples=1)
    back = decode(encode({"test": a, "ood/x": b}))
    assert list(back) == ["test", "ood/x"]
    for got, want in ((back["test"], a), (back["ood/x"], b)):
        assert got.samples == want.samples
        for name in ("probs", "expected_entropy", "labels", "true_probs"):
            g, w = getattr(got, name), getattr(want, name)
            assert (g is None and w is None) or np.array_equal(g, w)


def test_predictions_are_stored_with_the_run_and_can_be_switched_off(tmp_path, results):
    specs, runs = results
    store = ResultStore(tmp_path / "s.sqlite")
    for run in runs:
        store.write(run)
    assert store.predictions(runs[0].key) == runs[0].predictions
    assert set(store.predictions_sizes()) == {r.key for r in runs}
    off = expand(parse_config({**TINY, "keep_predictions": False}), quick=True)
    assert [s.key for s in off] == [s.key for s in specs]  # what is kept is not in the key
    bare = run_one(off[0], torch.device("cpu"))
    assert bare.predictions is None and _scored(bare.metrics) == _scored(runs[0].metrics)
    failed = dataclasses.replace(runs[0], key="f" * 16, status="failed", predictions=None)
    store.write(failed)
    assert store.predictions("f" * 16) is None


def test_rescore_in_place_restores_a_damaged_value_and_keeps_cost(tmp_path, results):
    _, runs = results
    store = ResultStore(tmp_path / "s.sqlite")
    for run in runs:
        store.write(run)
    clean = rescore_store(store)
    assert (clean.rescored, clean.changed, clean.values_changed) == (len(runs), 0, 0)
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE metrics SET value = 0.5 WHERE key = ? AND split = 'test' AND "
                    "metric = 'ece'", (runs[0].key,))
    fixed = rescore_store(store)
    assert (fixed.changed, fixed.values_changed) == (1, 1)
    again = store.get(runs[0].key)
    assert again.metrics == runs[0].metrics  # same values, same order, cost and fit kept


def test_another_binning_equals_a_run_trained_with_it(tmp_path, results):
    """--ece-bins 7 writes each run as the run of a config with ece_bins: 7 (that config's
    keys, so `run` would skip it), with the metrics such a run computes."""
    _, runs = results
    store = ResultStore(tmp_path / "s.sqlite")
    for run in runs:
        store.write(run)
    outcome = rescore_store(store, ece_bins=7)
    assert outcome.derived == len(runs)
    seven = expand(parse_config({**TINY, "evaluation": {"ece_bins": 7}}), quick=True)
    assert {s.key for s in seven} <= store.completed_keys()
    trained = run_one(seven[0], torch.device("cpu"))
    derived = store.get(seven[0].key)
    assert _scored(derived.metrics) == _scored(trained.metrics)
    assert derived.reliability == trained.reliability
    assert derived.spec["metric_spec"]["ece"]["bins"] == 7
    assert derived.spec["rescored_from"] == runs[0].key
    assert rescore_store(store, ece_bins=7).already == len(runs)


def test_rescore_command(tmp_path, run_cli, results):
    _, runs = results
    store = ResultStore(tmp_path / "s.sqlite")
    store.write(runs[0])
    store.write(dataclasses.replace(runs[1], predictions=None))
    res = run_cli("rescore", "--store", "s.sqlite")
    assert res.returncode == 0, res.stderr
    assert "rescored 1 run(s) from their stored predictions: 0 value(s) changed" in res.stdout
    assert "1 run(s) have no stored predictions" in res.stderr
    missing = run_cli("rescore", "--store", "nothing.sqlite")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
