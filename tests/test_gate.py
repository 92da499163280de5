"""Regression gate: baseline round trip, direction-aware verdicts, tolerances, bad baselines,
failed reruns, the kind (quick / full), seeds and binning a baseline was written from."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
from fake_results import fake_result

from bayesbench.errors import BaselineError, UnknownNameError
from bayesbench.metrics import METRICS
from bayesbench.report import (
    aggregate_store,
    check_against_baseline,
    load_baseline,
    select_runs,
    write_baseline,
)
from bayesbench.report.aggregate import latest_runs
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
        "method", "dataset", "split", "metric", "value", "higher_is_better", "tolerance",
        "quick", "seeds", "ece_bins", "config_hash", "seed_values", "cpu"]
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


# -- which runs the gate reads: provenance, failed reruns, kinds, seeds -----------------------

BASELINE_ROWS_PER_PAIR = 7 + 7 + 9  # gated test + shift_mean + ood_mean metrics of a pair


def _run(label, seed, acc, ece=0.05, *, finished="2025-01-01T00:01:00", key=None, quick=False,
         status="complete", error=None, config_hash="cfg123", ece_bins=5):
    """fake_result under its own key and finishing time, as a rerun under new settings is."""
    run = fake_result(label, "toy", seed, acc, ece, quick=quick, status=status, error=error)
    return dataclasses.replace(
        run, key=key or run.key, finished_at=finished, config_hash=config_hash,
        spec={**run.spec, "evaluation": {"ece_bins": ece_bins}})


def _store(path, runs):
    store = ResultStore(path)
    for run in runs:
        store.write(run)
    return store


def _old_format(path):
    """The baseline as written before it recorded its kind and seeds."""
    pd.read_csv(path, dtype=str, keep_default_na=False)[
        ["method", "dataset", "split", "metric", "value", "higher_is_better", "tolerance"]
    ].to_csv(path, index=False)
    return path


def test_baseline_records_kind_seeds_binning_and_settings(store, baseline, tmp_path):
    raw = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    assert set(raw["quick"]) == {"False"} and set(raw["seeds"]) == {"0 1 2"}
    assert set(raw["ece_bins"]) == {"5"} and set(raw["config_hash"]) == {"cfg123"}
    line = next(x for x in baseline.read_text().splitlines() if x.startswith("map,toy,test,ece,"))
    assert line.split(",")[5:] == ["False", "0.02", "False", "0 1 2", "5", "cfg123",
                                   "0.1 0.1 0.1", ""]  # the fake runs record no CPU
    acc = next(x for x in baseline.read_text().splitlines()
               if x.startswith("map,toy,test,accuracy,"))
    assert [float(v) for v in acc.split(",")[-2].split()] == [0.90, 0.91, 0.92]
    frame = load_baseline(baseline)
    assert frame["seeds"].iloc[0] == (0, 1, 2) and frame["quick"].iloc[0] is False
    quick = _store(tmp_path / "q.sqlite", [_run("map", 0, 0.9, quick=True)])
    raw = pd.read_csv(write_baseline(quick, tmp_path / "q.csv"), dtype=str)
    assert set(raw["quick"]) == {"True"} and set(raw["seeds"]) == {"0"}
    # aggregates know their kind but not their seeds, nor the runs' settings
    raw = pd.read_csv(write_baseline(aggregate_store(store), tmp_path / "a.csv"), dtype=str,
                      keep_default_na=False)
    assert set(raw["quick"]) == {"False"} and set(raw["seeds"]) == {""}
    assert set(raw["ece_bins"]) == {""}


def test_a_complete_run_superseded_by_a_failed_rerun_fails_the_gate(store, baseline):
    # map seed 1 rerun under a new key (a method version bump), one minute later: it failed
    store.write(_run("map", 1, 0.0, key="map-toy-1-v2", finished="2025-01-01T00:02:00",
                     status="failed", error="ValueError: NaN loss (at mfvi.py:12)"))
    # the report still averages the older complete run of seed 1 ...
    agg = aggregate_store(store)
    acc = agg[(agg.label == "map") & (agg.split == "test") & (agg.metric == "accuracy")]
    assert acc["n"].item() == 3 and acc["mean"].item() == pytest.approx(0.91)
    # ... but the gate does not gate on it
    result = check_against_baseline(store, baseline)
    assert result.exit_code == 1
    assert len(result.failed) == BASELINE_ROWS_PER_PAIR
    assert {r.method for r in result.failed} == {"map"}
    assert {r.status for r in result.rows if r.method == "vi"} == {"ok"}
    row = _status(result, "map", "test", "accuracy")
    assert math.isnan(row.current) and math.isnan(row.delta) and row.baseline == 0.91
    assert row.detail == ("seed 1: run map-toy-1-v2, finished 2025-01-01T00:02:00 failed: "
                          "ValueError: NaN loss (at mfvi.py:12)")
    assert result.summary() == "FAIL: 23 ok, 0 improved, 0 regressed, 0 missing, 23 failed"
    # the failed run rerun to completion (same key, later): gated again, on its numbers
    store.write(_run("map", 1, 0.97, 0.10, key="map-toy-1-v2", finished="2025-01-01T00:03:00"))
    row = _status(check_against_baseline(store, baseline), "map", "test", "accuracy")
    assert (row.status, row.current) == ("ok", pytest.approx((0.90 + 0.97 + 0.92) / 3))


def test_latest_is_the_last_finished_run_ties_by_key(store, baseline):
    # same second as the complete run "map-toy-1-f": the greater key is the later run
    store.write(_run("map", 1, 0.0, key="map-toy-1-a", status="failed", error="boom"))
    assert check_against_baseline(store, baseline).exit_code == 0
    store.write(_run("map", 1, 0.0, key="map-toy-1-g", status="failed", error="boom"))
    assert check_against_baseline(store, baseline).exit_code == 1
    frame = pd.DataFrame({"key": ["b", "a", "c", "d"], "label": "m", "dataset": "t",
                          "seed": [0, 0, 1, 1],
                          "finished_at": ["2025-01-01T00:00:01", "2025-01-01T00:00:01",
                                          None, "2025-01-01T00:00:00"]})
    assert sorted(latest_runs(frame)["key"]) == ["b", "d"]  # no finishing time = oldest
    assert sorted(select_runs(frame.assign(quick=False), False)[0]["key"]) == ["b", "d"]


def test_every_run_failed_is_exit_1_not_a_store_error(store, baseline, tmp_path):
    for label in ("map", "vi"):
        for seed in range(3):
            store.write(_run(label, seed, 0.0, key=f"{label}-{seed}-v2", status="failed",
                             finished="2025-01-02T00:00:00", error="RuntimeError: oom"))
    result = check_against_baseline(store, baseline)
    assert result.exit_code == 1 and len(result.failed) == len(result.rows) == 46
    assert result.rows[0].detail.count("RuntimeError: oom") == 3  # one per seed


def test_failed_run_of_the_other_kind_is_not_counted(store, baseline):
    store.write(_run("map", 1, 0.0, key="map-q", quick=True, finished="2025-01-02T00:00:00",
                     status="failed", error="boom"))
    assert check_against_baseline(store, baseline).exit_code == 0


def test_kind_is_read_from_the_baseline(tmp_path):
    full = [_run(m, s, a) for m, a in (("map", 0.9), ("vi", 0.8)) for s in range(3)]
    store = _store(tmp_path / "r.sqlite", full)
    full_base = write_baseline(store, tmp_path / "full.csv")
    store.write(_run("map", 0, 0.5, quick=True))
    store.write(_run("vi", 0, 0.4, quick=True))
    quick_base = write_baseline(store, tmp_path / "quick.csv", quick=True)
    # no flag: each baseline is checked against its own kind, although full runs exist
    assert check_against_baseline(store, quick_base).quick is True
    assert check_against_baseline(store, quick_base).exit_code == 0
    assert check_against_baseline(store, full_base).quick is False
    with pytest.raises(BaselineError) as info:
        check_against_baseline(store, quick_base, quick=False)
    assert str(info.value) == (
        f"baseline {quick_base} was written from quick runs (seeds 0), but full runs were "
        "asked for (--full): pass --quick (or neither flag, to follow the baseline), or write "
        f"a full baseline with `bayesbench report --full --write-baseline {quick_base}`")
    with pytest.raises(BaselineError, match="from full runs .seeds 0, 1, 2., but quick runs"):
        check_against_baseline(store, full_base, quick=True)
    with pytest.raises(BaselineError, match="hold full runs: pass quick aggregates"):
        check_against_baseline(aggregate_store(store, quick=False), quick_base)


def test_old_format_baseline_still_loads_and_says_its_kind_is_unknown(store, baseline):
    frame = load_baseline(_old_format(baseline))
    assert frame["quick"].isna().all() and frame["seeds"].isna().all()
    result = check_against_baseline(store, baseline)
    assert result.exit_code == 0 and result.quick is False
    assert {r.status for r in result.rows} == {"ok"}
    assert result.notes == [
        f"baseline {baseline} does not record whether it was written from quick or full runs "
        "(an older format): checked against the full runs, the default; pass --quick/--full "
        "to choose, or write it again with `bayesbench report --full --write-baseline "
        f"{baseline}` to record its kind and seeds"]
    assert "as --full asks; write it again" in check_against_baseline(
        store, baseline, quick=False).notes[0]
    # failures are still seen
    store.write(_run("vi", 2, 0.0, key="vi-v2", finished="2025-01-02T00:00:00",
                     status="failed", error="boom"))
    assert {r.method for r in check_against_baseline(store, baseline).failed} == {"vi"}


def test_baseline_over_seeds_the_store_lacks_is_not_like_for_like(baseline, tmp_path):
    one_seed = _store(tmp_path / "one.sqlite", [_run("map", 0, 0.9), _run("vi", 0, 0.8)])
    with pytest.raises(BaselineError) as info:
        check_against_baseline(one_seed, baseline)
    assert str(info.value) == (
        f"baseline {baseline} was written from full runs (seeds 0, 1, 2), but store "
        f"{one_seed.path} has full runs for seeds 0 only (none for 1, 2): means over other "
        "seeds are not like for like; run them (`bayesbench run --seeds 0,1,2`), or write a "
        f"baseline from the seeds you run (`bayesbench report --full --write-baseline "
        f"{baseline}`)")


def test_current_means_are_taken_over_the_baseline_seeds_only(store, tmp_path):
    seed0 = _store(tmp_path / "seed0.sqlite",
                   [fake_result("map", "toy", 0, 0.90, 0.10), fake_result("vi", "toy", 0, 0.80,
                                                                          0.03)])
    base = write_baseline(seed0, tmp_path / "seed0.csv")
    result = check_against_baseline(store, base)  # the store has seeds 0, 1, 2
    row = _status(result, "map", "test", "accuracy")
    assert (row.current, row.delta, row.status) == (0.90, 0.0, "ok")  # not the mean 0.91
    assert result.exit_code == 0
    assert result.notes == [f"store {store.path} also has full runs for seed(s) 1, 2, which "
                            f"baseline {base} does not average: current means are taken over "
                            "the baseline's seeds 0 only"]
    # a failure in a seed outside the baseline's still fails its (method, dataset)
    store.write(_run("vi", 2, 0.0, key="vi-v2", finished="2025-01-02T00:00:00",
                     status="failed", error="boom"))
    assert {r.method for r in check_against_baseline(store, base).failed} == {"vi"}


def test_a_method_lacking_a_baseline_seed_is_missing(baseline, tmp_path):
    runs = [_run("vi", s, 0.80 + 0.01 * s, 0.03) for s in range(3)]
    runs += [_run("map", s, 0.90 + 0.01 * s, 0.10) for s in range(2)]
    result = check_against_baseline(_store(tmp_path / "r.sqlite", runs), baseline)
    assert result.exit_code == 1 and {r.method for r in result.missing} == {"map"}
    assert len(result.missing) == BASELINE_ROWS_PER_PAIR
    assert result.missing[0].detail == "no complete run for seed(s) 2"


def test_other_ece_binning_is_bad_input_other_settings_a_note(baseline, tmp_path):
    runs = [_run(m, s, a + 0.01 * s, e, ece_bins=15, config_hash="cfg999")
            for m, a, e in (("map", 0.90, 0.10), ("vi", 0.80, 0.03)) for s in range(3)]
    with pytest.raises(BaselineError) as info:
        check_against_baseline(_store(tmp_path / "bins.sqlite", runs), baseline)
    assert str(info.value) == (
        f"baseline {baseline} holds ECE over 5 bins but the full runs of map on toy (and 1 "
        "more) use 15 (evaluation.ece_bins): ece, mce and adaptive_ece are not comparable; "
        "evaluate with evaluation.ece_bins: 5, or write a full baseline with `bayesbench "
        f"report --full --write-baseline {baseline}`")
    runs = [dataclasses.replace(r, spec={**r.spec, "evaluation": {"ece_bins": 5}})
            for r in runs]
    result = check_against_baseline(_store(tmp_path / "cfg.sqlite", runs), baseline)
    assert result.exit_code == 0
    assert result.notes == ["settings changed since the baseline for 2 (method, dataset) "
                            "pair(s), e.g. map on toy (config cfg123 → cfg999): a setting or "
                            "a method version changed; gated all the same"]


_HEADER = "method,dataset,split,metric,value,higher_is_better,tolerance,quick,seeds"


@pytest.mark.parametrize("rows, message", [
    ("map,toy,test,ece,0.1,False,0.02,maybe,0", "quick 'maybe' is not a boolean"),
    ("map,toy,test,ece,0.1,False,0.02,True,a", "seeds 'a' are not integers"),
    ("map,toy,test,ece,0.1,False,0.02,True,0\nmap,toy,test,nll,0.1,False,0.02,False,0",
     r"mixes quick and full rows \(quick on lines 2\)"),
    ("map,toy,test,ece,0.1,False,0.02,True,0 1\nmap,toy,test,nll,0.1,False,0.02,True,0",
     r"row 2 \(line 3\) gives map on toy other seeds"),
])
def test_malformed_provenance_raises_baseline_error(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"{_HEADER}\n{rows}\n")
    with pytest.raises(BaselineError, match=message):
        load_baseline(path)


def test_cli_failed_run_and_kind_mismatch(store, baseline, tmp_path, run_cli):
    store.write(_run("map", 1, 0.0, key="map-toy-1-v2", finished="2025-01-01T00:02:00",
                     status="failed", error="ValueError: NaN loss [epoch 3]"))
    failed = run_cli("check", "--baseline", str(baseline), "--store", str(store.path))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert ("failed: map on toy: seed 1: run map-toy-1-v2, finished 2025-01-01T00:02:00 "
            "failed: ValueError: NaN loss [epoch 3]") in failed.stdout
    assert "46 checked, 0 regressed, 0 missing, 23 failed" in failed.stdout
    assert "(full runs)" in failed.stdout

    quick = _store(tmp_path / "q.sqlite", [_run("map", 0, 0.9, quick=True),
                                           _run("vi", 0, 0.8, quick=True)])
    quick_base = write_baseline(quick, tmp_path / "quick.csv")
    # a quick baseline against a store of full runs only, no flag given
    wrong = run_cli("check", "--baseline", str(quick_base), "--store", str(store.path))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    message = " ".join(wrong.stderr.split())
    assert (f"error: baseline {quick_base} was written from quick runs (seeds 0), but store "
            f"{store.path} has no quick runs (it has 7 full runs over seeds 0, 1, 2): run "
            "`bayesbench run --quick` first, or write a full baseline with `bayesbench report "
            f"--full --write-baseline {quick_base}`") in message
    flag = run_cli("check", "--baseline", str(quick_base), "--store", str(quick.path), "--full")
    assert flag.returncode == 2
    assert "but full runs were asked for (--full): pass --quick" in " ".join(flag.stderr.split())


# ------------------------------------------------------------ significance (as asv compare)

def _store_with(tmp_path, name, map_accuracies):
    store = ResultStore(tmp_path / name)
    for seed, acc in enumerate(map_accuracies):
        store.write(fake_result("map", "toy", seed, acc, 0.10))
    return store


def test_a_change_within_seed_noise_is_marked_not_failed(tmp_path):
    """Baseline map accuracy 0.90/0.91/0.92. A noisy current run (0.95/0.80/0.84: mean 0.047
    lower, beyond the 0.02 tolerance) is not significant: ok, marked ~. A consistent drop of
    0.03 on every seed is: regressed."""
    base = write_baseline(_store_with(tmp_path, "b.sqlite", [0.90, 0.91, 0.92]),
                          tmp_path / "base.csv")
    noisy = check_against_baseline(_store_with(tmp_path, "n.sqlite", [0.95, 0.80, 0.84]), base)
    row = _status(noisy, "map", "test", "accuracy")
    assert row.delta == pytest.approx(-0.0467, abs=1e-4) and row.delta < -row.tolerance
    from scipy import stats
    assert row.p_value == pytest.approx(
        stats.ttest_rel([0.95, 0.80, 0.84], [0.90, 0.91, 0.92]).pvalue)
    assert row.p_value > 0.05 and (row.status, row.mark) == ("ok", "~")
    assert noisy.exit_code == 0
    worse = check_against_baseline(_store_with(tmp_path, "w.sqlite", [0.87, 0.88, 0.89]), base)
    row = _status(worse, "map", "test", "accuracy")
    assert (row.status, row.mark, row.p_value) == ("regressed", "", 0.0)
    assert worse.exit_code == 1
    # nll = 1 − accuracy moves the other way: improved, significantly
    assert _status(worse, "map", "test", "nll").status == "ok"  # 0.03 < tolerance 0.05


def test_fewer_than_three_seeds_or_old_baselines_use_the_tolerance_alone(tmp_path):
    base = write_baseline(_store_with(tmp_path, "b.sqlite", [0.90, 0.91]), tmp_path / "b.csv")
    row = _status(check_against_baseline(_store_with(tmp_path, "n.sqlite", [0.95, 0.80]), base),
                  "map", "test", "accuracy")
    assert row.status == "regressed" and math.isnan(row.p_value)
    # a baseline without seed_values (the format before it) is read and gated as before
    base3 = write_baseline(_store_with(tmp_path, "b3.sqlite", [0.90, 0.91, 0.92]),
                           tmp_path / "b3.csv")
    pd.read_csv(base3).drop(columns="seed_values").to_csv(base3, index=False)
    result = check_against_baseline(_store_with(tmp_path, "n3.sqlite", [0.95, 0.80, 0.84]),
                                    base3)
    row = _status(result, "map", "test", "accuracy")
    assert row.status == "regressed" and math.isnan(row.p_value)


def test_a_hand_edited_value_drops_its_seed_values_with_a_note(store, baseline):
    _edit(baseline, "map", "test", "accuracy", value=0.94)  # seed values still average 0.91
    result = check_against_baseline(store, baseline)
    assert _status(result, "map", "test", "accuracy").status == "regressed"
    assert any("1 baseline row(s)" in n and "tolerance alone" in n for n in result.notes)


def test_malformed_seed_values_raise_baseline_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(f"{_HEADER},ece_bins,config_hash,seed_values\n"
                    "map,toy,test,ece,0.1,False,0.02,False,0 1,5,c,0.1 x\n")
    with pytest.raises(BaselineError, match="seed_values '0.1 x' are not numbers"):
        load_baseline(path)
    path.write_text(f"{_HEADER},ece_bins,config_hash,seed_values\n"
                    "map,toy,test,ece,0.1,False,0.02,False,0 1,5,c,0.1\n")
    with pytest.raises(BaselineError, match="1 seed_values for 2 seeds"):
        load_baseline(path)


def test_cli_names_each_failing_row_with_difference_and_p_value(tmp_path, run_cli):
    base = write_baseline(_store_with(tmp_path, "b.sqlite", [0.90, 0.91, 0.92]),
                          tmp_path / "base.csv")
    worse = _store_with(tmp_path, "w.sqlite", [0.87, 0.88, 0.89])
    res = run_cli("check", "--baseline", str(base), "--store", str(worse.path))
    assert res.returncode == 1, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert ("regressed: map on toy, test accuracy: baseline 0.9100, current 0.8800, "
            "difference -0.0300 (tolerance 0.02), p = 0") in out
    noisy = _store_with(tmp_path, "n.sqlite", [0.95, 0.80, 0.84])
    res = run_cli("check", "--baseline", str(base), "--store", str(noisy.path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "~" in res.stdout and "within seed noise" in res.stdout


def _on_cpu(run, cpu):
    return dataclasses.replace(run, versions={**run.versions, "cpu": cpu})


def test_the_baseline_records_its_cpu_and_another_cpu_is_gated_with_a_note(tmp_path):
    """The baseline keeps the CPU model(s) its runs recorded (names with spaces and commas
    round-trip); runs checked on another CPU type are gated all the same, with a note that
    says why values may move and what to do; the same CPU, or a baseline that records none,
    gives no note."""
    xeon, epyc = "Intel(R) Xeon(R) Platinum 8481C, 2 cores", "AMD EPYC 9B14"
    runs = [_run("map", s, 0.9 + 0.01 * s) for s in range(3)]
    written = _store(tmp_path / "a.sqlite", [_on_cpu(r, xeon) for r in runs])
    path = write_baseline(written, tmp_path / "b.csv")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert set(raw["cpu"]) == {xeon}
    frame = load_baseline(path)
    assert set(frame["cpu"]) == {(xeon,)}
    assert check_against_baseline(written, path).notes == []
    assert check_against_baseline(written, frame).notes == []  # a frame round-trips it too

    other = _store(tmp_path / "o.sqlite", [_on_cpu(r, epyc) for r in runs])
    result = check_against_baseline(other, path)
    assert result.passed  # same values: gated all the same, only noted
    (note,) = [n for n in result.notes if "CPU" in n]
    assert xeon in note and epyc in note and "write the baseline on the machine type" in note

    mixed = _store(tmp_path / "m.sqlite", [_on_cpu(runs[0], xeon), _on_cpu(runs[1], epyc),
                                           _on_cpu(runs[2], xeon)])
    assert set(pd.read_csv(write_baseline(mixed, tmp_path / "m.csv"), dtype=str)["cpu"]) == {
        f"{epyc}; {xeon}"}
    assert load_baseline(tmp_path / "m.csv")["cpu"].iloc[0] == (epyc, xeon)
    # no CPU on one side: nothing to compare, no note
    unknown = _store(tmp_path / "u.sqlite", runs)
    assert not [n for n in check_against_baseline(unknown, path).notes if "CPU" in n]
    assert not [n for n in check_against_baseline(other, _old_format(
        write_baseline(unknown, tmp_path / "old.csv"))).notes if "CPU" in n]
