"""A report says how much of the configured grid it holds ("2 of 4 runs"), takes the grid
from a remembered plan or its own record when it can, and says so when it replaces a
committed report."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from fake_results import fake_result

from bayesbench.report import grid as grid_module
from bayesbench.report import write_report
from bayesbench.report.grid import GRID_RECORD, GridCoverage
from bayesbench.store import ResultStore

KEYS = ["map-toy-0-f", "map-toy-1-f", "vi-toy-0-f", "vi-toy-1-f"]


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    store.write(fake_result("map", "toy", 0, 0.9, 0.1))
    store.write(fake_result("vi", "toy", 0, 0.8, 0.05))
    store.write(fake_result("map", "toy", 0, 0.5, 0.1, quick=True))  # another kind
    return store


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("seeds: [0, 1]\n")
    return path


def _resolver(calls, keys=KEYS):
    def resolve(config_path, quick):
        calls.append((config_path.name, quick))
        return list(keys)
    return resolve


def test_a_partial_grid_is_said_at_the_top_and_in_a_note(store, config, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(grid_module, "_resolve_keys", _resolver(calls))
    notes: list[str] = []
    write_report(store, tmp_path / "out", notes=notes, config=config)
    lines = (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
    line = (f"**Partial grid: 2 of 4 runs** of the full grid configured in `{config}` are in "
            "this report (2 not run, failed or run under other settings): rankings and tests "
            "cover only these.")
    assert lines.index(line) < lines.index("## Summary across datasets")
    assert notes == [line.replace("**", "")]
    assert calls == [("bench.yaml", False)]
    # the second report reads the grid from the folder's record: nothing is resolved again
    write_report(store, tmp_path / "out", notes=notes, config=config)
    assert calls == [("bench.yaml", False)]
    assert (tmp_path / "out" / GRID_RECORD).is_file()
    # another config (other bytes) is resolved anew; the quick runs are checked as quick
    config.write_text("seeds: [0]\n")
    write_report(store, tmp_path / "out", quick=True, config=config)
    assert calls[-1] == ("bench.yaml", True)
    assert "of the quick grid" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_complete_grid_says_so_without_a_note(store, config, tmp_path, monkeypatch):
    monkeypatch.setattr(grid_module, "_resolve_keys", _resolver([], KEYS[::2]))
    notes: list[str] = []
    write_report(store, tmp_path / "out", notes=notes, config=config)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert f"All 2 runs of the full grid configured in `{config}` are in this report." in md
    assert notes == []


def test_the_grid_comes_from_the_plan_run_remembered(store, config, tmp_path, monkeypatch):
    from bayesbench import run_plan

    fingerprint = run_plan.fingerprint(
        config, run_plan.GridFlags(None, None, None, False, None, "auto"))
    if fingerprint is None:
        pytest.skip("a GPU device node: the grid cannot be fingerprinted without torch")
    run_plan.remember(store.path, fingerprint, KEYS[:3], 0)

    def fail(*args):
        raise AssertionError("resolved the config although a plan was remembered")

    monkeypatch.setattr(grid_module, "_resolve_keys", fail)
    write_report(store, tmp_path / "out", config=config)
    assert "**Partial grid: 2 of 3 runs**" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_runs_outside_the_grid_are_counted():
    coverage = GridCoverage("b.yaml", False, configured=4, present=4, extra=1)
    assert coverage.line() == ("All 4 runs of the full grid configured in `b.yaml` are in this "
                               "report. 1 more run of this report is not in that grid.")


def test_a_real_config_is_resolved_into_its_run_keys(tmp_path):
    from bayesbench.config import expand, load_config

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "seeds": [0, 1], "model": {"d_model": 16, "heads": 2, "depth": 1},
        "training": {"epochs": 1}, "datasets": ["digits"],
        "methods": ["map", {"name": "mc_dropout", "params": {"samples": 2}}]}))
    specs = expand(load_config(path))
    store = ResultStore(tmp_path / "s.sqlite")
    for spec in specs[:3]:
        run = fake_result(spec.label, spec.dataset_label, spec.seed, 0.9, 0.1)
        run.key = spec.key
        store.write(run)
    notes: list[str] = []
    write_report(store, tmp_path / "out", notes=notes, config=path)
    assert f"3 of {len(specs)} runs" in notes[0] and len(specs) == 4


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_replacing_a_committed_report_says_so(store, tmp_path):
    out = tmp_path / "repo" / "reports"
    write_report(store, out)

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path / "repo", check=True, capture_output=True)

    git("init", "-q")
    git("add", "reports/leaderboard.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "report")
    notes: list[str] = []
    write_report(store, out, notes=notes)  # the same report: nothing to say
    assert notes == []
    store.write(fake_result("vi", "toy", 1, 0.85, 0.05))
    write_report(store, out, notes=notes)
    path = out / "leaderboard.md"
    assert notes == [f"replacing {path} (2 complete full runs) with a report of 3 complete full "
                     f"runs: the file is committed in git; `git diff -- {path}` shows what "
                     f"changed and `git checkout -- {path}` restores the committed report"]
    # a report into a folder outside git: only the usual note
    notes.clear()
    (tmp_path / "plain").mkdir()
    write_report(store, tmp_path / "plain", notes=notes)
    assert notes == []


def test_report_cli_checks_the_config_it_is_given(store, tmp_path, run_cli):
    res = run_cli("report", "--store", str(store.path), "--config", "missing.yaml")
    assert res.returncode == 2
    assert "--config missing.yaml: no such file" in res.stdout + res.stderr
    assert not (tmp_path / "reports").exists()


def test_a_config_that_cannot_be_read_leaves_the_report_without_the_count(store, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [no_such_method]\ndatasets: [digits]\n")
    notes: list[str] = []
    write_report(store, tmp_path / "out", notes=notes, config=bad)
    assert len(notes) == 1 and notes[0].startswith("no count of the configured grid: ")
    assert "no_such_method" in notes[0]
    assert "grid configured in" not in (tmp_path / "out" / "leaderboard.md").read_text()
