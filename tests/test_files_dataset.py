"""The files dataset: CSV / Parquet / NPZ round trips, splits, standardisation, vocabulary,
shifted and OOD files, every bad-file error, and one end-to-end run through the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bayesbench
from bayesbench.data.files import FileDataset, build_vocabulary, encode_texts, tokenize
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS

# Training features chosen so that the statistics are easy by hand (ddof 0):
# a: mean 1, std 1; b: mean 20, std 10; c: constant 5 (std 0 -> only centred).
TRAIN = pd.DataFrame({
    "a": [0.0, 2.0, 0.0, 2.0],
    "b": [10.0, 10.0, 30.0, 30.0],
    "c": [5.0, 5.0, 5.0, 5.0],
    "note": ["x", "y", "z", "w"],  # text: not a default feature
    "label": ["yes", "no", "no", "yes"],
})
TEST = pd.DataFrame({"a": [3.0, 1.0], "b": [0.0, 20.0], "c": [7.0, 5.0], "note": ["p", "q"],
                     "label": ["no", "yes"]})
EXPECTED_TEST_X = [[2.0, -2.0, 2.0], [0.0, 0.0, 0.0]]  # (x - mean) / std by hand


def write(df: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return str(path)


def random_table(n: int, seed: int = 0, classes: tuple = ("a", "b", "c")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "f1": rng.normal(5.0, 2.0, n),
        "f2": rng.normal(-1.0, 0.5, n),
        "label": [classes[i % len(classes)] for i in range(n)],
    })


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_given_splits_standardised_with_train_statistics(tmp_path, suffix):
    train = write(TRAIN, tmp_path / f"train{suffix}")
    test = write(TEST, tmp_path / f"test{suffix}")
    ds = FileDataset(train=train, val=test, test=test)
    ds.check()
    task = ds.build(0)

    assert task.input_kind == "features"
    assert ds.feature_names == ["a", "b", "c"]
    assert task.class_names == ["no", "yes"]
    assert task.num_classes == 2
    assert task.train.y.tolist() == [1, 0, 0, 1]
    assert task.test.y.tolist() == [0, 1]
    assert task.train.x.dtype == torch.float32 and task.train.x.shape == (4, 3)
    # training split: each column standardised (c constant -> 0)
    assert torch.allclose(task.train.x[:, 0], torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    assert torch.allclose(task.train.x[:, 1], torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.allclose(task.train.x[:, 2], torch.zeros(4))
    assert torch.allclose(task.test.x, torch.tensor(EXPECTED_TEST_X))
    assert torch.equal(task.val.x, task.test.x)
    assert task.shifted == {} and task.ood == {}


def test_csv_and_parquet_give_the_same_task(tmp_path):
    df = random_table(40)
    a = FileDataset(train=write(df, tmp_path / "t.csv")).build(3)
    b = FileDataset(train=write(df, tmp_path / "t.parquet")).build(3)
    for name in ("train", "val", "test"):
        assert torch.allclose(getattr(a, name).x, getattr(b, name).x)
        assert torch.equal(getattr(a, name).y, getattr(b, name).y)


def test_automatic_split_is_stratified_seeded_and_uses_train_split_statistics(tmp_path):
    df = random_table(60)  # 20 rows per class
    ds = FileDataset(train=write(df, tmp_path / "t.csv"), val_fraction=0.2, test_fraction=0.25)
    task = ds.build(0)
    assert (len(task.train), len(task.val), len(task.test)) == (33, 12, 15)
    assert torch.bincount(task.test.y).tolist() == [5, 5, 5]  # stratified
    assert torch.bincount(task.val.y).tolist() == [4, 4, 4]
    # the training split is standardised exactly with its own statistics (ddof 0)
    assert torch.allclose(task.train.x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(task.train.x.std(0, unbiased=False), torch.ones(2), atol=1e-5)

    # every row lands in exactly one split: all splits share one affine map of the raw f1
    # values, so their sorted union is an exact affine image of the file's sorted f1 column
    union = np.sort(torch.cat([task.train.x, task.val.x, task.test.x])[:, 0].double().numpy())
    raw = np.sort(df["f1"].to_numpy())
    slope, intercept = np.polyfit(raw, union, 1)
    assert np.allclose(slope * raw + intercept, union, atol=1e-5)
    assert not np.isclose(intercept, -df["f1"].mean() * slope, atol=1e-3)  # not file stats

    same = FileDataset(train=str(tmp_path / "t.csv"), val_fraction=0.2, test_fraction=0.25)
    assert torch.equal(same.build(0).test.x, task.test.x)
    assert not torch.equal(same.build(1).test.x, task.test.x)


def test_labels_of_any_type_map_to_sorted_train_classes(tmp_path):
    df = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "y": [30, 10, 20, 10, 30, 20]})
    task = FileDataset(train=write(df, tmp_path / "t.csv"), val=str(tmp_path / "t.csv"),
                       test=str(tmp_path / "t.csv"), label_column="y").build(0)
    assert task.class_names == ["10", "20", "30"]
    assert task.train.y.tolist() == [2, 0, 1, 0, 2, 1]


def test_explicit_feature_columns_keep_their_order(tmp_path):
    path = write(TRAIN, tmp_path / "t.csv")
    ds = FileDataset(train=path, val=path, test=path, feature_columns=["b", "a"])
    task = ds.build(0)
    assert ds.feature_names == ["b", "a"]
    assert torch.allclose(task.train.x[0], torch.tensor([-1.0, -1.0]))  # b=10, a=0


def test_shifted_and_ood_files(tmp_path):
    train = write(TRAIN, tmp_path / "train.csv")
    test = write(TEST, tmp_path / "test.csv")
    mild = write(TEST.iloc[:1], tmp_path / "mild.csv")
    severe = write(TEST, tmp_path / "severe.parquet")  # formats mix among tables
    ood = write(TEST.drop(columns="label"), tmp_path / "newborn.csv")  # no labels needed
    ds = FileDataset(train=train, val=test, test=test,
                     shifted={"age": [mild, severe]}, ood={"newborn": ood})
    ds.check()
    task = ds.build(0)
    assert list(task.shifted) == ["age"]
    assert sorted(task.shifted["age"]) == [1, 2]
    assert len(task.shifted["age"][1]) == 1 and len(task.shifted["age"][2]) == 2
    assert torch.allclose(task.shifted["age"][2].x, torch.tensor(EXPECTED_TEST_X))
    assert task.shifted["age"][2].y.tolist() == [0, 1]
    assert list(task.ood) == ["newborn"]
    assert torch.allclose(task.ood["newborn"], torch.tensor(EXPECTED_TEST_X))  # train stats
    assert task.summary()["shifts"] == {"age": [1, 2]}


def test_shifted_accepts_a_single_path_as_severity_one(tmp_path):
    train = write(TRAIN, tmp_path / "train.csv")
    task = FileDataset(train=train, val=train, test=train, shifted={"site": train}).build(0)
    assert list(task.shifted["site"]) == [1]


# --------------------------------------------------------------------------- text


def test_tokenize_and_encode():
    assert tokenize("BP: 120/80, HR=95 bpm; Café_au_lait") == [
        "bp", "120", "80", "hr", "95", "bpm", "café", "au", "lait"]
    vocab = build_vocabulary(["b a b", "c a b", "d"], min_count=2, max_vocab=10)
    assert vocab == {"b": 2, "a": 3}  # most frequent first; c, d below min_count
    assert build_vocabulary(["b a b", "c a b"], min_count=1, max_vocab=2) == {"b": 2, "a": 3}
    ids = encode_texts(["a zzz b a b", ""], vocab, max_length=4)
    assert ids.tolist() == [[3, 1, 2, 3], [0, 0, 0, 0]]


def test_text_vocabulary_from_training_split_only(tmp_path):
    train = pd.DataFrame({"text": ["Fever and cough", "cough, FEVER!", "rash", "rash rash"],
                          "label": ["flu", "flu", "pox", "pox"]})
    test = pd.DataFrame({"text": ["fever zebra", None], "label": ["pox", "flu"]})
    ood = pd.DataFrame({"text": ["zebra zebra rash"]})
    ds = FileDataset(train=write(train, tmp_path / "train.csv"),
                     val=write(test, tmp_path / "val.csv"), test=str(tmp_path / "val.csv"),
                     ood={"zoo": write(ood, tmp_path / "zoo.csv")},
                     text_column="text", min_count=1, max_length=3)
    ds.check()
    task = ds.build(0)
    # counts in training: rash 3, cough 2, fever 2, and 1 -> ids by frequency, ties a-z
    assert task.input_kind == "tokens"
    assert task.vocab_size == 2 + 4
    rash, cough, fever, and_ = 2, 3, 4, 5
    assert task.train.x.dtype == torch.long and task.train.x.shape == (4, 3)
    assert task.train.x.tolist() == [[fever, and_, cough], [cough, fever, 0],
                                     [rash, 0, 0], [rash, rash, 0]]
    assert task.test.x.tolist() == [[fever, 1, 0], [0, 0, 0]]  # 'zebra' only in test: unknown
    assert task.ood["zoo"].tolist() == [[1, 1, rash]]
    assert task.num_tokens == 3
    # padding is masked by the model, and the words stay readable for a tokenizer
    assert task.padding_id == 0
    assert task.vocabulary == [None, None, "rash", "cough", "fever", "and"]


def test_text_vocabulary_ignores_held_out_rows_of_an_automatic_split(tmp_path):
    n = 24
    df = pd.DataFrame({"text": [f"common w{i}" for i in range(n)],
                       "label": [i % 2 for i in range(n)]})
    task = FileDataset(train=write(df, tmp_path / "t.csv"), text_column="text",
                       min_count=1, max_length=2).build(0)
    # 'common' plus one unique word per training row; held-out words are unknown
    assert task.vocab_size == 2 + 1 + len(task.train)
    assert (task.test.x[:, 1] == 1).all() and (task.val.x[:, 1] == 1).all()
    assert (task.train.x[:, 1] >= 2).all()


# --------------------------------------------------------------------------- NPZ


def test_npz_features_vectors_and_tokens(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)

    np.savez(tmp_path / "f.npz", x=rng.normal(3.0, 2.0, (20, 5)), y=y)
    task = FileDataset(train=str(tmp_path / "f.npz")).build(0)
    assert task.input_kind == "features" and task.train.x.shape[1:] == (5,)
    assert torch.allclose(task.train.x.mean(0), torch.zeros(5), atol=1e-5)

    vectors = rng.normal(3.0, 2.0, (20, 7, 4)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=vectors, y=y)
    np.savez(tmp_path / "v_ood.npz", x=vectors[:3] * 10)  # y optional for OOD
    task = FileDataset(train=str(tmp_path / "v.npz"), val=str(tmp_path / "v.npz"),
                       test=str(tmp_path / "v.npz"), ood={"big": str(tmp_path / "v_ood.npz")}
                       ).build(0)
    assert task.input_kind == "vectors" and task.feature_dim == 4 and task.num_tokens == 7
    assert torch.equal(task.train.x, torch.as_tensor(vectors))  # used as given
    assert task.ood["big"].shape == (3, 7, 4)

    tokens = rng.integers(0, 9, (20, 6))
    tokens[0, 0] = 12
    np.savez(tmp_path / "t.npz", x=tokens, y=np.array(["neg", "pos"] * 10))
    np.savez(tmp_path / "t_test.npz", x=tokens[:4] % 5, y=np.array(["pos"] * 4))
    task = FileDataset(train=str(tmp_path / "t.npz"), test=str(tmp_path / "t_test.npz")
                       ).build(0)
    assert task.input_kind == "tokens" and task.vocab_size == 13
    assert task.train.x.dtype == torch.long
    assert task.class_names == ["neg", "pos"] and task.test.y.tolist() == [1, 1, 1, 1]
    assert len(task.train) + len(task.val) == 20  # val split from the training file


# --------------------------------------------------------------------------- bad files


def bad(tmp_path: Path, case: str) -> tuple[dict, str, str]:
    """Dataset params for a bad-input case, the file name and a word the message must hold."""
    good = write(TRAIN, tmp_path / "good.csv")
    p = tmp_path
    if case == "missing file":
        return {"train": str(p / "nope.csv")}, "nope.csv", "no such file"
    if case == "unsupported extension":
        (p / "data.xlsx").write_text("x")
        return {"train": str(p / "data.xlsx")}, "data.xlsx", ".csv, .parquet or .npz"
    if case == "directory":
        (p / "dir.csv").mkdir()
        return {"train": str(p / "dir.csv")}, "dir.csv", "directory"
    if case == "corrupt parquet":
        (p / "bad.parquet").write_bytes(b"not parquet at all")
        return {"train": good, "test": str(p / "bad.parquet")}, "bad.parquet", "cannot read"
    if case == "ragged csv":
        (p / "bad.csv").write_text("a,label\n1,x\n2,y,3,4\n")
        return {"train": str(p / "bad.csv")}, "bad.csv", "cannot read it as CSV"
    if case == "not utf-8":
        (p / "latin.csv").write_bytes("a,label\n1,caf\xe9\n".encode("latin-1"))
        return {"train": str(p / "latin.csv")}, "latin.csv", "UTF-8"
    if case == "empty file":
        (p / "empty.csv").write_text("")
        return {"train": good, "val": str(p / "empty.csv")}, "empty.csv", "empty"
    if case == "header only":
        (p / "header.csv").write_text("a,b,c,label\n")
        return {"train": good, "test": str(p / "header.csv")}, "header.csv", "no data rows"
    if case == "missing label column":
        return ({"train": good, "label_column": "lable"}, "good.csv",
                "Did you mean 'label'?")
    if case == "missing feature column":
        df = TEST.drop(columns="b")
        return ({"train": good, "test": write(df, p / "nob.csv")}, "nob.csv",
                "no feature column 'b'")
    if case == "missing text column":
        return {"train": good, "text_column": "notes"}, "good.csv", "Did you mean 'note'?"
    if case == "non-numeric feature":
        df = TEST.astype({"a": object})
        df.loc[1, "a"] = "high"
        return ({"train": good, "test": write(df, p / "text_in_a.csv")}, "text_in_a.csv",
                "'a' is not numeric: data row 2 has 'high'")
    if case == "spoiled numeric column":
        df = TRAIN.astype({"b": object})
        df.loc[2, "b"] = "?"
        return {"train": write(df, p / "spoiled.csv")}, "spoiled.csv", "'b' is not numeric"
    if case == "nan feature":
        df = TRAIN.copy()
        df.loc[[1, 3], "c"] = np.nan
        return {"train": write(df, p / "nan.csv")}, "nan.csv", "'c' has 2 missing values"
    if case == "missing labels":
        df = TEST.astype({"label": object})
        df.loc[0, "label"] = None
        return {"train": good, "val": write(df, p / "nolab.csv")}, "nolab.csv", "label column"
    if case == "unseen test label":
        df = TEST.copy()
        df.loc[0, "label"] = "maybe"
        return ({"train": good, "test": write(df, p / "maybe.csv")}, "maybe.csv",
                "'maybe' (1 row)")
    if case == "unseen shifted label":
        df = TEST.copy()
        df.loc[1, "label"] = "other"
        return ({"train": good, "val": good, "test": good,
                 "shifted": {"site": [good, write(df, p / "site2.csv")]}}, "site2.csv",
                "shifted 'site' severity 2")
    if case == "single class":
        df = TRAIN.assign(label="yes")
        return {"train": write(df, p / "one.csv")}, "one.csv", "at least two classes"
    if case == "no numeric columns":
        df = pd.DataFrame({"t": ["a", "b"], "label": [0, 1]})
        return {"train": write(df, p / "words.csv")}, "words.csv", "set feature_columns"
    if case == "too few rows to split":
        return {"train": good}, "good.csv", "cannot split"
    if case == "empty vocabulary":
        return ({"train": good, "val": good, "test": good, "text_column": "note"}, "good.csv",
                "min_count=2")
    if case == "npz without y":
        np.savez(p / "noy.npz", x=np.zeros((4, 2)), labels=np.arange(4))
        return {"train": str(p / "noy.npz")}, "noy.npz", "found ['x', 'labels']"
    if case == "npz bad x":
        np.savez(p / "x4d.npz", x=np.zeros((4, 2, 2, 2)), y=np.arange(4))
        return {"train": str(p / "x4d.npz")}, "x4d.npz", "expected float [N, F]"
    if case == "npz corrupt":
        (p / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
        return {"train": str(p / "junk.npz")}, "junk.npz", "cannot read it as NPZ"
    if case == "npz shape mismatch":
        np.savez(p / "tr.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
        np.savez(p / "te.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
        return ({"train": str(p / "tr.npz"), "test": str(p / "te.npz")}, "te.npz",
                "same kind and shape")
    if case == "npz token beyond vocabulary":
        np.savez(p / "tr.npz", x=np.array([[0, 1], [2, 3]]), y=np.array([0, 1]))
        np.savez(p / "ood.npz", x=np.array([[4, 1]]))
        return ({"train": str(p / "tr.npz"), "val": str(p / "tr.npz"), "test": str(p / "tr.npz"),
                 "ood": {"far": str(p / "ood.npz")}}, "ood.npz", "vocab_size = 4")
    if case == "mixed npz and table":
        np.savez(p / "t.npz", x=np.zeros((2, 3)), y=np.array([0, 1]))
        return {"train": good, "test": str(p / "t.npz")}, "t.npz", ".csv or .parquet"
    raise AssertionError(case)


BAD_CASES = [
    "missing file", "unsupported extension", "directory", "corrupt parquet", "ragged csv",
    "not utf-8", "empty file", "header only", "missing label column", "missing feature column",
    "missing text column", "non-numeric feature", "spoiled numeric column", "nan feature",
    "missing labels", "unseen test label", "unseen shifted label", "single class",
    "no numeric columns", "too few rows to split", "empty vocabulary", "npz without y",
    "npz bad x", "npz corrupt", "npz shape mismatch", "npz token beyond vocabulary",
    "mixed npz and table",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_data_error_naming_the_file(tmp_path, case):
    params, filename, words = bad(tmp_path, case)
    with pytest.raises(DataError) as from_check:
        FileDataset(**params).check()
    assert filename in message(from_check) and words in message(from_check)
    with pytest.raises(DataError) as from_build:
        FileDataset(**params).build(0)
    assert message(from_build) == message(from_check)


def test_missing_column_lists_available_columns(tmp_path):
    with pytest.raises(DataError) as exc:
        FileDataset(train=write(TRAIN, tmp_path / "t.csv"), label_column="outcome").check()
    assert "Available columns: 'a', 'b', 'c', 'note', 'label'" in message(exc)


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = write(TRAIN, tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(DataError) as exc:
        FileDataset(train=path).check()
    assert "t.parquet" in message(exc) and "pip install pyarrow" in message(exc)
    assert "bayesbench[parquet]" in message(exc)


def test_train_is_required_and_reads_well_in_bayesbench_list():
    with pytest.raises(DataError) as exc:
        DATASETS.get("files")().build(0)
    assert f"needs parameters: {exc.value}"[:60] == (
        "needs parameters: train: PATH.csv|.parquet|.npz is required;")
    with pytest.raises(DataError, match="params.train"):
        FileDataset().check()


@pytest.mark.parametrize("params, words", [
    ({"val_fraction": 1.5}, "val_fraction=1.5"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves no training data"),
    ({"max_length": 0}, "max_length=0"),
    ({"text_column": "t", "feature_columns": ["a"]}, "not both"),
    ({"feature_columns": "a"}, "list of column names"),
    ({"feature_columns": ["label"]}, "cannot also be an input"),
    ({"shifted": {"age": []}}, "shifted.age must be a list"),
    ({"ood": {"far": 3}}, "ood must map"),
])
def test_bad_parameters(params, words):
    with pytest.raises(DataError, match=words):
        FileDataset(train="t.csv", **params)


def test_relative_and_home_paths(tmp_path, monkeypatch):
    write(TRAIN, tmp_path / "t.csv")
    monkeypatch.chdir(tmp_path)
    assert len(FileDataset(train="t.csv", val="t.csv", test="./t.csv").build(0).train) == 4
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(FileDataset(train="~/t.csv", val="~/t.csv", test="~/t.csv").build(0).test) == 4


def test_registered_as_files():
    assert DATASETS.get("files") is FileDataset


# --------------------------------------------------------------------------- CLI


CONFIG = """
seeds: [0]
model: {{d_model: 16, depth: 1, heads: 2}}
training: {{epochs: 1, batch_size: 16}}
evaluation: {{mc_samples: 2}}
quick: {{epochs: 1, max_train: 64, max_eval: 32, mc_samples: 2}}
datasets:
  - name: files
    label: icu
    params:
      train: {train}
      ood: {{newborn: newborn.csv}}
      shifted: {{site: [site.csv]}}
