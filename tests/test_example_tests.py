"""Per-example paired tests against map (bayesbench/report/example_tests.py): the statistics
against scipy, hand-worked values and Monte Carlo, the per-example terms against the stored
metrics, and the report section from a real store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bayesbench.config import expand, parse_config
from bayesbench.metrics.classification import (
    accuracy,
    brier_score,
    negative_log_likelihood,
    per_example_brier,
    per_example_correct,
    per_example_nll,
)
from bayesbench.predictions import decode, decode_split
from bayesbench.report import write_report
from bayesbench.report.example_tests import (
    SHIFTED,
    example_tests,
    mcnemar_exact,
    split_losses,
    stratified_paired_t,
)
from bayesbench.runner import run_one
from bayesbench.store import ResultStore

TINY = {
    "seeds": [0, 1],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 96, "max_eval": 60, "mc_samples": 3, "seeds": 2,
              "severities": 5},
    "datasets": ["digits"],
    "methods": ["map", "mc_dropout", "temperature_scaling"],
}


def test_one_stratum_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(0.3, size=50)
    mean, p = stratified_paired_t([a - b])
    assert mean == pytest.approx(np.mean(a - b))
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)


def test_strata_hand_worked():
    # two strata: means 1 and 3 (mean of means 2); variances 1 and 4 over n = 4 and 5
    d1 = np.array([0.0, 1.0, 1.0, 2.0])          # mean 1, var (ddof 1) 2/3
    d2 = np.array([1.0, 2.0, 3.0, 4.0, 5.0])     # mean 3, var 2.5
    a = np.array([(2 / 3) / 4, 2.5 / 5])
    se = np.sqrt(a.sum() / 4)
    dof = a.sum() ** 2 / (a[0] ** 2 / 3 + a[1] ** 2 / 4)
    mean, p = stratified_paired_t([d1, d2])
    assert mean == pytest.approx(2.0)
    assert p == pytest.approx(2 * stats.t.sf(2.0 / se, dof), rel=1e-12)


def test_strata_test_holds_its_level_under_the_null():
    rng = np.random.default_rng(1)
    rejections = 0
    reps = 2000
    for _ in range(reps):  # three seeds of different size and noise, no true difference
        strata = [rng.standard_t(5, size=n) * s for n, s in ((40, 1.0), (60, 3.0), (30, 0.5))]
        rejections += stratified_paired_t(strata)[1] < 0.05
    assert 0.035 < rejections / reps < 0.065


def test_degenerate_differences():
    assert stratified_paired_t([np.zeros(5), np.zeros(3)]) == (0.0, 1.0)
    assert stratified_paired_t([np.full(5, 0.2)]) == (pytest.approx(0.2), 0.0)
    assert np.isnan(stratified_paired_t([np.array([1.0])])[1])


def test_mcnemar_exact_hand_worked():
    # 8 examples only the first model gets right, 2 only the second, 10 both: p = 2 P(X <= 2)
    a = np.array([1] * 8 + [0] * 2 + [1] * 10, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 10, bool)
    diff, p = mcnemar_exact(a, b)
    assert diff == pytest.approx(6 / 20)
    assert p == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(a, a) == (0.0, 1.0)


def test_per_example_terms_average_to_the_metrics_exactly():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4) * 0.3, size=200)
    p[0] = [1.0, 0.0, 0.0, 0.0]  # a confident miss: clipped at EPS
    y = rng.integers(0, 4, size=200)
    y[0] = 2
    assert float(np.mean(per_example_nll(p, y))) == negative_log_likelihood(p, y)
    assert float(np.mean(per_example_brier(p, y))) == brier_score(p, y)
    assert float(np.mean(per_example_correct(p, y))) == accuracy(p, y)


@pytest.fixture(scope="module")
def runs():
    specs = expand(parse_config(TINY), quick=True)
    out = [run_one(spec, torch.device("cpu")) for spec in specs]
    assert all(r.status == "complete" for r in out), [r.error for r in out]
    return out


def test_the_tests_pair_the_stored_predictions(runs):
    frame = pd.DataFrame([{"key": r.key, "label": r.label, "dataset": r.dataset,
                           "seed": r.seed} for r in runs])
    blobs = {r.key: r.predictions for r in runs}
    tests = example_tests(frame, blobs)
    assert set(tests["label"]) == {"mc_dropout", "temperature_scaling"}
    assert (tests["seeds"] == 2).all() and (tests["n"] == 120).all()
    assert decode_split(runs[0].predictions, "test").probs.tolist() == \
        decode(runs[0].predictions)["test"].probs.tolist()
    stored = {(r.label, r.seed): {m.metric: m.value for m in r.metrics if m.split == "test"}
              for r in runs}
    for _, row in tests[tests["metric"].isin(["nll", "brier"])].iterrows():
        # the mean per-example difference is the mean over seeds of the metric differences
        expected = np.mean([stored[(row["label"], s)][row["metric"]]
                            - stored[("map", s)][row["metric"]] for s in (0, 1)])
        assert row["diff"] == pytest.approx(expected, abs=1e-12)
    assert tests["p_holm"].ge(tests["p"]).all()
    assert set(tests["outcome"]) <= {"win", "tie", "loss"}
    # a run without predictions is not tested; one without map's seed is not paired
    partial = example_tests(frame, {k: v for k, v in blobs.items()
                                    if not (frame.set_index("key").loc[k, "label"] == "map"
                                            and frame.set_index("key").loc[k, "seed"] == 1)})
    assert (partial["seeds"] == 1).all() and (partial["n"] == 60).all()
    assert example_tests(frame, {}).empty


def test_shifted_sets_are_tested_per_example_on_the_mean_over_kinds_and_severities(runs):
    """digits' shifted sets corrupt the test examples: each example's losses are averaged
    over the 25 shifted splits, so the mean difference is the mean over seeds and splits of
    the stored shift metrics' differences, accuracy included (a t-test, not McNemar)."""
    frame = pd.DataFrame([{"key": r.key, "label": r.label, "dataset": r.dataset,
                           "seed": r.seed} for r in runs])
    blobs = {r.key: r.predictions for r in runs}
    tests = example_tests(frame, blobs, split=SHIFTED)
    assert set(tests["split"]) == {SHIFTED} and len(tests) == 2 * 3
    assert (tests["seeds"] == 2).all() and (tests["n"] == 120).all()
    shifted = {(r.label, r.seed): {(m.split, m.metric): m.value for m in r.metrics
                                   if m.split.startswith("shift/")} for r in runs}
    splits = sorted({s for s, _ in shifted[("map", 0)]})
    assert len(splits) == 25
    for _, row in tests.iterrows():
        expected = np.mean([shifted[(row["label"], seed)][(s, row["metric"])]
                            - shifted[("map", seed)][(s, row["metric"])]
                            for seed in (0, 1) for s in splits])
        assert row["diff"] == pytest.approx(expected, abs=1e-9)
    assert tests["p"].between(0, 1).all()


