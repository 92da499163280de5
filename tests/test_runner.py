from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from bayesbench.config import expand, parse_config
from bayesbench.errors import ConfigError
from bayesbench.results import describe_metric_spec, metric_spec, run_metric_spec
from bayesbench.runner import resolve_device, run_grid, run_one
from bayesbench.store import ResultStore

TINY = {
    "seeds": [0],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 128, "max_eval": 48, "mc_samples": 2, "seeds": 2,
              "severities": 5},
    "datasets": ["digits"],
}

BROKEN = textwrap.dedent('''
    import torch
    from bayesbench.methods.map import MAP

    class Exploding(MAP):
        name = "exploding"
        description = "raises during fit"
        def fit(self, task, ctx):
            raise RuntimeError("boom")

    class NaNPredictor(MAP):
        name = "nan_predictor"
        description = "predicts NaN"
        def predict(self, x):
            return torch.full((1, len(x), 8), float("nan"))
''')


@pytest.fixture
def broken_methods(tmp_path, monkeypatch):
    (tmp_path / "broken_methods.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("broken_methods", None)


def test_run_one_records_metrics_on_every_split():
    spec = expand(parse_config({**TINY, "methods": ["map"]}), quick=True)[0]
    result = run_one(spec, torch.device("cpu"))
    assert result.status == "complete", result.error
    splits = {m.split for m in result.metrics}
    assert "test" in splits and "cost" in splits
    assert {s for s in splits if s.startswith("shift/")} >= {
        f"shift/gaussian_noise/{k}" for k in range(1, 6)}
    assert "ood/held_out_classes" in splits
    assert result.metric("cost", "num_parameters") > 0
    assert sum(result.reliability["counts"]) == 48
    assert result.versions["torch"] == torch.__version__
    assert "fit" not in splits  # map reports no diagnostics
    # the task's classes are stored beside the spec (reports name classes, mark chance), and
    # stay out of the run key
    assert result.spec["task"] == {"num_classes": 8,
                                   "class_names": [str(d) for d in range(8)]}
    assert result.key == spec.key and "task" not in spec.to_dict()
    # and so is how the metrics were computed (issue 10: ECE binning, confidence definition)
    bins = spec.evaluation["ece_bins"]
    assert result.spec["metric_spec"] == metric_spec(bins)
    assert result.spec["metric_spec"]["ece"] == {"bins": bins, "binning": "equal-width"}
    assert result.spec["metric_spec"]["adaptive_ece"]["binning"] == "equal-mass"
    assert "metric_spec" not in spec.to_dict()


def test_runs_stored_before_metric_specs_get_the_one_their_settings_imply():
    assert run_metric_spec({"evaluation": {"ece_bins": 10}}) == metric_spec(10)
    stored = {**metric_spec(15), "version": 2}
    assert run_metric_spec({"evaluation": {"ece_bins": 10}, "metric_spec": stored}) == stored
    assert run_metric_spec({}) is None
    assert describe_metric_spec(metric_spec(15)) == (
        "ECE and MCE over 15 equal-width bins, adaptive ECE over 15 equal-mass bins, of the "
        "max probability of the mean predictive (metric spec v1)")


def test_method_diagnostics_are_stored_under_the_fit_split_and_reported(tmp_path):
    """mfvi's posterior widths and laplace's chosen prior precision go to the store (split
    "fit") and into the report's "Fit diagnostics" tables, and the gate ignores them."""
    from bayesbench.report import check_against_baseline, write_baseline, write_report

    cfg = parse_config({**TINY, "methods": [
        "map", {"name": "mfvi", "params": {"init_sigma": 0.01}}, "laplace"]})
    store = ResultStore(tmp_path / "r.sqlite")
    run_grid(expand(cfg, quick=True, seeds=[0]), store, device=torch.device("cpu"))
    by_label = {r.label: r for r in store.results()}
    mfvi = {m.metric: m.value for m in by_label["mfvi"].metrics if m.split == "fit"}
    assert set(mfvi) == {"sigma_mean", "sigma_median", "sigma_max", "sigma_growth"}
    assert 0.01 <= mfvi["sigma_mean"] <= mfvi["sigma_max"]
    assert mfvi["sigma_growth"] == pytest.approx(mfvi["sigma_mean"] / 0.01)
    laplace = {m.metric: m.value for m in by_label["laplace"].metrics if m.split == "fit"}
    assert set(laplace) == {"prior_precision", "log_evidence", "posterior_seconds"}
    assert laplace["prior_precision"] > 0 and laplace["log_evidence"] < 0
    assert not [m for m in by_label["map"].metrics if m.split == "fit"]
    write_report(store, tmp_path / "report")
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    section = md[md.index("### Fit diagnostics"):]
    assert "**laplace**" in section and "**mfvi**" in section
    assert "| method | sigma_growth | sigma_max | sigma_mean | sigma_median |" in section
    write_baseline(store, tmp_path / "baseline.csv")
    gate = check_against_baseline(store, tmp_path / "baseline.csv")
    assert gate.rows and not gate.regressions and not gate.missing
    assert all(row.split != "fit" for row in gate.rows)


def test_same_seed_gives_identical_metrics():
    spec = expand(parse_config({**TINY, "methods": ["mc_dropout"]}), quick=True)[0]
    a, b = run_one(spec, torch.device("cpu")), run_one(spec, torch.device("cpu"))
    va = {(m.split, m.metric): m.value for m in a.metrics if m.split != "cost"}
    vb = {(m.split, m.metric): m.value for m in b.metrics if m.split != "cost"}
    assert va == vb


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path, broken_methods):
    cfg = parse_config({**TINY, "methods": ["broken_methods:Exploding", "map",
                                            "broken_methods:NaNPredictor"]})
    store = ResultStore(tmp_path / "r.sqlite")
    outcome = run_grid(expand(cfg, quick=True), store, device=torch.device("cpu"))
    status = {r.label: (r.status, r.error) for r in outcome.results}
    assert status["map"] == ("complete", None)
    assert status["Exploding"][0] == "failed" and "RuntimeError: boom" in status["Exploding"][1]
    assert status["NaNPredictor"][0] == "failed"
    assert "non-finite probabilities" in status["NaNPredictor"][1]
    assert len(store.completed_keys()) == 1
    assert {r.label for r in store.results(status="failed")} == {"Exploding", "NaNPredictor"}


