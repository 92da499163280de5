"""End to end through the command line, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

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
    ({"model": {"heads": 0}}, "model.heads: must be an integer from 1 to 64, got 0"),
    ({"datasets": [{"name": "digits", "training": {"epochs": 0}}]},
     "datasets[0].training.epochs: must be an integer from 1 to 100000, got 0"),
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


def _all_names() -> list[str]:
    from bayesbench.backbones import support_matrix
    from bayesbench.metrics import METRICS
    from bayesbench.registry import DATASETS, METHODS

    return (METHODS.names() + DATASETS.names() + [label for label, _, _ in support_matrix()]
            + list(METRICS))


@pytest.mark.parametrize("columns", [80, 40])
def test_list_never_cuts_a_name_whatever_the_width(run_cli, columns):
    res = run_cli("list", columns=columns)
    assert res.returncode == 0, res.stderr
    for name in _all_names():
        assert name in res.stdout, name
    assert "…" not in res.stdout  # nothing elided, descriptions included


@pytest.mark.parametrize("width", [200, 80, 40, 24])
def test_list_shapes_keep_every_name_whole(width):
    """The dataset table with shape columns (a warm cache), at any width."""
    import io

    from rich.console import Console

    from bayesbench.data.cache import task_summary
    from bayesbench.data.markov import MarkovChains
    from bayesbench.describe import make_catalog, print_catalog

    cat = make_catalog()
    summary = task_summary(MarkovChains(num_train=40, num_val=10, num_test=20).build(0))
    shapes = {d[0]: summary if d[0] == "markov" else None for d in cat["datasets"]}
    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_catalog(console, cat, shapes)
    text = console.file.getvalue()
    for name in _all_names() + ["unseen_chains", "perturbed_transitions", "40/10/20"]:
        assert name in text, name
    unknown = len(cat["datasets"]) - 1
    assert f"{unknown} dataset(s) not built yet" in " ".join(text.split())  # the hint
    assert " ".join(text.split()).count("not built yet") == unknown + 1  # and once per row


def test_list_reads_shapes_from_the_dataset_cache_without_torch(run_cli, tmp_path):
    from bayesbench.data.cache import DatasetCache
    from bayesbench.data.markov import MarkovChains

    env = {"BAYESBENCH_CACHE": str(tmp_path / "cache")}
    cold = run_cli("list", env=env)
    assert cold.returncode == 0, cold.stderr
    assert "8 dataset(s) not built yet: `bayesbench list --shapes`" in " ".join(
        cold.stdout.split())
    assert "4000/1000/2000" not in cold.stdout
    DatasetCache(tmp_path / "cache").build(MarkovChains, "markov", {}, 0)  # as a run would
    warm = subprocess.run([sys.executable, "-X", "importtime", "-m", "bayesbench", "list"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert warm.returncode == 0, warm.stderr
    assert "tokens [8]" in warm.stdout and "4000/1000/2000" in warm.stdout
    assert "7 dataset(s) not built yet" in warm.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in warm.stderr.splitlines()
                if line.startswith("import time:")}
    assert "rich" in imported and not imported & {"torch", "sklearn", "pandas", "scipy"}
    assert warm.stdout.replace("7 dataset(s)", "") != cold.stdout


def test_cache_command_shows_and_clears_the_folder(run_cli, tmp_path):
    from bayesbench.data.cache import DatasetCache
    from bayesbench.data.markov import MarkovChains

    folder = tmp_path / "cache"
    params = {"num_train": 40, "num_val": 10, "num_test": 20}
    DatasetCache(folder).build(MarkovChains, "markov", params, 0)
    env = {"BAYESBENCH_CACHE": str(folder)}
    info = run_cli("cache", "info", env=env)
    assert info.returncode == 0, info.stderr
    assert f"dataset cache: {folder} (1 task(s)," in info.stdout
    assert "markov: 1 task(s)" in info.stdout and "BAYESBENCH_CACHE=off" in info.stdout
    cleared = run_cli("cache", "clear", env=env)
    assert cleared.returncode == 0 and f"cleared {folder}" in cleared.stdout
    assert DatasetCache(folder).info().tasks == 0
    assert "(0 task(s), 0.0 MB)" in run_cli("cache", env=env).stdout
    off = run_cli("cache", "clear", env={"BAYESBENCH_CACHE": "off"})
    assert off.returncode == 0 and "the dataset cache is off" in off.stdout
    bad = run_cli("cache", "purge", env=env)
    assert bad.returncode == 2 and "choose info or clear" in bad.stderr


@pytest.mark.slow
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


# ---------------------------------------------------- bad input: exit 2, one line, nothing written


def main_in_process(monkeypatch, capsys, *args):
    """``bayesbench ARGS`` through :func:`bayesbench.cli.main` in this process (no
    interpreter start-up), for inputs that fail before anything runs: (exit code, stderr)."""
    from bayesbench import cli

    monkeypatch.setattr("sys.argv", ["bayesbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(stderr, fragment):
    assert "Traceback" not in stderr and stderr.startswith("error: "), stderr
    assert fragment in stderr, stderr
    assert stderr.count("\n") == 1 and len(stderr) < 400, stderr


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "0,0"], "--seeds 0,0: seed 0 is given more than once; give distinct seeds"),
    (["--seeds", "3,-1"], "--seeds 3,-1: seed -1 is outside 0..2147483647"),
    (["--seeds", "9" * 5000], "--seeds 999"),
    (["--methods", ""], "--methods: give a comma-separated list"),
    (["--methods", " , "], "--methods: give a comma-separated list"),
    (["--datasets", ""], "--datasets: give a comma-separated list"),
    (["--workers", "10000"], "--workers 10000: must be from 1 to"),
    (["--threads", "10000"], "--threads 10000: must be from 1 to"),
    (["--out", "taken.txt"], "--out taken.txt: is an existing file, not a folder"),
    (["--out", "taken.txt/reports"], "taken.txt' is a file, so no folder can be made there"),
])
def test_bad_run_flags_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys, args,
                                                    fragment):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path)
    (tmp_path / "taken.txt").write_text("x")
    code, err = main_in_process(monkeypatch, capsys, "run", "--config", cfg, "--store",
                                "s.sqlite", *args)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml", "taken.txt"]


@pytest.mark.parametrize("config, fragment", [
    ({**TINY, "methods": [{"name": "map", "label": "m" * 300}]},
     "bench.yaml: methods[0].label: is 300 characters long, over the limit of 100"),
    ({**TINY, "training": {"grad_clip": -1}}, "bench.yaml: training.grad_clip: must be a finite "
                                             "number >= 0 (0 turns clipping off), got -1.0"),
    ({**TINY, "evaluation": {"mc_samples": 10**9}},
     "bench.yaml: evaluation.mc_samples: must be an integer from 1 to 1000"),
    ({**TINY, "datasets": [{"name": "files", "params": {"train": "tokens.npz"}}]},
     "token id 1000000000000 in x is not below 1000000, the vocabulary limit"),
])
def test_bad_config_values_exit_2_with_nothing_written(tmp_path, monkeypatch, capsys, config,
                                                       fragment):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "tokens.npz", x=np.array([[1, 2], [3, 10**12], [0, 1], [2, 2]]),
             y=np.array([0, 1, 0, 1]))
    cfg = write_config(tmp_path, config)
    code, err = main_in_process(monkeypatch, capsys, "run", "--config", cfg, "--store",
                                "s.sqlite", "--out", "reports")
    assert code == 2
    assert_one_line_error(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml", "tokens.npz"]


def test_unusable_config_files_exit_2_in_one_short_line(tmp_path, run_cli):
    """Through the real entry point: a non-UTF-8 file and a 600-byte YAML alias bomb (which
    once printed an 80 MB message)."""
    from test_config import _bomb

    (tmp_path / "latin.yaml").write_bytes("seeds: [0]\n# caf\xe9\n".encode("latin-1"))
    (tmp_path / "bomb.yaml").write_text(_bomb())
    for name, fragment in (("latin.yaml", "latin.yaml: not UTF-8 text (byte 0xe9 at offset 16)"),
                           ("bomb.yaml", "bomb.yaml: not valid YAML: its anchors and aliases")):
        res = run_cli("run", "--config", name, "--store", "s.sqlite")
        assert res.returncode == 2
        assert_one_line_error(res.stderr, fragment)
    assert not (tmp_path / "s.sqlite").exists()


def test_config_folder_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    code, err = main_in_process(monkeypatch, capsys, "run", "--config", "conf")
    assert code == 2
    assert_one_line_error(err, "conf: is a folder, not a config file")


def test_report_output_paths_are_checked_before_any_file_is_written(tmp_path, run_cli):
    from fake_results import fake_result

    from bayesbench.store import ResultStore

    ResultStore(tmp_path / "s.sqlite").write(fake_result("map", "toy", 0, 0.9, 0.1))
    (tmp_path / "taken.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    res = run_cli("report", "--store", "s.sqlite", "--out", "taken.txt")
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "--out taken.txt: is an existing file, not a folder")
    res = run_cli("report", "--store", "s.sqlite", "--out", "reports", "--write-baseline",
                  "folder")
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "--write-baseline folder: is a folder; give a file path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "s.sqlite", "taken.txt"]
    assert not list((tmp_path / "folder").iterdir())


def test_an_os_error_while_writing_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from fake_results import fake_result

    from bayesbench.store import ResultStore

    monkeypatch.chdir(tmp_path)
    ResultStore(tmp_path / "s.sqlite").write(fake_result("map", "toy", 0, 0.9, 0.1))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", "reports/results.csv")

    monkeypatch.setattr("bayesbench.report.write_report", disk_full)
    code, err = main_in_process(monkeypatch, capsys, "report", "--store", "s.sqlite")
    assert code == 2
    assert_one_line_error(err, "reports/results.csv: No space left on device; check the path")


def test_score_refuses_a_header_that_claims_10_to_the_13_rows(tmp_path, run_cli):
    from numpy.lib import format as npy_format

    with open(tmp_path / "huge.npy", "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                              "shape": (10**13, 3)})
        f.write(bytes(24))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    res = run_cli("score", "--probs", "huge.npy", "--labels", "y.npy")
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "probs file 'huge.npy' cannot be read as .npy: its header "
                                      "claims shape (10000000000000, 3)")


@pytest.mark.parametrize("args, fragment", [
    (["score", "--probs", "p.npz", "--labels", "y.npy"], "p.npz' holds no numpy arrays"),
    (["score", "--probs", "y.npy", "--labels", "y.npy", "--bins", "5000"],
     "--bins must be an integer from 1 to 1000, got 5000"),
    (["priors", "--out", "taken.txt"], "--out taken.txt: is an existing file, not a folder"),
])
def test_bad_score_and_priors_inputs_exit_2(tmp_path, monkeypatch, capsys, args, fragment):
    import zipfile

    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "p.npz", "w") as zf:
        zf.writestr("probs.txt", "0.5,0.5")
    np.save(tmp_path / "y.npy", np.array([[0.5, 0.5], [0.2, 0.8]]))
    (tmp_path / "taken.txt").write_text("x")
    code, err = main_in_process(monkeypatch, capsys, *args)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz", "taken.txt", "y.npy"]
