"""The command-line conventions users expect (issue #15): -h, --version, flags shown as
flags, help as written, case-insensitive names, `list --config`, `priors --config`, shell
completion."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

import bayesbench
from bayesbench.registry import DATASETS, METHODS, close_names, match_name

COMMANDS = ["list", "run", "report", "check", "score", "priors", "show"]


def test_h_is_help_and_version_names_bayesbench_torch_and_device(run_cli):
    for args in (["-h"], ["--help"], ["run", "-h"]):
        res = run_cli(*args)
        assert res.returncode == 0 and "Usage: " in res.stdout, args
    assert run_cli("-h").stdout == run_cli("--help").stdout
    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"bayesbench {bayesbench.__version__}"
    import torch

    assert re.fullmatch(rf"torch {re.escape(torch.__version__)} \(device: (cpu|mps|cuda .*)\)",
                        lines[1]), lines
    assert run_cli("-V").stdout == res.stdout


def test_version_matches_the_installed_package_metadata():
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("bayesbench")
    except PackageNotFoundError:
        pytest.skip("bayesbench is not installed (only on the path)")
    assert installed == bayesbench.__version__


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_as_flags_and_text_as_written(run_cli, command):
    res = run_cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "<bool>" not in res.stdout and "Example" in res.stdout
    if command == "priors":
        assert "priors_<dataset>.csv" in res.stdout
    if command == "list":
        assert re.search(r"--shapes / --no-shapes\s+Build each dataset", res.stdout)
    if command in ("report", "check", "show"):
        assert re.search(r"--quick / --full\s+Use quick-budget", res.stdout)


def test_names_match_case_insensitively_or_the_hint_names_the_right_case():
    assert METHODS.get("MAP") is METHODS.get("map")
    assert DATASETS.canonical("Digits") == "digits" and "MC_DROPOUT" in METHODS
    assert match_name("ab", ["AB", "Ab"]) is None  # ambiguous: never a guess
    assert close_names("AB", ["AB", "Ab", "x"]) == ["AB", "Ab"]
    assert "Did you mean 'map'?" in METHODS.unknown_message("MAPP")


def _write(tmp_path, data, name="bench.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return name


TINY = {"seeds": [0], "model": {"d_model": 16, "heads": 2, "depth": 1},
        "training": {"epochs": 1}, "datasets": ["markov"], "methods": ["map", "mfvi"]}


def test_run_filters_take_any_case_and_suggest_the_right_one(tmp_path, monkeypatch, capsys):
    from bayesbench import cli
    from bayesbench.api import config_labels

    cfg = bayesbench.load_config(TINY)
    assert config_labels(cfg, "methods", ["MAP", "MfVi"]) == ["map", "mfvi"]
    assert config_labels(cfg, "datasets", ["MARKOV"]) == ["markov"]
    monkeypatch.chdir(tmp_path)
    name = _write(tmp_path, TINY)
    monkeypatch.setattr("sys.argv", ["bayesbench", "run", "-c", name, "--methods", "MAPP",
                                     "--store", "s.sqlite"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Did you mean 'map'?" in err and "Traceback" not in err
    assert not (tmp_path / "s.sqlite").exists()


@pytest.fixture
def files_config(tmp_path):
    """A `files` dataset: a CSV training file (split into train/val/test), two shift files
    and an OOD file, beside the markov dataset."""
    rng = np.random.default_rng(0)

    def frame(n, shift=0.0, label=True):
        x = rng.normal(shift, 1, (n, 3))
        f = pd.DataFrame({"age": x[:, 0], "hr": x[:, 1], "bp": x[:, 2], "id": np.arange(n)})
        if label:
            f["outcome"] = np.where(x[:, 0] + x[:, 1] > shift * 2, "sick", "healthy")
        return f

    frame(200).to_csv(tmp_path / "train.csv", index=False)
    frame(60, 1.0).to_csv(tmp_path / "older.csv", index=False)
    frame(50, 2.0).to_csv(tmp_path / "oldest.csv", index=False)
    frame(40, 5.0, label=False).to_csv(tmp_path / "newborn.csv", index=False)
    data = {**TINY, "seeds": [3], "datasets": [
        {"name": "files", "label": "icu", "training": {"epochs": 2},
         "params": {"train": "train.csv", "label_column": "outcome",
                    "feature_columns": ["age", "hr", "bp"],
                    "shifted": {"age": ["older.csv", "oldest.csv"]},
                    "ood": {"newborn": "newborn.csv"}}},
        {"name": "Markov", "params": {"num_train": 100, "num_val": 20, "num_test": 30}}]}
    return _write(tmp_path, data)


def test_list_config_shows_the_configs_datasets_and_methods_resolved(files_config, run_cli):
    res = run_cli("list", "--config", files_config)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "bench.yaml: 2 methods × 2 datasets × 1 seed [3] = 4 runs" in out
    assert "icu (files, built with seed 3)" in out
    assert "inputs: 3 feature_columns: age, hr, bp" in out
    assert "train: train.csv (label column 'outcome') (120 examples)" in out
    assert "val: 0.15 of train.csv, stratified (30 examples)" in out
    assert "test: 0.25 of train.csv, stratified (50 examples)" in out
    assert "shift/age/1: older.csv (60 examples)" in out
    assert "shift/age/2: oldest.csv (50 examples)" in out
    assert "ood/newborn: newborn.csv (40 examples)" in out
    assert "training (overridden): epochs=2" in out
    assert "2: healthy, sick" in out and "120/30/50" in out
    assert "100/20/30" in out  # the markov entry with its own sizes
    assert re.search(r"│ mfvi\s+│ mfvi\s+│ subset=all, prior=gaussian, prior_scale=1", out)


def test_list_config_with_a_bad_data_file_exits_2_and_still_lists(files_config, tmp_path,
                                                                  run_cli):
    text = (tmp_path / files_config).read_text().replace("label_column: outcome",
                                                         "label_column: outcom")
    (tmp_path / "bad.yaml").write_text(text)
    res = run_cli("list", "--config", "bad.yaml")
    assert res.returncode == 2
    assert "no label column 'outcom'. Did you mean 'outcome'?" in res.stderr
    assert res.stderr.startswith("error: bad.yaml: datasets 'icu': ")
    # the others are shown, under their registered names
    assert "markov (markov, built with seed 3)" in res.stdout
    res = run_cli("list", "--config", "missing.yaml")
    assert res.returncode == 2 and "missing.yaml: no such config file" in res.stderr


def test_priors_works_on_a_files_dataset_of_a_config(files_config, tmp_path, run_cli):
    res = run_cli("priors", "--config", files_config, "--dataset", "ICU", "--family",
                  "Gaussian", "--scales", "1", "--functions", "2", "--max-inputs", "16",
                  "--out", "r")
    assert res.returncode == 0, res.stderr
    assert "prior predictive on icu (2 functions × 16 test inputs" in res.stdout
    frame = pd.read_csv(tmp_path / "r" / "priors_icu.csv")
    assert frame["family"].tolist() == ["gaussian"] and frame["num_inputs"].tolist() == [16]
    # log C of the two classes healthy / sick
    assert frame["max_entropy"].iloc[0] == pytest.approx(np.log(2))
    res = run_cli("priors", "--config", files_config, "--dataset", "nope")
    assert res.returncode == 2 and "--dataset nope: not in bench.yaml" in res.stderr
    res = run_cli("priors", "--dataset", "files")
    assert res.returncode == 2 and "pass --config FILE --dataset LABEL" in res.stderr


def test_shell_completion_scripts_and_completions(run_cli):
    # the shell named, not detected: detection reads the process's ancestors, and a test run
    # under setsid or nohup has no shell among them ("Shell  not supported")
    res = run_cli("--show-completion", "bash",
                  env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert res.returncode == 0 and "complete -o default -F" in res.stdout, res.stderr
    assert "--install-completion" in run_cli("--help").stdout


def test_docstring_examples_of_the_name_and_describe_helpers():
    import doctest

    from bayesbench import describe, registry

    for module in (registry, describe):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_version_names_the_device_run_would_pick():
    from bayesbench.cli import version_text
    from bayesbench.runner import resolve_device

    device = version_text().splitlines()[1].split("(device: ")[1]
    assert device.split(" ")[0].rstrip(")") == resolve_device("auto").type