def test_shifted_sets_of_other_examples_are_not_tested():
    """A cohort shift (other patients per severity): no per-example pairing exists."""
    from bayesbench.predictions import SplitPredictions, encode

    probs = np.full((4, 2), 0.5)
    same = encode({"test": SplitPredictions(probs, labels=np.array([0, 1, 0, 1])),
                   "shift/cohort/1": SplitPredictions(probs, labels=np.array([0, 1, 1, 1])),
                   "shift/cohort/2": SplitPredictions(probs, labels=np.array([0, 1, 1, 1]))})
    other = encode({"shift/cohort/1": SplitPredictions(probs, labels=np.array([0, 1, 1, 1])),
                    "shift/cohort/2": SplitPredictions(probs, labels=np.array([1, 1, 0, 0]))})
    assert split_losses(same, SHIFTED)["nll"] == pytest.approx([np.log(2)] * 4)
    assert split_losses(other, SHIFTED) is None
    assert split_losses(encode({"test": SplitPredictions(probs, labels=np.zeros(4))}),
                        SHIFTED) is None


def test_the_report_shows_and_writes_them(tmp_path, runs):
    store = ResultStore(tmp_path / "s.sqlite")
    for r in runs:
        store.write(r)
    assert set(store.predictions_of([r.key for r in runs] + ["nope"])) == {r.key for r in runs}
    write_report(store, tmp_path / "rep", html=False)
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "## Per-example tests against map (test split)" in md
    assert "McNemar" in md and "digits 120 (2 seeds)" in md
    assert "## Per-example tests against map (shifted sets)" in md
    csv = pd.read_csv(tmp_path / "rep" / "example_tests.csv")
    assert len(csv) == 2 * 2 * 3 and set(csv["metric"]) == {"nll", "brier", "accuracy"}
    assert set(csv["split"]) == {"test", SHIFTED}


def test_a_degenerate_model_is_marked_and_not_counted():
    from bayesbench.report.example_tests import example_tests_markdown

    tests = pd.DataFrame([{"label": "collapsed", "dataset": "d", "split": "test", "metric": m,
                           "seeds": 1, "n": 100, "diff": -0.2, "p": 1e-4, "p_holm": 1e-4,
                           "outcome": "win"} for m in ("nll", "brier", "accuracy")])
    md = "\n".join(example_tests_markdown(tests, degenerate={("d", "collapsed")}))
    assert "| collapsed | **-0.200** ✓ † | 0/0/0 |" in md and "† not above chance" in md
    plain = "\n".join(example_tests_markdown(tests))
    assert "| collapsed | **-0.200** ✓ | 1/0/0 |" in plain and "†" not in plain


