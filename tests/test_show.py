"""`bayesbench show RUN` and bayesbench.show.find_run: one stored run in full."""

from __future__ import annotations

import dataclasses
import json

import pytest
from fake_results import fake_result

from bayesbench.errors import RunNotFoundError
from bayesbench.show import find_run
from bayesbench.store import ResultStore

TRACEBACK = ("RuntimeError: CUDA out of memory (at mfvi.py:120)\n\nTraceback (most recent "
             "call last):\n  File \"mfvi.py\", line 120, in fit\nRuntimeError: CUDA out of "
             "memory")


def _with(result, key, **changes):
    spec = {"label": result.label, "method": result.method, "dataset": result.dataset,
            "method_params": {"samples": 4}, "dataset_params": {"n": 10},
            "model": {"d_model": 16}, "training": {"epochs": 3},
            "evaluation": {"ece_bins": 15}, "threads": 1,
            "device": "cpu"}
    return dataclasses.replace(result, key=key, spec=spec, **changes)


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "s.sqlite")
    s.write(_with(fake_result("map", "digits", 0, 0.9, 0.05), "a1b2c3d4e5f60001"))
    s.write(_with(fake_result("map", "digits", 1, 0.8, 0.06), "a1b2c3d4e5f60002"))
    s.write(_with(fake_result("map", "markov", 0, 0.7, 0.07), "bbbb000000000003"))
    # a quick run of map/digits/0, newer than the full one: `show` prefers the full run
    s.write(_with(fake_result("map", "digits", 0, 0.5, 0.2, quick=True), "cccc000000000004",
                  finished_at="2025-06-01T00:00:00"))
    s.write(_with(fake_result("mfvi", "digits", 0, 0, 0, status="failed", error=TRACEBACK),
                  "dddd000000000005"))
    return s


def test_a_run_is_found_by_key_prefix_or_label_dataset_seed(store):
    assert find_run(store, "a1b2c3d4e5f60002").run.seed == 1
    assert find_run(store, "bbbb").run.dataset == "markov"
    found = find_run(store, "MAP", dataset="Digits", seed=0)  # case-insensitive
    assert found.run.key == "a1b2c3d4e5f60001" and not found.run.quick
    assert [o["key"] for o in found.others] == ["cccc000000000004"]
    assert find_run(store, "map", dataset="digits", seed=0, quick=True).run.key == \
        "cccc000000000004"
    assert find_run(store, "mfvi").run.status == "failed"  # one run: no filters needed


@pytest.mark.parametrize("run, kwargs, fragment", [
    ("a1b2", {}, "key prefix 'a1b2' matches 2 runs"),
    ("map", {}, "matches runs of 3 (label, dataset, seed)"),
    ("map", {"dataset": "digits"}, "narrow it with --dataset and --seed"),
    ("mapp", {}, "no run with key or label 'mapp' in"),
    ("mf", {}, "Did you mean 'mfvi'?"),
    ("map", {"dataset": "mnist1d"}, "'map' ran on digits, markov"),
    ("map", {"dataset": "digits", "seed": 7}, "seeds stored: 0, 1"),
])
def test_unknown_or_ambiguous_runs_name_the_candidates(store, run, kwargs, fragment):
    with pytest.raises(RunNotFoundError) as info:
        find_run(store, run, **kwargs)
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


def test_show_prints_settings_versions_commit_timings_metrics(store, run_cli):
    res = run_cli("show", "map", "--dataset", "digits", "--seed", "0", "--store", "s.sqlite")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "run a1b2c3d4e5f60001: map on digits, seed 0, full run, complete" in text
    assert "git commit abc1234" in text and "versions: torch 2.3.0" in text
    assert "started 2025-01-01T00:00:00, finished 2025-01-01T00:01:00 (60 s)" in text
    assert "method parameters: samples=4" in text and "training: epochs=3" in text
    assert "train 10.00 s; predict 0.500 s per 1000 inputs; 1,000 parameters" in text
    # stored before runs carried their metric spec: the one their settings imply, said so
    assert ("metrics: ECE and MCE over 15 equal-width bins, adaptive ECE over 15 equal-mass "
            "bins") in text and "(implied: stored before specs were)" in text
    test_row = next(line for line in text.splitlines() if line.startswith("│ test "))
    assert "0.9000" in test_row and "0.0500" in test_row  # accuracy, ece
    assert "shift/blur/2" in text and "ood/far" in text
    assert "cccc000000000004: quick, complete" in text  # the other stored run is listed


def test_show_a_failed_run_prints_its_stored_error_and_traceback(store, run_cli):
    res = run_cli("show", "dddd", "--store", "s.sqlite")
    assert res.returncode == 0, res.stderr
    assert "mfvi on digits, seed 0, full run, failed" in res.stdout
    assert "RuntimeError: CUDA out of memory (at mfvi.py:120)" in res.stdout
    assert "Traceback (most recent call last):" in res.stdout


def test_show_json_is_the_full_record(store, run_cli):
    res = run_cli("show", "a1b2c3d4e5f60002", "--json", "--store", "s.sqlite")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["key"] == "a1b2c3d4e5f60002" and record["spec"]["training"] == {"epochs": 3}
    test = {m["metric"]: m["value"] for m in record["metrics"] if m["split"] == "test"}
    assert test["accuracy"] == pytest.approx(0.8) and test["ece"] == pytest.approx(0.06)
    assert record["other_runs"] == []


def test_show_bad_input_exits_2_in_one_line(store, run_cli):
    for args, fragment in [(["nope"], "no run with key or label 'nope'"),
                           (["map"], "narrow it with --dataset and --seed")]:
        res = run_cli("show", *args, "--store", "s.sqlite")
        assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr
        assert fragment in res.stderr and "Traceback" not in res.stderr
    res = run_cli("show", "map", "--store", "missing.sqlite")
    assert res.returncode == 2 and "no results at missing.sqlite" in res.stderr


def test_shell_completion_of_run_offers_stored_labels_and_keys(store, tmp_path):
    from bayesbench.show import complete_runs

    path = str(tmp_path / "s.sqlite")
    assert complete_runs(path, "") == ["map", "mfvi"]
    assert complete_runs(path, "m") == ["map", "mfvi"]
    assert complete_runs(path, "a1") == ["a1b2c3d4e5f60001", "a1b2c3d4e5f60002"]
    assert complete_runs(str(tmp_path / "none.sqlite"), "m") == []
    (tmp_path / "junk.sqlite").write_text("not a database")
    assert complete_runs(str(tmp_path / "junk.sqlite"), "m") == []
