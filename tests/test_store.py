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


# -- a finished result is never lost; claims keep two processes from training one run twice --


def test_a_failed_result_never_replaces_a_complete_one(store):
    done = fake_result("map", "toy", 0, 0.9, 0.1)
    assert store.write(done) is True
    failed = fake_result("map", "toy", 0, 0.9, 0.1, status="failed", error="BrokenProcessPool")
    assert failed.key == done.key
    assert store.write(failed) is False
    assert store.get(done.key) == done and store.completed_keys() == {done.key}
    assert not store.results(status="failed")
    # a failed one is still replaced by a later failure and by a complete result
    other = fake_result("vi", "toy", 0, 0.9, 0.1, status="failed", error="first")
    store.write(other)
    assert store.write(fake_result("vi", "toy", 0, 0.9, 0.1, status="failed", error="second"))
    assert store.get(other.key).error == "second"
    assert store.write(fake_result("vi", "toy", 0, 0.8, 0.1))
    assert store.get(other.key).status == "complete"


def test_claims_are_exclusive_until_written_or_released(store, tmp_path):
    from bayesbench.store import ClaimOwner

    a, b = ClaimOwner.this_process(), ClaimOwner.this_process()  # two live owners, one pid
    other = ResultStore(store.path)  # a second handle, as a second process would have
    assert store.claim("k1", a).status == "claimed"
    assert store.claim("k1", a).status == "claimed"  # re-claiming one's own claim is fine
    held = other.claim("k1", b)
    assert held.status == "held" and str(a.pid) in held.holder
    result = fake_result("map", "toy", 0, 0.9, 0.1)
    assert store.claim(result.key, a).status == "claimed"
    store.write(result)  # the write drops the claim, and a complete run is not claimable
    assert other.claim(result.key, b).status == "complete"
    assert [k for k, _ in store.claims()] == ["k1"]
    store.release_claims(a)
    assert other.claim("k1", b).status == "claimed"
    other.release_claims(b, ["k1"])
    assert store.claims() == []


def test_a_claim_is_lost_by_a_dead_process_and_by_an_expired_lease(store):
    import subprocess
    import sys
    import time

    from bayesbench.store import ClaimOwner

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ghost = ClaimOwner(ClaimOwner.this_process().host, int(dead.stdout), "ghost")
    assert store.claim("k", ghost).status == "claimed"
    me = ClaimOwner.this_process()
    assert store.claim("k", me).status == "claimed"  # its process is gone: taken over

    remote = ClaimOwner("another-host", 1, "remote")  # can't check its pid: the lease decides
    assert store.claim("r", remote).status == "claimed"
    assert store.claim("r", me, lease_s=3600).status == "held"
    time.sleep(0.05)
    assert store.claim("r", me, lease_s=0.01).status == "claimed"
    store.renew_claims(me)  # renewing keeps a claim alive against the next one's lease
    assert store.claim("r", remote, lease_s=3600).status == "held"


def test_a_store_from_before_claims_gains_the_table(tmp_path):
    path = tmp_path / "old.sqlite"
    ResultStore(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE claims")
    store = ResultStore(path)
    from bayesbench.store import ClaimOwner

    assert store.claim("k", ClaimOwner.this_process()).status == "claimed"
