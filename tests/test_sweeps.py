"""Sweep curves in the report: grouped members, hand-computed means, the PNG and its section."""

from __future__ import annotations

import matplotlib.image
import pytest

from bayesbench.report import write_report
from bayesbench.report.sweeps import (
    reference_means,
    sweep_png,
    sweep_summary,
    use_log_axis,
    write_sweeps,
)
from bayesbench.results import MetricValue, RunResult
from bayesbench.store import ResultStore

SCALES = (0.1, 1.0, 10.0)
TEMPERATURES = (1.0, 0.1)


def fake_run(label, seed, nll, *, method="mfvi", group=None, swept=None, dataset="toy"):
    """A complete run with test nll as given, accuracy = 1 - nll / 2, ece = nll / 10."""
    metrics = [MetricValue("test", "nll", nll), MetricValue("test", "accuracy", 1 - nll / 2),
               MetricValue("test", "ece", nll / 10),
               MetricValue("shift/noise/1", "accuracy", 0.5),
               MetricValue("cost", "train_seconds", 1.0),
               MetricValue("cost", "num_parameters", 100.0)]
    return RunResult(key=f"{label}-{dataset}-{seed}", label=label, method=method,
                     dataset=dataset, seed=seed, config_hash="cfg", quick=False,
                     status="complete", metrics=metrics,
                     spec={"group": group or label, "swept": swept or {},
                           "evaluation": {"ece_bins": 15}})


def sweep_runs():
    """mfvi members: nll = 0.5 + |log10 scale| * 0.2 + (0.1 if T = 1) + 0.02 * seed."""
    runs = [fake_run("map", s, 0.40 + 0.02 * s, method="map") for s in range(3)]
    for scale in SCALES:
        for t in TEMPERATURES:
            label = f"mfvi@prior_scale={scale}+temperature={t}"
            for s in range(2):
                nll = 0.5 + abs({0.1: -1, 1.0: 0, 10.0: 1}[scale]) * 0.2 \
                    + (0.1 if t == 1.0 else 0.0) + 0.02 * s
                runs.append(fake_run(label, s, nll, group="mfvi",
                                     swept={"prior_scale": scale, "temperature": t}))
    return runs


def test_sweep_summary_means_over_seeds():
    summary = sweep_summary(sweep_runs())
    assert len(summary) == 6 and set(summary["group"]) == {"mfvi"}  # map is not swept
    row = summary[summary["label"] == "mfvi@prior_scale=10.0+temperature=1.0"].iloc[0]
    assert row["swept"] == {"prior_scale": 10.0, "temperature": 1.0}
    assert row["nll_mean"] == pytest.approx(0.81)  # 0.5 + 0.2 + 0.1 + mean(0, 0.02)
    assert row["nll_std"] == pytest.approx(0.02 / 2**0.5)
    assert row["nll_n"] == 2
    assert row["accuracy_mean"] == pytest.approx(1 - 0.81 / 2)
    assert reference_means(sweep_runs(), "toy")["nll"] == pytest.approx(0.42)
    assert reference_means(sweep_runs(), "other") == {}


def test_log_axis_only_for_positive_numbers_spanning_more_than_ten_times():
    assert use_log_axis([0.1, 1.0, 10.0])
    assert not use_log_axis([1.0, 2.0, 10.0])  # exactly 10×: linear
    assert not use_log_axis([0.0, 1.0, 100.0])
    assert not use_log_axis(["all", "mlp"])
    assert not use_log_axis([])


def test_report_draws_the_sweep_png_and_links_it(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    for run in sweep_runs():
        store.write(run)
    paths = write_report(store, tmp_path / "out")
    png = tmp_path / "out" / "sweep_toy_mfvi.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    # two swept parameters -> two rows of three metric panels: wider than tall, but not flat
    assert image.shape[1] > image.shape[0] > 300
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    section = md[md.index("## Sweeps"):]
    assert "### mfvi on toy" in section
    assert "![Sweep of mfvi on toy](sweep_toy_mfvi.png)" in section
    assert ("Lowest test NLL: `mfvi@prior_scale=1.0+temperature=0.1` (0.510; accuracy 0.745, "
            "ECE 0.051), 6 members.") in section


def test_no_sweeps_no_section(tmp_path):
    paths, md = write_sweeps([fake_run("map", 0, 0.4, method="map")], tmp_path)
    assert (paths, md) == ([], [])
    assert not list(tmp_path.iterdir())


def test_categorical_sweep_values_are_drawn(tmp_path):
    runs = [fake_run(f"mfvi@subset={s}", 0, nll, group="mfvi", swept={"subset": s})
            for s, nll in [("all", 0.9), ("last_layer", 0.6), ("mlp", 0.7)]]
    summary = sweep_summary(runs)
    data = sweep_png("toy", "mfvi", summary, reference={"nll": 0.5})
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    paths, md = write_sweeps(runs, tmp_path)
    assert [p.name for p in paths] == ["sweep_toy_mfvi.png"]
    assert any("`mfvi@subset=last_layer` (0.600" in line for line in md)