methods:
  - name: map
"""


def test_cli_run_end_to_end_and_bad_file_exit_2(tmp_path):
    df = random_table(48, classes=("survived", "died"))
    write(df, tmp_path / "icu_adult.csv")
    write(random_table(10, seed=1, classes=("survived", "died")), tmp_path / "site.csv")
    write(random_table(8, seed=2).drop(columns="label"), tmp_path / "newborn.csv")
    (tmp_path / "good.yaml").write_text(CONFIG.format(train="icu_adult.csv"))
    (tmp_path / "bad.yaml").write_text(CONFIG.format(train="icu_adult.cvs"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(bayesbench.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}

    def run(config: str, store: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bayesbench", "run", "--config", config, "--store", store,
             "--quick", "--seeds", "0"],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )

    ok = run("good.yaml", "tmp/x.sqlite")  # relative paths: against the working directory
    assert ok.returncode == 0, ok.stderr
    with sqlite3.connect(tmp_path / "tmp" / "x.sqlite") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        runs = [t for t in tables if "run" in t]
        assert runs and db.execute(f"select count(*) from {runs[0]}").fetchone()[0] == 1

    failed = run("bad.yaml", "tmp/bad.sqlite")
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    err = " ".join(failed.stderr.split())  # rich may wrap long lines
    assert "bad.yaml: datasets 'icu': train file 'icu_adult.cvs'" in err
    assert "unsupported file type '.cvs'" in err
    assert not (tmp_path / "tmp" / "bad.sqlite").exists()
