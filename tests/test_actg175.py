"""The ACTG 175 dataset: baseline features only, the held-out haemophilia cohort, leakage-free
stratified splits, the per-class CD4 cut and graded cohort mixtures at the test class balance,
standardisation, OOD sets, and a missing package at config time."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bayesbench.config import parse_config
from bayesbench.data import actg175
from bayesbench.data.actg175 import (
    ACTG175,
    FEATURES,
    MEASUREMENTS,
    csv_path,
)
from bayesbench.errors import ConfigError, DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Task

REPO = Path(__file__).resolve().parent.parent
SEVERITIES = [1, 2, 3, 4, 5]
CD40 = FEATURES.index("cd40")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(csv_path())


@pytest.fixture(scope="module")
def task() -> Task:
    return ACTG175().build(0)


@pytest.fixture(scope="module")
def rows() -> dict:
    return ACTG175().patients(0)


def raw_features(table: pd.DataFrame, index: np.ndarray) -> np.ndarray:
    """Reference: the 18 baseline columns of the given patients, straight from the table."""
    t = table.iloc[index]
    cols = [t[c].to_numpy(float) for c in (*MEASUREMENTS, "homo", "drugs", "oprior", "z30",
                                           "race", "gender", "str2", "symptom")]
    cols += [(t["arms"] == a).to_numpy(float) for a in range(4)]
    return np.stack(cols, 1)


def test_registered_with_source_licence_and_size_in_the_description() -> None:
    assert DATASETS.get("actg175") is ACTG175
    for needed in ("lifelines", "MIT", "2,139 patients", "speff2trial"):
        assert needed in ACTG175.description, needed


def test_the_table(table: pd.DataFrame) -> None:
    assert len(table) == 2139 and table["pidnum"].is_unique
    assert int(table["cens"].sum()) == 521 and int(table["hemo"].sum()) == 180
    assert len(FEATURES) == 18
    post_baseline = {"cd420", "cd496", "r", "cd820", "offtrt", "days", "cens", "hemo"}
    assert not post_baseline & set(FEATURES)


def test_same_seed_gives_identical_tensors(task: Task) -> None:
    again = ACTG175().build(0)
    assert len(task.all_splits()) == len(again.all_splits()) == 8
    for a, b in zip(task.all_splits(), again.all_splits()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name]), name
    other = ACTG175().patients(1)
    assert set(other["test"]) != set(ACTG175().patients(0)["test"])


def test_shapes_and_sizes(task: Task) -> None:
    assert task.input_kind == "features" and task.num_classes == 2
    assert task.class_names == ["no event", "event"]
    assert task.num_tokens == task.feature_dim == 18
    assert (len(task.train), len(task.val), len(task.test)) == (704, 177, 294)
    assert [len(task.shifted["population"][s]) for s in SEVERITIES] == [294] * 5
    assert {k: len(v) for k, v in task.ood.items()} == {
        "haemophilia_cohort": 180, "permuted_features": 294, "out_of_range": 294}
    for split in task.all_splits():
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.long


def test_no_patient_in_two_splits_and_the_held_out_cohort_in_none(table, rows) -> None:
    parts = [set(rows[k].tolist()) for k in ("train", "val", "test", "far", "held_out")]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 2139  # a partition
    pid = table["pidnum"].to_numpy()
    ids = [set(pid[rows[k]]) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set(rows["held_out"]) == set(np.flatnonzero(table["hemo"].to_numpy() == 1))
    for s in SEVERITIES:  # shifted sets: test and far patients only
        assert set(rows[f"population:{s}"]) <= set(rows["test"]) | set(rows["far"])


def test_tensors_are_the_patients_features_standardised(task, table, rows) -> None:
    train = raw_features(table, rows["train"])
    mean, sd = train.mean(0), train.std(0)
    assert np.all(sd > 0)
    for name in ("train", "val", "test"):
        split = getattr(task, name)
        want = (raw_features(table, rows[name]) - mean) / sd
        assert np.allclose(split.x.numpy(), want, atol=1e-5), name
        assert np.array_equal(split.y.numpy(), table["cens"].to_numpy()[rows[name]])
    for s in SEVERITIES:
        split = task.shifted["population"][s]
        assert np.allclose(split.x.numpy(),
                           (raw_features(table, rows[f"population:{s}"]) - mean) / sd, atol=1e-5)
    x = task.train.x.double()
    assert torch.allclose(x.mean(0), torch.zeros(18, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(18, dtype=torch.float64),
                          atol=1e-5)
    held = (raw_features(table, rows["held_out"]) - mean) / sd
    assert np.allclose(task.ood["haemophilia_cohort"].numpy(), held, atol=1e-5)


def test_stratified_and_cut_per_class_by_baseline_cd4(table, rows) -> None:
    y, cd4 = table["cens"].to_numpy(), table["cd40"].to_numpy()
    inside = np.concatenate([rows["train"], rows["val"], rows["test"]])
    assert len(inside) == 1175 and int(y[inside].sum()) == 288
    assert len(rows["far"]) == 784 and int(y[rows["far"]].sum()) == 192
    for c in (0, 1):  # each class cut at its own 60%: far CD4 never above near CD4
        near_c, far_c = inside[y[inside] == c], rows["far"][y[rows["far"]] == c]
        assert round(0.6 * (len(near_c) + len(far_c))) == len(near_c)
        assert cd4[far_c].max() <= cd4[near_c].min()
    share = 288 / 1175
    for name in ("train", "val", "test"):
        assert abs(int(y[rows[name]].sum()) - share * len(rows[name])) <= 1, name


def test_severity_k_swaps_k_fifths_at_the_test_class_balance(table, rows) -> None:
    y = table["cens"].to_numpy()
    test = set(rows["test"])
    events = int(y[rows["test"]].sum())
    counts = {0: [], 1: []}
    for s in SEVERITIES:
        band = rows[f"population:{s}"]
        assert len(band) == len(set(band)) == 294 and int(y[band].sum()) == events == 72
        for c in counts:
            counts[c].append(sum(1 for i in band if i not in test and y[i] == c))
    assert counts[1] == [round(k / 5 * 72) for k in SEVERITIES]
    assert counts[0] == [round(k / 5 * 222) for k in SEVERITIES]
    for s, t in itertools.pairwise(SEVERITIES):  # nested
        a, b = set(rows[f"population:{s}"]), set(rows[f"population:{t}"])
        assert a - test <= b - test and a & test >= b & test


@pytest.mark.parametrize("seed", [0, 1])
def test_covariate_shift_grows_with_severity(seed: int) -> None:
    task = ACTG175().build(seed)
    sets = [task.test] + [task.shifted["population"][s] for s in SEVERITIES]
    for c in (0, 1):
        cd4 = [float(s.x[s.y == c, CD40].mean()) for s in sets]
        assert all(b < a for a, b in itertools.pairwise(cd4)), cd4


def test_ood_sets(task: Task) -> None:
    test = task.test.x
    permuted = task.ood["permuted_features"]
    assert torch.equal(permuted.sort(0).values, test.sort(0).values)
    assert not {tuple(r) for r in test.tolist()} & {tuple(r) for r in permuted.tolist()}
    oor = task.ood["out_of_range"]
    changed = oor != test
    assert changed.sum(1).tolist() == [2] * len(test)
    assert not changed[:, len(MEASUREMENTS):].any()  # measurements only
    beyond = oor[changed] - task.train.x.max(0).values.expand_as(oor)[changed]
    assert float(beyond.min()) >= 1.0 - 1e-4 and float(beyond.max()) <= 4.0 + 1e-4


def test_other_shift_feature_and_side(table) -> None:
    ds = ACTG175(shift_feature="age", far_side="high", in_distribution_quantile=0.5)
    r = ds.patients(0)
    y, age = table["cens"].to_numpy(), table["age"].to_numpy()
    inside = np.concatenate([r["train"], r["val"], r["test"]])
    for c in (0, 1):
        assert age[r["far"][y[r["far"]] == c]].min() >= age[inside[y[inside] == c]].max()
    assert len(ds.build(0).shifted["population"][5]) == len(r["test"])


@pytest.mark.parametrize("kwargs, message", [
    ({"shift_feature": "hemo"}, "shift_feature='hemo' is not a baseline measurement"),
    ({"far_side": "up"}, "far_side='up' must be 'low'"),
    ({"in_distribution_quantile": 0.85}, r"in_distribution_quantile=0.85 must lie in \[0.09, "
                                         r"0.79\]"),
    ({"in_distribution_quantile": 1.5}, "in_distribution_quantile=1.5 must lie in"),
    ({"test_fraction": 0.7}, "leaves under 20%"),
    ({"val_fraction": 0}, "val_fraction=0 must lie in"),
])
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ACTG175(**kwargs)


def test_missing_package_fails_at_config_time_with_the_install_line(monkeypatch) -> None:
    real = actg175.importlib.util.find_spec
    monkeypatch.setattr(actg175.importlib.util, "find_spec",
                        lambda n, *a: None if n.split(".")[0] == "lifelines" else real(n, *a))
    with pytest.raises(DataError, match=r"pip install 'bayesbench\[clinical\]'"):
        ACTG175()
    config = yaml.safe_load((REPO / "benchmarks.yaml").read_text())
    config["datasets"] = [{"name": "actg175"}]
    with pytest.raises(ConfigError, match=r"datasets\[0\].*pip install 'bayesbench\[clinical\]'"
                       ) as caught:
        parse_config(config, "bench.yaml")
    assert caught.value.exit_code == 2


def test_missing_package_exits_2_from_the_command_line(tmp_path, run_cli) -> None:
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(
        "import importlib.util as u\n_real = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n.split('.')[0] == 'lifelines' else _real(n, *a)\n"
    )
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(
        {"seeds": [0], "datasets": ["actg175"], "methods": ["map"]}))
    out = run_cli("run", "--config", "bench.yaml", "--store", "s.sqlite",
                  extra_path=tmp_path / "hide")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'bayesbench[clinical]'" in " ".join((out.stdout + out.stderr).split())
    assert "Traceback" not in out.stderr and not (tmp_path / "s.sqlite").exists()


def test_a_config_check_reads_the_class_counts_without_pandas(table, tmp_path) -> None:
    """ACTG175() and check() need only the class counts outside the held-out cohort: read
    with the csv module, they equal pandas' (and load_table's), and a table lacking a column
    fails both ways with the same fix."""
    held = table["hemo"].to_numpy() == 1
    expected = np.bincount(table["cens"].to_numpy()[~held], minlength=2)
    assert actg175.cohort_class_counts(csv_path()).tolist() == expected.tolist()
    _, outcome, held_flag, _ = actg175.load_table(csv_path())
    assert np.bincount(outcome[~held_flag], minlength=2).tolist() == expected.tolist()
    broken = tmp_path / "ACTG175.csv"
    table.drop(columns=["cd40"]).to_csv(broken, index=False)
    for read in (actg175.cohort_class_counts, actg175.load_table):
        with pytest.raises(DataError, match=r"lacks the columns cd40; reinstall lifelines"):
            read(broken)
    code = ("import sys; from bayesbench.data.actg175 import ACTG175; d = ACTG175(); "
            "d.check(); print('pandas' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
