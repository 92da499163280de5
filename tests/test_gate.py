"""Regression gate: baseline round trip, direction-aware verdicts, tolerances, bad baselines."""

from __future__ import annotations

import pandas as pd
import pytest
from fake_results import fake_result

from bayesbench.errors import BaselineError, UnknownNameError
from bayesbench.metrics import METRICS
from bayesbench.report import (
    aggregate_store,
    check_against_baseline,
    load_baseline,
    write_baseline,
)
from bayesbench.store import ResultStore


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    for seed in range(3):
        store.write(fake_result("map", "toy", seed, 0.90 + 0.01 * seed, 0.10))
        store.write(fake_result("vi", "toy", seed, 0.80 + 0.01 * seed, 0.03))
    return store


@pytest.fixture
def baseline(store, tmp_path):
    return write_baseline(store, tmp_path / "baseline.csv")


def _edit(path, method, split, metric, **changes):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    hit = (frame.method == method) & (frame.split == split) & (frame.metric == metric)
    assert hit.sum() == 1
    for column, value in changes.items():
        frame.loc[hit, column] = str(value)
    frame.to_csv(path, index=False)


def _status(result, method, split, metric):
    (row,) = [r for r in result.rows
              if (r.method, r.split, r.metric) == (method, split, metric)]
    return row


def test_baseline_holds_gated_metrics_on_summary_splits_only(baseline):
    frame = load_baseline(baseline)
    assert list(pd.read_csv(baseline).columns) == [
        "method", "dataset", "split", "metric", "value", "higher_is_better", "tolerance"]
    assert set(frame["split"]) == {"test", "shift_mean", "ood_mean"}
    assert all(METRICS[m].gated for m in frame["metric"])
    assert "mean_entropy" not in set(frame["metric"])
    # per method and dataset: 7 gated test metrics, same on shift_mean, 9 OOD metrics
    assert len(frame) == 2 * (7 + 7 + 9)
    row = frame[(frame.method == "map") & (frame.split == "test") & (frame.metric == "ece")]
    assert row["value"].item() == pytest.approx(0.10)
    assert not row["higher_is_better"].item()
    assert row["tolerance"].item() == METRICS["ece"].tolerance


def test_same_results_pass_the_gate(store, baseline):
    result = check_against_baseline(store, baseline)
    assert result.exit_code == 0
    assert {r.status for r in result.rows} == {"ok"}
    assert all(r.delta == 0.0 for r in result.rows)  # full float precision in the CSV
    # aggregates and paths work as inputs too
    assert check_against_baseline(aggregate_store(store), load_baseline(baseline)).exit_code == 0
    assert check_against_baseline(store.path, baseline).exit_code == 0


def test_higher_is_better_regression_and_tolerance_override(store, baseline):
    # current map accuracy is 0.91; a baseline of 0.94 is better by 0.03 > tolerance 0.02
    _edit(baseline, "map", "test", "accuracy", value=0.94)
    result = check_against_baseline(store, baseline)
    assert result.exit_code == 1
    row = _status(result, "map", "test", "accuracy")
    assert row.status == "regressed"
    assert (row.baseline, row.current, row.delta, row.tolerance) == pytest.approx(
        (0.94, 0.91, -0.03, 0.02))
    assert [r.metric for r in result.regressions] == ["accuracy"]
    assert "FAIL" in result.summary() and "1 regressed" in result.summary()

    loose = check_against_baseline(store, baseline, tolerance_overrides={"accuracy": 0.05})
    assert loose.exit_code == 0
    assert _status(loose, "map", "test", "accuracy").tolerance == 0.05

    # within the default tolerance: 0.925 is better by only 0.015
    _edit(baseline, "map", "test", "accuracy", value=0.925)
    assert check_against_baseline(store, baseline).exit_code == 0


def test_lower_is_better_direction(store, baseline):
    # current vi ece is 0.03; a baseline of 0.00 is better by 0.03 > 0.02: regression
    _edit(baseline, "vi", "test", "ece", value=0.0)
    assert _status(check_against_baseline(store, baseline), "vi", "test", "ece").status \
        == "regressed"
    # a worse baseline (0.06) means we improved by 0.03 > 0.02: improvement, gate passes
    _edit(baseline, "vi", "test", "ece", value=0.06)
    result = check_against_baseline(store, baseline)
    assert _status(result, "vi", "test", "ece").status == "improved"
    assert result.exit_code == 0


def test_tolerance_precedence(store, baseline):
    _edit(baseline, "map", "test", "accuracy", value=0.94, tolerance=0.1)  # row tolerance wins
    assert check_against_baseline(store, baseline).exit_code == 0
    # an override by metric name beats the row's tolerance
    strict = check_against_baseline(store, baseline, tolerance_overrides={"accuracy": 0.0})
    assert strict.exit_code == 1
    _edit(baseline, "map", "test", "accuracy", tolerance="")  # empty: METRICS default 0.02
    assert check_against_baseline(store, baseline).exit_code == 1
    with pytest.raises(UnknownNameError, match="did you mean 'accuracy'"):
        check_against_baseline(store, baseline, tolerance_overrides={"acuracy": 0.1})


def test_missing_current_value_fails_the_gate(store, baseline, tmp_path):
    frame = pd.read_csv(baseline)
    extra = frame.iloc[[0]].assign(method="laplace")
    pd.concat([frame, extra]).to_csv(baseline, index=False)
    result = check_against_baseline(store, baseline)
    assert [r.method for r in result.missing] == ["laplace"]
    assert result.exit_code == 1


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not a readable CSV|missing column"),
    ("", "not a readable CSV"),
    ("method,dataset,split,metric,value\nmap,toy,test,ece,0.1\n", "missing column.*tolerance"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n", "no rows"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n"
     "map,toy,test,ece,0.1,False,0.02\nmap,toy,test,ece,abc,False,0.02\n",
     r"row 2 \(line 3\): value 'abc'"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n"
     "map,toy,test,acuracy,0.9,True,0.02\n", "unknown metric 'acuracy'.*did you mean 'accuracy'"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n"
     "map,toy,test,ece,0.1,True,0.02\n", "lower-is-better"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n"
     "map,toy,test,ece,0.1,False,-1\n", "tolerance '-1'"),
    ("method,dataset,split,metric,value,higher_is_better,tolerance\n"
     "map,toy,test,ece,0.1,False,0.02\nmap,toy,test,ece,0.2,False,0.02\n", "duplicate.*2, 3"),
])
def test_malformed_baselines_raise_baseline_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        load_baseline(path)
    assert "bad.csv" in str(info.value)