def _frame_and_blobs(runs):
    frame = pd.DataFrame([{"key": r.key, "label": r.label, "dataset": r.dataset,
                           "seed": r.seed} for r in runs])
    return frame, {r.key: r.predictions for r in runs}


@pytest.mark.parametrize("workers", [1, 2])
def test_one_read_per_blob_gives_the_per_split_tests(runs, workers):
    """all_example_tests (one decode per blob, in worker processes with workers=2) is the
    test split's then the shifted sets' example_tests, each decoding on its own."""
    from bayesbench.report.example_tests import all_example_tests, run_losses

    frame, blobs = _frame_and_blobs(runs)
    each = pd.concat([example_tests(frame, blobs, split=s) for s in ("test", SHIFTED)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(all_example_tests(frame, blobs, workers=workers), each)
    both = run_losses(runs[0].predictions)
    for split in ("test", SHIFTED):
        alone = split_losses(runs[0].predictions, split)
        assert set(both[split]) == set(alone) == {"nll", "brier", "accuracy", "labels"}
        for name in alone:
            assert np.array_equal(both[split][name], alone[name])
    assert all_example_tests(frame, blobs, reference=None).empty
    assert all_example_tests(frame, {}).empty


def test_decode_reads_only_the_fields_asked_for(runs):
    blob = runs[1].predictions  # mc_dropout: S > 1, so expected_entropy is stored
    full = decode(blob)["test"]
    only = decode(blob, lambda s: s == "test", fields=("probs",))["test"]
    assert full.expected_entropy is not None and only.expected_entropy is None
    assert only.labels is None and np.array_equal(only.probs, full.probs)
    assert only.samples == full.samples
    with pytest.raises(ValueError, match="no such stored field: prob"):
        decode(blob, fields=("prob",))


def test_the_csv_reads_back_as_computed(tmp_path):
    from bayesbench.report.example_tests import COLUMNS, read_example_tests

    frame = pd.DataFrame([
        {"label": "NA", "dataset": "1", "split": "test", "metric": "nll", "seeds": 2,
         "n": 10, "diff": 0.1 + 0.2, "p": float("nan"), "p_holm": float("nan"),
         "outcome": "untested"},
        {"label": "mfvi", "dataset": "1", "split": SHIFTED, "metric": "brier", "seeds": 1,
         "n": 7, "diff": -1e-17, "p": 1 / 3, "p_holm": 2 / 3, "outcome": "tie"}])[COLUMNS]
    frame.to_csv(tmp_path / "e.csv", index=False)
    pd.testing.assert_frame_equal(read_example_tests(tmp_path / "e.csv"), frame)
    pd.DataFrame(columns=COLUMNS).to_csv(tmp_path / "empty.csv", index=False)
    assert read_example_tests(tmp_path / "empty.csv").empty
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        read_example_tests(tmp_path / "other.csv")


def test_a_report_reads_current_tests_back_and_recomputes_changed_ones(tmp_path, runs,
                                                                        monkeypatch):
    """Writing the report again into its folder reads example_tests.csv back instead of
    decompressing every run's predictions, with the same leaderboard; a changed blob, or an
    edited CSV, is recomputed."""
    import bayesbench.report.leaderboard as leaderboard

    store = ResultStore(tmp_path / "s.sqlite")
    for r in runs:
        store.write(r)
    out = tmp_path / "rep"
    write_report(store, out, html=False)
    md, csv = (out / "leaderboard.md").read_bytes(), (out / "example_tests.csv").read_bytes()
    computed = []
    real = leaderboard.all_example_tests
    monkeypatch.setattr(leaderboard, "all_example_tests",
                        lambda *a, **k: computed.append(1) or real(*a, **k))
    write_report(store, out, html=False)
    assert computed == []
    assert (out / "leaderboard.md").read_bytes() == md
    assert (out / "example_tests.csv").read_bytes() == csv
    (out / "example_tests.csv").write_text("edited\n")
    write_report(store, out, html=False)
    assert computed == [1] and (out / "example_tests.csv").read_bytes() == csv
    # another run of map on seed 1 (same examples, other predictions): tests recomputed
    from bayesbench.predictions import SplitPredictions, encode

    old = next(r for r in runs if r.label == "map" and r.seed == 1)
    kept = decode(old.predictions)
    kept["test"] = SplitPredictions(np.full_like(kept["test"].probs, 0.1),
                                    labels=kept["test"].labels)
    store.write(dataclasses.replace(old, predictions=encode(kept),
                                    finished_at="2099-01-01T00:00:00+00:00"))
    write_report(store, out, html=False)
    assert computed == [1, 1] and (out / "example_tests.csv").read_bytes() != csv