def test_resume_skips_complete_runs_and_retries_failed_ones(tmp_path, broken_methods):
    cfg = parse_config({**TINY, "seeds": [0, 1],
                        "methods": ["map", "broken_methods:Exploding"]})
    specs = expand(cfg, quick=True)
    store = ResultStore(tmp_path / "r.sqlite")
    first = run_grid(specs[:1], store, device=torch.device("cpu"))
    assert [r.status for r in first.results] == ["complete"]
    second = run_grid(specs, store, device=torch.device("cpu"))
    assert [s.key for s in second.skipped] == [specs[0].key]
    assert len(second.results) == 3  # the rest, including the failing one
    third = run_grid(specs, store, device=torch.device("cpu"))
    assert len(third.skipped) == 2 and [r.label for r in third.results] == ["Exploding"] * 2


def test_worker_processes_give_the_same_numbers_as_serial(tmp_path):
    cfg = parse_config({**TINY, "seeds": [0, 1], "methods": ["map"]})
    specs = expand(cfg, quick=True)
    serial = run_grid(specs, ResultStore(tmp_path / "a.sqlite"), device=torch.device("cpu"))
    parallel = run_grid(specs, ResultStore(tmp_path / "b.sqlite"), device=torch.device("cpu"),
                        workers=2)
    def values(outcome):
        return {r.key: [(m.split, m.metric, m.value) for m in r.metrics if m.split != "cost"]
                for r in outcome.results}
    assert values(serial) == values(parallel)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or mps"):
        resolve_device("tpu")


def test_threads_and_device_enter_the_key_only_off_their_defaults(tmp_path,
                                                                  encoder_at_version_1):
    """--threads changes metrics by ~1e-8: a 2-thread run must not pass for a 1-thread one.
    (The built-in encoder pinned at version 1, whose keys predate these fields.)"""
    cfg = parse_config({**TINY, "methods": ["map"]})
    default, = expand(cfg, quick=True)
    assert (default.threads, default.device) == (1, "cpu")
    two, = expand(cfg, quick=True, threads=2)
    cuda, = expand(cfg, quick=True, device="cuda")
    assert len({default.key, two.key, cuda.key}) == 3
    assert len({default.config_hash, two.config_hash, cuda.config_hash}) == 3
    # keys of default runs are what they were before these fields existed
    legacy = {k: v for k, v in default.to_dict().items()
              if k not in ("threads", "device", "method_version", "dataset_version",
                           "backbone", "keep_predictions")}
    from bayesbench.config import _digest

    assert default.key == _digest(legacy)[:16]
    store = ResultStore(tmp_path / "r.sqlite")
    run_grid([default], store, device=torch.device("cpu"))
    again = run_grid([default], store, device=torch.device("cpu"), threads=2)
    assert not again.skipped and [r.key for r in again.results] == [two.key]
    assert again.results[0].spec["threads"] == 2
