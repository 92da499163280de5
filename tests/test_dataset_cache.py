"""The on-disk dataset cache: bit-identical tasks, keys that change with everything the
tensors depend on, safe files (atomic, corrupt ones rebuilt), a folder users control."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bayesbench.data import cache as cache_mod
from bayesbench.data.cache import DatasetCache, cache_root
from bayesbench.data.markov import MarkovChains
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Split, Task

REPO = Path(__file__).resolve().parent.parent

SMALL = {
    "digits": {},
    "mnist1d": {"num_samples": 400},
    "markov": {"num_train": 60, "num_val": 20, "num_test": 30},
    "breast_cancer": {},
    "bbc_news": {"max_length": 16, "max_vocab": 300},
    "actg175": {},
    "italy_power_demand": {},
}
"""Every built-in dataset but ``files`` (tested on its own files below), at small sizes."""

MARKOV = {"num_train": 40, "num_val": 10, "num_test": 20, "length": 6}


def assert_same_value(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), where
        assert torch.equal(a, b), where
    elif isinstance(a, Split):
        assert type(b) is Split, where
        for f in dataclasses.fields(Split):
            assert_same_value(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where  # same keys, same order
        for k in a:
            assert_same_value(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def assert_same_task(a: Task, b: Task) -> None:
    """Every field of two tasks equal: tensors by torch.equal (and dtype, shape, strides)."""
    assert type(a) is Task and type(b) is Task
    for f in dataclasses.fields(Task):
        assert_same_value(getattr(a, f.name), getattr(b, f.name), f.name)


@pytest.fixture
def cache(tmp_path) -> DatasetCache:
    return DatasetCache(tmp_path / "cache")


def _stored(cache: DatasetCache) -> list[Path]:
    return sorted(cache.folder.rglob("*.pt")) if cache.folder.exists() else []


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_loaded_task_is_bit_identical_to_a_fresh_build(cache, name):
    cls = DATASETS.get(name)
    params = SMALL[name]
    try:
        fresh = cls(**params).build(1)
    except DataError as exc:  # an optional data package is not installed
        pytest.skip(str(exc))
    first = cache.build(cls, name, params, 1)  # a miss: built and stored
    assert_same_task(fresh, first)
    (path,) = _stored(cache)
    cls_build = cls.build
    try:  # a hit never builds
        cls.build = lambda self, seed: pytest.fail("built although cached")
        loaded = cache.build(cls, name, params, 1)
    finally:
        cls.build = cls_build
    assert_same_task(fresh, loaded)
    assert cache.summary(name, path.stem) == cache_mod.task_summary(fresh)


def test_the_key_holds_params_seed_version_and_the_code(cache, monkeypatch):
    key = cache.key(MarkovChains, "markov", MARKOV, 0)
    assert len(key) == 24
    assert cache.key(MarkovChains, "markov", dict(MARKOV), 0) == key
    assert cache.key(MarkovChains, "markov", MARKOV, 1) != key
    assert cache.key(MarkovChains, "markov", {**MARKOV, "length": 7}, 0) != key
    # the defaults spelled out are the same build
    defaults = cache_mod.resolved_params(MarkovChains, {})
    assert defaults["num_train"] == 4000
    assert cache.key(MarkovChains, "markov", defaults, 0) == cache.key(MarkovChains, "markov",
                                                                         {}, 0)
    monkeypatch.setattr(MarkovChains, "version", 2)
    assert cache.key(MarkovChains, "markov", MARKOV, 0) != key
    monkeypatch.setattr(MarkovChains, "version", 1)
    assert cache.key(MarkovChains, "markov", MARKOV, 0) == key
    monkeypatch.setattr(cache_mod, "library_versions", lambda: {"numpy": "0.0"})
    assert cache.key(MarkovChains, "markov", MARKOV, 0) != key


def test_an_edited_dataset_without_a_version_bump_is_not_served_stale(cache, tmp_path,
                                                                      monkeypatch):
    package = tmp_path / "bayesbench"
    shutil.copytree(REPO / "bayesbench" / "data", package / "data")
    shutil.copy(REPO / "bayesbench" / "task.py", package / "task.py")
    monkeypatch.setattr(cache_mod, "_PACKAGE_DIR", package)
    key = cache.key(MarkovChains, "markov", MARKOV, 0)
    for edited in (package / "data" / "markov.py", package / "data" / "files.py",
                   package / "task.py"):  # the dataset, a helper it imports, the Task
        text = edited.read_text()
        edited.write_text(text + "\n# edited\n")
        assert cache.key(MarkovChains, "markov", MARKOV, 0) != key, edited.name
        edited.write_text(text)
    assert cache.key(MarkovChains, "markov", MARKOV, 0) == key
    with (package / "data" / "cache.py").open("a") as f:  # the cache's own code builds nothing
        f.write("\n# edited\n")
    assert cache.key(MarkovChains, "markov", MARKOV, 0) == key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other_key"])
def test_a_corrupt_or_partial_file_is_rebuilt_not_an_error(cache, damage):
    fresh = MarkovChains(**MARKOV).build(0)
    cache.build(MarkovChains, "markov", MARKOV, 0)
    (path,) = _stored(cache)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a torch file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a whole file under the wrong name (a rename gone wrong): never served
        other = MarkovChains(**{**MARKOV, "length": 5})
        torch.save({"format": cache_mod.FORMAT, "key": "x" * 24,
                    "task": cache_mod.encode_task(other.build(0))}, path)
    assert cache.load("markov", path.stem) is None
    assert_same_task(fresh, cache.build(MarkovChains, "markov", MARKOV, 0))
    assert_same_task(fresh, cache.load("markov", path.stem))  # rewritten whole
    assert not list(cache.folder.rglob("*.tmp"))


def test_concurrent_workers_build_the_same_task_safely(tmp_path):
    """Four processes miss the same key at once: each gets the task, one file remains, no
    temporary file is left behind."""
    folder = tmp_path / "shared"
    code = ("import sys, torch; from bayesbench.data.cache import build_task; "
            f"t = build_task('markov', {MARKOV!r}, 0); "
            "torch.save(t.train.x, sys.argv[1])")
    env = dict(os.environ, BAYESBENCH_CACHE=str(folder), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"x{i}.pt")],
                              env=env) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    fresh = MarkovChains(**MARKOV).build(0)
    for i in range(4):
        assert torch.equal(torch.load(tmp_path / f"x{i}.pt"), fresh.train.x)
    cache = DatasetCache(folder)
    (path,) = _stored(cache)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{path.stem}.json", path.name]
    assert_same_task(fresh, cache.load("markov", path.stem))


def test_a_cached_task_loads_without_scikit_learn_pandas_or_scipy(tmp_path):
    """Every built-in dataset's module imports them only to build (0.9 s of start-up in the
    driver of `bayesbench run` and in each worker): a warm cache never loads them."""
    folder = tmp_path / "warm"
    env = dict(os.environ, BAYESBENCH_CACHE=str(folder), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    build = (f"import sys; from bayesbench.data.cache import build_task\n"
             f"for name, params in {SMALL!r}.items(): build_task(name, params, 0)\n"
             "print(sorted(m for m in ('sklearn', 'pandas', 'scipy') if m in sys.modules))")
    cold = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True,
                          text=True, timeout=300)
    assert cold.returncode == 0, cold.stderr
    assert cold.stdout.strip() != "[]"  # building needs them: the check below can fail
    warm = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True,
                          text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.strip() == "[]"


def test_the_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESBENCH_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    for off in ("off", "OFF", "none", "0", "false"):
        monkeypatch.setenv("BAYESBENCH_CACHE", off)
        assert cache_root() is None
    monkeypatch.delenv("BAYESBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "bayesbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "bayesbench"


def test_the_test_suite_never_writes_the_home_cache(dataset_cache_in_tmp):
    assert cache_root() == dataset_cache_in_tmp


def test_cache_off_builds_every_time_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESBENCH_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    task = cache_mod.build_task("markov", MARKOV, 0)
    assert_same_task(task, MarkovChains(**MARKOV).build(0))
    assert not any(tmp_path.iterdir())
    assert DatasetCache.default().info().root is None


class OutsideDataset(MarkovChains):
    """A dataset from outside bayesbench.data (a plugin's): its reads are unknown."""


def test_datasets_outside_the_package_are_never_cached(cache):
    assert cache.key(OutsideDataset, "tests:OutsideDataset", MARKOV, 0) is None
    task = cache.build(OutsideDataset, "tests:OutsideDataset", MARKOV, 0)
    assert_same_task(task, MarkovChains(**MARKOV).build(0))
    assert _stored(cache) == []


def _csv(path: Path, n: int, shift: float) -> None:
    rng = np.random.default_rng(int(shift * 10) + n)
    x = rng.normal(shift, 1, (n, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": (x[:, 0] > shift).astype(int)}
                 ).to_csv(path, index=False)


def test_the_files_dataset_is_keyed_by_its_files(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "train.csv", 120, 0.0)
    _csv(tmp_path / "far.csv", 40, 2.0)
    files = DATASETS.get("files")
    params = {"train": "train.csv", "shifted": {"far": ["far.csv"]}}
    first = cache.build(files, "files", params, 0)
    assert_same_task(first, files(**params).build(0))
    material = cache_mod.key_material(files, "files", params, 0)
    assert [f[0] for f in material["files"]] == [str(tmp_path / "train.csv"),
                                                  str(tmp_path / "far.csv")]
    key = cache.key(files, "files", params, 0)
    # a shift file rewritten (same size: the mtime and ctime tell) is read again
    before = (tmp_path / "far.csv").stat()
    _csv(tmp_path / "far.csv", 40, 3.0)
    os.utime(tmp_path / "far.csv", ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert cache.key(files, "files", params, 0) != key
    second = cache.build(files, "files", params, 0)
    assert_same_task(second, files(**params).build(0))
    assert not torch.equal(second.shifted["far"][1].x, first.shifted["far"][1].x)
    assert len(_stored(cache)) == 2
    # a missing file is not cached: the build raises its own error
    missing = {**params, "ood": {"gone": "gone.csv"}}
    assert cache.key(files, "files", missing, 0) is None
    with pytest.raises(DataError, match="gone.csv"):
        cache.build(files, "files", missing, 0)


def test_info_counts_and_clear_removes_only_its_own_files(cache):
    cache.build(MarkovChains, "markov", MARKOV, 0)
    cache.build(MarkovChains, "markov", MARKOV, 1)
    info = cache.info()
    assert info.root == cache.root and info.tasks == 2 and set(info.datasets) == {"markov"}
    on_disk = sum(f.stat().st_size for f in cache.folder.rglob("*") if f.is_file())
    assert info.bytes == on_disk > 0
    (cache.root / "notes.txt").write_text("mine")
    (cache.folder / "markov" / "keep.csv").write_text("mine too")
    assert cache.clear() == on_disk
    assert (cache.root / "notes.txt").exists() and (cache.folder / "markov" / "keep.csv").exists()
    assert cache.info().tasks == 0 and _stored(cache) == []
    assert DatasetCache(cache.root / "nowhere").clear() == 0


def test_build_task_of_a_run_loads_from_the_cache_and_then_cuts_it(monkeypatch, tmp_path):
    from bayesbench.config import expand, parse_config
    from bayesbench.runner import build_task

    monkeypatch.setenv("BAYESBENCH_CACHE", str(tmp_path / "c"))
    cfg = parse_config({"seeds": [2], "datasets": [{"name": "markov", "params": MARKOV}],
                        "methods": ["map"], "quick": {"max_train": 16, "max_eval": 8}})
    full, quick = expand(cfg)[0], expand(cfg, quick=True)[0]
    fresh = MarkovChains(**MARKOV).build(2)
    assert_same_task(build_task(full), fresh)
    assert len(_stored(DatasetCache(tmp_path / "c"))) == 1
    monkeypatch.setattr(MarkovChains, "build", lambda self, seed: pytest.fail("rebuilt"))
    assert_same_task(build_task(full), fresh)
    assert_same_task(build_task(quick), fresh.limited(16, 8, seed=2, severities=2))


def test_a_remembered_failure_is_said_until_the_task_is_stored(cache):
    key = cache.key(MarkovChains, "markov", MARKOV, 0)
    assert cache.summary("markov", key) is None
    cache.remember_failure("markov", key, "needs parameters: train is required")
    assert cache.summary("markov", key) == "needs parameters: train is required"
    assert cache.info().tasks == 0
    task = cache.build(MarkovChains, "markov", MARKOV, 0)
    assert cache.summary("markov", key) == cache_mod.task_summary(task)
