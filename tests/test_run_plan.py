"""Remembered grids (bayesbench/run_plan.py): a complete grid reruns without importing torch,
and anything the run keys depend on sends the rerun down the ordinary path."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from bayesbench import run_plan
from bayesbench.config import expand, load_config
from bayesbench.run_plan import GridFlags

TINY = {
    "seeds": [0, 1],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 64, "max_eval": 32, "mc_samples": 2, "seeds": 1},
    "datasets": ["digits"],
    "methods": ["map", "temperature_scaling"],
}
FLAGS = GridFlags(methods=None, datasets=None, seeds=None, quick=True, threads=None,
                  device="cpu")

RERUN = """
import sys
from bayesbench import cli
sys.argv = ["bayesbench", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("exit", code, "torch imported:", "torch" in sys.modules)
"""


def _cli(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-c", RERUN, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_a_complete_grid_reruns_without_torch_and_a_missing_run_trains(tmp_path):
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(TINY))
    args = ("run", "--quick", "--config", "bench.yaml", "--store", "s.sqlite")
    first = _cli(tmp_path, *args)
    assert "exit 0 torch imported: True" in first.stdout, first.stderr
    again = _cli(tmp_path, *args)
    assert "0 run(s) done, 2 already stored (skipped)" in again.stdout
    assert "exit 0 torch imported: False" in again.stdout, again.stdout + again.stderr

    with sqlite3.connect(tmp_path / "s.sqlite") as con:  # one run lost: it trains again
        con.execute("DELETE FROM runs WHERE label = 'map'")
    third = _cli(tmp_path, *args)
    assert "1 run(s) done, 1 already stored" in third.stdout
    assert "torch imported: True" in third.stdout
    assert "torch imported: False" in _cli(tmp_path, *args).stdout

    # --out writes a report: the ordinary path; another selection: a plan of its own
    assert "torch imported: True" in _cli(tmp_path, *args, "--methods", "map").stdout
    assert "torch imported: False" in _cli(tmp_path, *args, "--methods", "map").stdout
    # bad flags are still refused before anything is answered
    bad = _cli(tmp_path, *args, "--workers", "999")
    assert "exit 2" in bad.stdout and "--workers 999" in bad.stderr


def _fp(path, **changes):
    flags = GridFlags(**{**FLAGS.__dict__, **changes})
    return run_plan.fingerprint(path, flags)


def test_the_fingerprint_covers_config_flags_code_and_installed_packages(tmp_path, monkeypatch):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    base = _fp(cfg)
    assert base == _fp(cfg) and len(base) == 64
    others = {_fp(cfg, methods="map"), _fp(cfg, datasets="digits"), _fp(cfg, seeds="0"),
              _fp(cfg, quick=False), _fp(cfg, threads=2)}
    assert base not in others and len(others) == 5
    assert _fp(cfg, threads=1) == base  # 1 thread is the default
    cfg.write_text(yaml.safe_dump(TINY) + "# a comment\n")
    assert _fp(cfg) != base
    cfg.write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(run_plan, "_package_source_digest", lambda: b"edited code")
    assert _fp(cfg) != base
    monkeypatch.undo()
    monkeypatch.setattr(run_plan, "_installed_distributions",
                        lambda: ["torch-9.9.dist-info"])
    assert _fp(cfg) != base
    assert run_plan.fingerprint(tmp_path / "missing.yaml", FLAGS) is None


def test_device_known_without_torch_only_where_no_gpu_can_exist(monkeypatch):
    assert run_plan.device_type_without_torch("cpu") == "cpu"
    assert run_plan.device_type_without_torch("cuda") is None
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert run_plan.device_type_without_torch("auto") == "cpu"
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidia0")
    assert run_plan.device_type_without_torch("auto") is None
    monkeypatch.setattr(sys, "platform", "darwin")  # mps
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert run_plan.device_type_without_torch("auto") is None


def _store_with_runs(path, statuses: dict[str, str]):
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, status TEXT)")
        con.executemany("INSERT INTO runs VALUES (?, ?)", statuses.items())


def test_lookup_counts_complete_runs_of_the_plan(tmp_path):
    store = tmp_path / "s.sqlite"
    assert run_plan.lookup(store, "f") is None  # no store
    _store_with_runs(store, {"a": "complete", "b": "failed", "c": "complete"})
    assert run_plan.lookup(store, "f") is None  # no plans table
    run_plan.remember(store, "f", ["a", "b"], unsupported=3)
    status = run_plan.lookup(store, "f")
    assert (status.runs, status.complete, status.unsupported) == (2, 1, 3)
    assert not status.nothing_to_run
    run_plan.remember(store, "g", ["a", "c"], unsupported=0)
    assert run_plan.lookup(store, "g").nothing_to_run
    assert run_plan.lookup(store, "h") is None
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    assert run_plan.lookup(tmp_path / "junk.sqlite", "f") is None


def test_only_the_newest_plans_are_kept(tmp_path, monkeypatch):
    store = tmp_path / "s.sqlite"
    _store_with_runs(store, {})
    monkeypatch.setattr(run_plan, "PLANS_KEPT", 3)
    for i in range(5):
        run_plan.remember(store, f"p{i}", [f"k{i}"], 0)
    with sqlite3.connect(store) as con:
        kept = sorted(r[0] for r in con.execute("SELECT fingerprint FROM plans"))
        keys = json.loads(con.execute("SELECT keys FROM plans WHERE fingerprint='p4'")
                          .fetchone()[0])
    assert kept == ["p2", "p3", "p4"] and keys == ["k4"]


@pytest.mark.parametrize("entry, remembered", [
    ({"datasets": ["digits"], "methods": ["map"]}, True),
    ({"datasets": ["digits"], "methods": ["fault_methods:Logged"]}, False),
    ({"datasets": [{"name": "files", "params": {"train": "train.csv", "label_column": "y"}}],
      "methods": ["map"]}, False),
])
def test_grids_with_code_or_data_outside_the_package_are_never_remembered(
        tmp_path, monkeypatch, entry, remembered):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    (tmp_path / "train.csv").write_text("a,b,y\n" + "".join(
        f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, **entry}))
    monkeypatch.chdir(tmp_path)
    specs = expand(load_config(cfg), quick=True)
    assert run_plan.can_remember(specs) is remembered
