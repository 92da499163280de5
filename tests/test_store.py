"""ResultStore: exact round trips, upserts, resume keys, reopening, and unusable files."""

from __future__ import annotations

import math
import sqlite3

import pytest
from fake_results import fake_result

from bayesbench.errors import StoreError
from bayesbench.results import MetricValue
from bayesbench.store import SCHEMA_VERSION, ResultStore


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "nested" / "dir" / "results.sqlite")


def test_constructor_creates_parent_folders_and_round_trips_exactly(store):
    assert store.path.is_file()
    result = fake_result("vi_cold", "toy", 3, acc=0.123456789012345, ece=1 / 3)
    result.reliability["confidence_sum"][1] = 0.1 + 0.2  # not exactly representable
    store.write(result)
    back = store.get(result.key)
    assert back == result  # dataclass equality: every field, metric order and float bits
    assert back.metrics[0].value == 0.123456789012345
    assert store.get("no-such-key") is None


def test_nan_and_inf_metric_values_survive(store):
    result = fake_result("map", "toy", 0, 0.9, 0.1)
    result.metrics[0].value = math.nan
    result.metrics[1].value = math.inf
    store.write(result)
    back = store.get(result.key)
    assert math.isnan(back.metrics[0].value)
    assert back.metrics[1].value == math.inf


def test_upsert_replaces_failed_run_and_completed_keys_excludes_failures(store):
    failed = fake_result("map", "toy", 0, 0.9, 0.1, status="failed", error="CUDA OOM")
    other_failed = fake_result("vi", "toy", 0, 0.9, 0.1, status="failed", error="boom")
    done = fake_result("map", "toy", 1, 0.9, 0.1)
    for r in (failed, other_failed, done):
        store.write(r)
    assert store.completed_keys() == {done.key}
    assert {r.key for r in store.results(status="failed")} == {failed.key, other_failed.key}

    rerun = fake_result("map", "toy", 0, 0.8, 0.2)  # same key, now complete
    assert rerun.key == failed.key
    store.write(rerun)
    assert store.completed_keys() == {done.key, rerun.key}
    assert store.get(rerun.key) == rerun
    assert len(store.runs_frame()) == 3  # replaced, not duplicated
    tidy = store.metrics_frame()
    assert len(tidy[tidy["key"] == rerun.key]) == len(rerun.metrics)

    # a complete run written again with fewer metrics loses the stale ones
    shorter = fake_result("map", "toy", 0, 0.8, 0.2, shift=False, ood=False)
    store.write(shorter)
    assert len(store.get(shorter.key).metrics) == 8 + 3


def test_reopening_keeps_everything(store):
    results = [fake_result(lab, "toy", s, 0.9, 0.1) for lab in ("map", "vi") for s in range(3)]
    results.append(fake_result("vi", "toy", 9, 0.9, 0.1, status="failed", error="nan loss"))
    for r in results:
        store.write(r)
    reopened = ResultStore.open_existing(store.path)
    assert sorted(reopened.results(), key=lambda r: r.key) == sorted(results, key=lambda r: r.key)
    assert reopened.completed_keys() == {r.key for r in results[:6]}
    assert reopened.get(results[-1].key).error == "nan loss"


def test_frames(store):
    store.write(fake_result("map", "toy", 0, 0.9, 0.1))
    store.write(fake_result("vi", "toy", 0, 0.8, 0.05, quick=True))
    store.write(fake_result("vi", "toy", 1, 0.8, 0.05, status="failed", error="x"))
    runs = store.runs_frame()
    assert len(runs) == 3
    assert set(runs["status"]) == {"complete", "failed"}
    assert runs["quick"].dtype == bool
    tidy = store.metrics_frame()
    per_run = 8 + 4 * 8 + 2 * 9 + 3
    assert len(tidy) == 2 * per_run  # the failed run contributes nothing
    assert list(tidy.columns) == ["key", "label", "method", "dataset", "seed", "quick",
                                  "finished_at", "split", "metric", "value"]
    row = tidy[(tidy.label == "map") & (tidy.split == "shift/blur/2") & (tidy.metric == "ece")]
    assert row["value"].item() == pytest.approx(0.12)
    assert sorted(tidy["quick"].unique()) == [False, True]


def test_duplicate_metric_in_one_run_is_rejected(store):
    result = fake_result("map", "toy", 0, 0.9, 0.1)
    result.metrics.append(MetricValue("test", "accuracy", 0.5))
    with pytest.raises(ValueError, match="twice"):
        store.write(result)
    assert store.completed_keys() == set()  # nothing half-written


def test_open_existing_missing_store(tmp_path):
    path = tmp_path / "absent.sqlite"
    with pytest.raises(StoreError, match="no results at .*absent.sqlite: run `bayesbench run`"):
        ResultStore.open_existing(path)
    assert not path.exists()


def test_non_sqlite_file_raises_store_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("method,accuracy\nmap,0.9\n" * 200)
    with pytest.raises(StoreError, match="notes.sqlite"):
        ResultStore(path)
    assert path.read_text().startswith("method,accuracy")  # left untouched


def test_foreign_sqlite_database_raises_store_error(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="not a bayesbench results store"):
        ResultStore(path)


def test_newer_schema_raises_store_error(store):
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE bayesbench_schema SET value = ? WHERE name = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(StoreError, match="newer .*upgrade bayesbench"):
        ResultStore(store.path)


def test_folder_path_raises_store_error(tmp_path):
    with pytest.raises(StoreError, match="is a folder"):
        ResultStore(tmp_path)
