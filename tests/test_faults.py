"""Fault tests: each starts real `bayesbench run` processes, breaks something and asserts what
the store holds afterwards. Linux only (they look for worker processes in /proc).

A worker killed mid-grid fails only its own run; a driver killed while its workers start
leaves no orphan; two `run`s on one store train each run once; Ctrl-C stops promptly, keeps
what finished and exits 130, and a second Ctrl-C aborts without a traceback.

Waits are bounded generously (minutes for things that take seconds): they only keep a broken
build from hanging the suite, and a loaded machine does not reach them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
LIMIT_S = 240.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="finds worker processes through /proc")

TINY = """
seeds: {seeds}
model: {{d_model: 16, heads: 2, depth: 1}}
training: {{epochs: 1}}
quick: {{epochs: 1, max_train: 64, max_eval: 32, mc_samples: 2, seeds: 1}}
datasets: [digits]
methods:
{methods}
"""


def write_config(path: Path, methods: list[str], seeds: list[int]) -> Path:
    path.write_text(TINY.format(seeds=seeds, methods="\n".join(f"  - {m}" for m in methods)))
    return path


def start(tmp_path: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS),
                                           os.environ.get("PYTHONPATH", "")]))
    if log is not None:
        env["BAYESBENCH_FIT_LOG"] = str(log)
    return subprocess.Popen([sys.executable, "-m", "bayesbench", "run", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"bayesbench run exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def rows(store: Path, sql: str) -> list[tuple]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=30) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def fits(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_killed_worker_fails_only_its_own_run(tmp_path):
    config = write_config(tmp_path / "c.yaml", [
        "fault_methods:Logged",
        "{name: 'fault_methods:Logged', label: dies, params: {die: true}}",
        "{name: 'fault_methods:Logged', label: after, params: {sleep: 0.1}}",
    ], seeds=[0, 1])
    proc = start(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                 "--workers", "2", "--store", "r.sqlite")
    out, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 1, out + err  # failed runs: exit 1
    status = dict(((label, seed), (st, error)) for label, seed, st, error in rows(
        tmp_path / "r.sqlite", "SELECT label, seed, status, error FROM runs"))
    assert len(status) == 6
    for seed in (0, 1):
        assert status[("Logged", seed)] == ("complete", None)
        assert status[("after", seed)] == ("complete", None)
        st, error = status[("dies", seed)]
        assert st == "failed" and "killed by SIGKILL" in error, error
    assert "BrokenProcessPool" not in out + err
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM claims") == []


def test_killing_the_driver_while_workers_start_leaves_no_orphans(tmp_path):
    config = write_config(tmp_path / "c.yaml", ["map", "mc_dropout"], seeds=[0])
    proc = start(tmp_path, "--config", str(config), "--quick", "--workers", "2",
                 "--store", "r.sqlite")
    workers = wait_for(lambda: children(proc.pid), "the first worker process", proc)
    proc.kill()  # at once: the workers are still starting (importing torch)
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in workers), f"workers {sorted(workers)} to exit")
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM runs WHERE status = 'complete'") == []


def test_two_runs_on_one_store_train_each_run_once(tmp_path):
    config = write_config(tmp_path / "c.yaml", [
        "{name: 'fault_methods:Logged', params: {sleep: 0.5}}",
        "{name: 'fault_methods:Logged', label: second, params: {sleep: 0.5}}",
        "{name: 'fault_methods:Logged', label: third, params: {sleep: 0.5}}",
    ], seeds=[0, 1])
    log = tmp_path / "fits.log"
    args = ("--config", str(config), "--quick", "--seeds", "0,1", "--store", "r.sqlite")
    first, second = start(tmp_path, *args, log=log), start(tmp_path, *args, log=log)
    results = [p.communicate(timeout=LIMIT_S) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, results
    trained = Counter(line.split(" ", 1)[1] for line in fits(log))
    assert len(trained) == 6 and set(trained.values()) == {1}, trained  # each once, all run
    complete = rows(tmp_path / "r.sqlite", "SELECT key FROM runs WHERE status = 'complete'")
    assert len(complete) == 6
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM claims") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_keeps_finished_runs_and_starts_no_new_one(tmp_path, workers):
    methods = ["map", "fault_methods:Blocking"]
    config = write_config(tmp_path / "c.yaml", methods, seeds=[0, 1])
    log, store = tmp_path / "fits.log", tmp_path / "r.sqlite"
    proc = start(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                 "--workers", str(workers), "--store", "r.sqlite", log=log)
    # serial: map s0 then Blocking s0 blocks; two workers: map s0, map s1 done, both Blocking
    expect_done, expect_blocked = (1, 1) if workers == 1 else (2, 2)
    wait_for(lambda: len(rows(store, "SELECT key FROM runs WHERE status = 'complete'"))
             >= expect_done and sum("blocking" in f for f in fits(log)) >= expect_blocked,
             "finished runs and blocked ones", proc)
    started = len(fits(log))
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    out, err = proc.communicate(timeout=LIMIT_S)
    took = time.monotonic() - sent
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert f"{expect_done} run(s) finished and were stored" in text, text
    assert f"{expect_blocked} run(s) in flight were stopped" in text, text
    assert len(fits(log)) == started  # no run started after Ctrl-C
    statuses = rows(store, "SELECT label, status FROM runs")
    assert sorted(statuses) == [("map", "complete")] * expect_done  # nothing failed stored
    assert rows(store, "SELECT * FROM claims") == []
    print(f"Ctrl-C to exit with {workers} worker(s): {took:.2f} s")

    # a rerun resumes: the finished runs are skipped
    proc = start(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                 "--workers", str(workers), "--store", "r.sqlite", "--methods", "map", log=log)
    out, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 0, out + err
    assert f"{2 - expect_done} run(s) done, {expect_done} already stored" in out
    assert sorted(rows(store, "SELECT label, status FROM runs")) == [("map", "complete")] * 2


def test_a_second_ctrl_c_aborts_at_once_without_a_traceback(tmp_path):
    config = write_config(tmp_path / "c.yaml", ["fault_methods:Blocking"], seeds=[0, 1])
    log = tmp_path / "fits.log"
    proc = start(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                 "--workers", "2", "--store", "r.sqlite", log=log)
    wait_for(lambda: len(fits(log)) >= 2, "both runs to block", proc)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM runs") == []
