"""End to end through the command line, as a user runs it."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import REPO

TINY = {
    "seeds": [0, 1],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 2},
    "quick": {"epochs": 2, "max_train": 160, "max_eval": 48, "mc_samples": 2, "seeds": 2},
    "datasets": ["digits"],
    "methods": ["map", {"name": "mc_dropout", "params": {"samples": 2}}],
}


def write_config(tmp_path, data=TINY, name="bench.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return name


def test_run_report_check_cycle(tmp_path, run_cli):
    cfg = write_config(tmp_path)
    first = run_cli("run", "--config", cfg, "--quick", "--workers", "2", "--store", "s.sqlite")
    assert first.returncode == 0, first.stderr
    assert "4 run(s) done, 0 already stored" in first.stdout

    again = run_cli("run", "--config", cfg, "--quick", "--store", "s.sqlite")
    assert again.returncode == 0 and "0 run(s) done, 4 already stored" in again.stdout

    rep = run_cli("report", "--store", "s.sqlite", "--out", "reports", "--write-baseline",
                  "reports/baseline.csv")
    assert rep.returncode == 0, rep.stderr
    board = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "## digits" in board and "| map |" in board and "| mc_dropout |" in board
    assert "15 equal-width bins" in board
    assert (tmp_path / "reports" / "reliability_digits.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(tmp_path / "reports" / "results.csv")))
    assert {r["label"] for r in rows} == {"map", "mc_dropout"}

    ok = run_cli("check", "--baseline", "reports/baseline.csv", "--store", "s.sqlite")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # a baseline that claims map was much more accurate: the gate must fail
    base = list(csv.DictReader(open(tmp_path / "reports" / "baseline.csv")))
    for row in base:
        if row["method"] == "map" and row["metric"] == "accuracy" and row["split"] == "test":
            row["value"] = str(float(row["value"]) + 0.2)
    with open(tmp_path / "better.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(base[0]))
        w.writeheader()
        w.writerows(base)
    bad = run_cli("check", "--baseline", "better.csv", "--store", "s.sqlite")
    assert bad.returncode == 1 and "regressed" in bad.stdout
    loose = run_cli("check", "--baseline", "better.csv", "--store", "s.sqlite",
                    "--tolerance", "accuracy=0.5")
    assert loose.returncode == 0

    (tmp_path / "broken.csv").write_text("method,dataset\nmap,digits\n")
    malformed = run_cli("check", "--baseline", "broken.csv", "--store", "s.sqlite")
    assert malformed.returncode == 2 and "Traceback" not in malformed.stderr
    missing = run_cli("check", "--baseline", "nope.csv", "--store", "s.sqlite")
    assert missing.returncode == 2 and "nope.csv" in missing.stderr


@pytest.mark.parametrize("change, fragment", [
    ({"methods": ["mapp"]}, "Did you mean 'map'"),
    ({"training": {"epochs": -1}}, "training.epochs: must be positive"),
])
def test_bad_config_exits_2_without_traceback_or_store(tmp_path, run_cli, change, fragment):
    cfg = write_config(tmp_path, {**TINY, **change})
    res = run_cli("run", "--config", cfg, "--store", "s.sqlite")
    assert res.returncode == 2
    assert fragment in res.stderr and "bench.yaml" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_bad_flags_exit_2(tmp_path, run_cli):
    cfg = write_config(tmp_path)
    for args, fragment in [(["--seeds", "a,b"], "--seeds"),
                           (["--methods", "nope"], "--methods nope"),
                           (["--device", "tpu"], "--device tpu")]:
        res = run_cli("run", "--config", cfg, "--store", "s.sqlite", *args)
        assert res.returncode == 2 and fragment in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert run_cli("report", "--store", "none.sqlite").returncode == 2
    assert run_cli("run", "--workers", "0").returncode == 2


def test_score_saved_predictions(tmp_path, run_cli):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    np.save(tmp_path / "p.npy", probs)
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 1]))
    np.save(tmp_path / "o.npy", np.array([[0.5, 0.5], [0.55, 0.45]]))
    res = run_cli("score", "--probs", "p.npy", "--labels", "y.npy", "--ood-probs", "o.npy",
                  "--json")
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout)
    assert scores["test"]["accuracy"] == pytest.approx(0.75)
    assert scores["test"]["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    assert scores["ood"]["auroc_max_prob"] == pytest.approx(1.0)
    np.save(tmp_path / "logits.npy", np.array([[2.0, -1.0], [0.5, 0.1], [1, 1], [0, 3]]))
    bad = run_cli("score", "--probs", "logits.npy", "--labels", "y.npy")
    assert bad.returncode == 2 and "softmax" in bad.stderr and "Traceback" not in bad.stderr


def test_help_has_an_example_for_every_command(run_cli):
    for cmd in ["run", "report", "check", "score", "list"]:
        res = run_cli(cmd, "--help")
        assert res.returncode == 0 and "Example" in res.stdout, cmd


def test_list_names_methods_datasets_and_metrics(run_cli):
    res = run_cli("list")
    assert res.returncode == 0, res.stderr
    for name in ["map", "temperature_scaling", "mc_dropout", "deep_ensemble", "digits",
                 "accuracy", "ece", "auroc_entropy"]:
        assert name in res.stdout


def test_default_suite_quick_end_to_end(tmp_path, run_cli):
    """The README's smoke test: the default benchmarks.yaml on the quick budget (one seed)."""
    shutil.copy(REPO / "benchmarks.yaml", tmp_path / "benchmarks.yaml")
    res = run_cli("run", "--quick", "--seeds", "0", "--workers", "2", "--out", "reports")
    assert res.returncode == 0, res.stdout + res.stderr
    board = (tmp_path / "reports" / "leaderboard.md").read_text()
    cfg = yaml.safe_load((tmp_path / "benchmarks.yaml").read_text())
    for entry in cfg["datasets"]:
        name = entry["name"] if isinstance(entry, dict) else entry
        assert f"## {entry.get('label', name) if isinstance(entry, dict) else name}" in board
    for entry in cfg["methods"]:
        label = entry.get("label", entry["name"]) if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and "sweep" in entry:
            continue
        assert f"| {label} |" in board
