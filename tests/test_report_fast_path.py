"""Remembered reports (bayesbench/report_plan.py): a report whose inputs are unchanged is
answered from the folder, byte for byte what the ordinary path prints and leaves; anything a
report reads that changed sends it down the ordinary path, whose files are then those of a
fresh report."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from fake_results import fake_result

import bayesbench.report as report_package
from bayesbench import cli, report_plan
from bayesbench.predictions import SplitPredictions, encode
from bayesbench.report import grid as grid_module
from bayesbench.report import write_report
from bayesbench.report.render import MANIFEST
from bayesbench.results import MetricValue
from bayesbench.store import ResultStore

KEYS = ["map-toy-0-f", "map-toy-1-f", "vi-toy-0-f", "vi-toy-1-f", "map-toy-2-f"]
BOOKKEEPING = {MANIFEST, grid_module.GRID_RECORD}


def _predictions(seed: int, label: str) -> bytes:
    """Test-set predictions of 24 examples, so that the per-example tests run too."""
    q = np.random.default_rng([seed, len(label)]).uniform(0.2, 0.9, 24)
    return encode({"test": SplitPredictions(np.stack([q, 1 - q], axis=1),
                                            labels=np.arange(24) % 2)})


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no benchmarks.yaml here: no --config unless given
    monkeypatch.delenv(report_plan.SWITCH, raising=False)
    store = ResultStore(tmp_path / "results.sqlite")
    for label, accs in {"map": [0.90, 0.92], "vi": [0.80, 0.85]}.items():
        for seed, acc in enumerate(accs):
            run = fake_result(label, "toy", seed, acc, 0.1 + seed / 100)
            run.predictions = _predictions(seed, label)
            store.write(run)
    store.write(fake_result("vi", "toy", 7, 0.5, 0.5, status="failed", error="NaN"))
    store.write(fake_result("map", "toy", 0, 0.3, 0.2, quick=True))  # the other kind
    return store


def _report(monkeypatch, capsys, *args: str) -> tuple[bool, str]:
    """``bayesbench report ARGS`` in this process: (whether the ordinary path wrote the
    report, what it printed)."""
    calls = []

    def spy(*a, **kw):
        calls.append(a)
        return write_report(*a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(report_package, "write_report", spy)
        mp.setattr("sys.argv", ["bayesbench", "report", *args])
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr()
    captured = capsys.readouterr()
    assert captured.err == ""
    return bool(calls), captured.out


def _files(folder) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder`` (the hidden ones too): name -> (bytes, mtime in ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _assert_as_fresh(folder, tmp_path, **kwargs) -> None:
    """The report files of ``folder`` are those a report into an empty folder writes now."""
    fresh = tmp_path / "fresh"
    write_report("results.sqlite", fresh, **kwargs)
    made = {p.name for p in fresh.iterdir()} - BOOKKEEPING
    assert made <= {p.name for p in folder.iterdir()}
    for name in sorted(made):
        assert (folder / name).read_bytes() == (fresh / name).read_bytes(), name


ARGS = ("--store", "results.sqlite", "--out", "out")


def test_an_unchanged_report_is_answered_from_the_folder(store, tmp_path, monkeypatch,
                                                         capsys):
    wrote, printed = _report(monkeypatch, capsys, *ARGS)
    assert wrote and "wrote out/leaderboard.md" in printed and "wrote out/report.html" in printed
    before = _files(tmp_path / "out")
    again, printed_again = _report(monkeypatch, capsys, *ARGS)
    assert not again  # answered from the folder
    assert printed_again == printed
    assert _files(tmp_path / "out") == before  # not one byte nor one mtime changed
    # and it is what the ordinary path prints now
    monkeypatch.setenv(report_plan.SWITCH, "0")
    forced, printed_ordinary = _report(monkeypatch, capsys, *ARGS)
    assert forced and printed_ordinary == printed
    record = json.loads((tmp_path / "out" / MANIFEST).read_text())[report_plan.RECORD_KEY]
    assert [f[0] for f in record["files"]][0] == "leaderboard.md"
    assert len(record["files"]) == printed.count("wrote ")


def _new_run(store, tmp_path):
    store.write(fake_result("map", "toy", 2, 0.95, 0.12))


def _failed_run_rerun_complete(store, tmp_path):
    store.write(fake_result("vi", "toy", 7, 0.7, 0.2))  # the failure is replaced


def _status_changed_in_place(store, tmp_path):
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE runs SET status = 'failed' WHERE key = 'vi-toy-1-f'")


def _rescored(store, tmp_path):
    run = store.get("map-toy-1-f")
    metrics = [MetricValue(m.split, m.metric, m.value + 0.01) for m in run.metrics
               if m.split == "test"]
    store.replace_metrics(run.key, metrics, run.spec, run.reliability)


def _metric_value_updated_in_place(store, tmp_path):
    with sqlite3.connect(store.path) as con:  # same rows, same rowids, one other value
        con.execute("UPDATE metrics SET value = 0.5 WHERE key = 'map-toy-0-f' "
                    "AND split = 'test' AND metric = 'accuracy'")


def _finish_time_changed(store, tmp_path):
    with sqlite3.connect(store.path) as con:  # decides which run of a label is the latest
        con.execute("UPDATE runs SET finished_at = '2026-01-01T00:00:00' "
                    "WHERE key = 'map-toy-0-f'")


def _predictions_changed_in_place(store, tmp_path):
    with sqlite3.connect(store.path) as con:  # same row, other bytes
        con.execute("UPDATE predictions SET data = ? WHERE key = 'vi-toy-0-f'",
                    (_predictions(5, "vi"),))


def _output_deleted(store, tmp_path):
    (tmp_path / "out" / "summary.csv").unlink()


def _output_edited(store, tmp_path):
    board = tmp_path / "out" / "leaderboard.md"
    stat = board.stat()
    text = board.read_bytes()
    board.write_bytes(text.replace(b"map", b"MAP", 1))  # same size, same mtime
    os.utime(board, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _figure_replaced(store, tmp_path):
    (tmp_path / "out" / "cd_diagram.png").write_bytes(b"not a png")


def _code_changed(store, tmp_path, monkeypatch):
    real = report_plan.code_digest
    monkeypatch.setattr(report_plan, "code_digest", lambda: real() + b"edited")


@pytest.mark.parametrize("change", [
    _new_run, _failed_run_rerun_complete, _status_changed_in_place, _rescored,
    _metric_value_updated_in_place, _finish_time_changed, _predictions_changed_in_place,
    _output_deleted, _output_edited, _figure_replaced, _code_changed,
], ids=lambda f: f.__name__.strip("_"))
def test_a_changed_input_takes_the_ordinary_path(change, store, tmp_path, monkeypatch,
                                                 capsys):
    _report(monkeypatch, capsys, *ARGS)
    if change is _code_changed:
        change(store, tmp_path, monkeypatch)
    else:
        change(store, tmp_path)
    wrote, _ = _report(monkeypatch, capsys, *ARGS)
    assert wrote
    _assert_as_fresh(tmp_path / "out", tmp_path)
    again, _ = _report(monkeypatch, capsys, *ARGS)  # recorded: unchanged from here
    assert not again


def test_the_kind_of_runs_is_part_of_the_inputs(store, tmp_path, monkeypatch, capsys):
    assert _report(monkeypatch, capsys, *ARGS)[0]
    quick, printed_quick = _report(monkeypatch, capsys, *ARGS, "--quick")
    assert quick and "replacing out/leaderboard.md (4 complete full runs)" in printed_quick
    _assert_as_fresh(tmp_path / "out", tmp_path, quick=True)
    again, printed_again = _report(monkeypatch, capsys, *ARGS, "--quick")
    assert not again
    # the replacement note is not said again, as the ordinary path would not say it
    assert "note:" not in printed_again
    assert printed_again == printed_quick[printed_quick.index("wrote "):]
    back, _ = _report(monkeypatch, capsys, *ARGS)
    assert back
    # `--full` is what the report picks here without a flag: the same inputs
    assert not _report(monkeypatch, capsys, *ARGS, "--full")[0]


def test_an_edited_config_takes_the_ordinary_path(store, tmp_path, monkeypatch, capsys):
    if report_plan.run_plan.device_type_without_torch("auto") is None:
        pytest.skip("a GPU device node: a report with a config is never remembered here")
    resolved = []

    def resolve(config_path, quick):
        resolved.append(config_path.read_text())
        return KEYS if "seeds: [0, 1, 2]" in resolved[-1] else KEYS[:4]

    monkeypatch.setattr(grid_module, "_resolve_keys", resolve)
    config = tmp_path / "bench.yaml"
    config.write_text("seeds: [0, 1, 2]\n")
    args = (*ARGS, "--config", "bench.yaml")
    wrote, printed = _report(monkeypatch, capsys, *args)
    assert wrote and "note: Partial grid: 4 of 5 runs" in printed
    again, printed_again = _report(monkeypatch, capsys, *args)
    assert not again and printed_again == printed  # the grid note is said again
    assert len(resolved) == 1

    config.write_text("seeds: [0, 1]\n")
    wrote, printed = _report(monkeypatch, capsys, *args)
    assert wrote and "note:" not in printed and len(resolved) == 2
    _assert_as_fresh(tmp_path / "out", tmp_path, config="bench.yaml")
    assert "All 4 runs of the full grid" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert not _report(monkeypatch, capsys, *args)[0]
    assert _report(monkeypatch, capsys, *ARGS)[0]  # no config: other inputs


def test_a_report_of_a_store_changed_while_it_was_written_is_not_remembered(
        store, tmp_path, monkeypatch):
    """The fingerprint is taken before the report reads the store: a run stored in between
    makes the next fingerprint differ."""
    plan = report_plan.lookup("results.sqlite", "out", None, None)
    assert plan.fingerprint and plan.remembered is None
    _new_run(store, tmp_path)
    notes: list[str] = []
    paths = write_report("results.sqlite", "out", notes=notes)
    report_plan.remember("out", plan, paths, notes)
    assert report_plan.lookup("results.sqlite", "out", None, None).remembered is None
    # the same steps with nothing stored in between are remembered
    plan = report_plan.lookup("results.sqlite", "out", None, None)
    paths = write_report("results.sqlite", "out", notes=notes)
    report_plan.remember("out", plan, paths, notes)
    assert report_plan.lookup("results.sqlite", "out", None, None).remembered is not None


def test_baselines_and_the_switch_take_the_ordinary_path(store, tmp_path, monkeypatch,
                                                         capsys):
    _report(monkeypatch, capsys, *ARGS)
    wrote, printed = _report(monkeypatch, capsys, *ARGS, "--write-baseline", "base.csv")
    assert wrote and printed.rstrip().endswith("wrote base.csv")
    assert (tmp_path / "base.csv").is_file()
    monkeypatch.setenv(report_plan.SWITCH, "0")
    assert _report(monkeypatch, capsys, *ARGS)[0]
    monkeypatch.setenv(report_plan.SWITCH, "1")
    assert not _report(monkeypatch, capsys, *ARGS)[0]


def test_unreadable_stores_and_folders_are_left_to_the_ordinary_path(tmp_path):
    assert report_plan.lookup(tmp_path / "none.sqlite", tmp_path, None, None).fingerprint is None
    (tmp_path / "not.sqlite").write_text("no database")
    assert report_plan.lookup(tmp_path / "not.sqlite", tmp_path, None, None).fingerprint is None


def test_the_file_names_are_those_of_the_report_package():
    assert report_plan.MANIFEST == MANIFEST
    assert report_plan.GRID_RECORD == grid_module.GRID_RECORD


def test_an_unchanged_report_imports_neither_pandas_nor_torch(store, tmp_path):
    script = ("import sys\nfrom bayesbench import cli\n"
              "sys.argv = ['bayesbench', 'report', *sys.argv[1:]]\n"
              "try:\n    cli.main()\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print('exit', code, 'pandas:', 'pandas' in sys.modules, "
              "'torch:', 'torch' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop(report_plan.SWITCH, None)
    runs = [subprocess.run([sys.executable, "-c", script, *ARGS], cwd=tmp_path, env=env,
                           capture_output=True, text=True) for _ in range(2)]
    assert "exit 0 pandas: True" in runs[0].stdout, runs[0].stderr
    assert "exit 0 pandas: False torch: False" in runs[1].stdout, runs[1].stderr
    assert runs[1].stdout.replace("False", "True") == runs[0].stdout.replace("False", "True")
