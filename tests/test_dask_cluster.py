"""The grid on a real Dask cluster on 127.0.0.1: a `dask scheduler` and two `dask worker`
processes started here (free ports through a scheduler file, cleaned up by their pids), and
`bayesbench run --scheduler` against them.

A worker SIGKILLed mid-grid: its run is rerun elsewhere and every run is stored once,
complete. A run that kills its worker each time is stored failed after bounded tries
(the scheduler's allowed-failures = 1: two tries). An unreachable scheduler exits 2 naming the
address. Serial, local processes and Dask give the same numbers. Slow ones: a LocalCluster
stopped by Ctrl-C, and Slurm through dask-jobqueue with a stand-in `sbatch` that runs the job
script on this machine.

Waits are bounded generously (minutes for what takes seconds): they only keep a broken build
from hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process groups and /proc")

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
LIMIT_S = 240.0

TINY = """
seeds: {seeds}
model: {{d_model: 16, heads: 2, depth: 1}}
training: {{epochs: 1}}
quick: {{epochs: 1, max_train: 64, max_eval: 32, mc_samples: 2, seeds: 1}}
datasets: [digits]
methods:
{methods}
{extra}
"""


def write_config(path: Path, methods: list[str], seeds: list[int], extra: str = "") -> Path:
    path.write_text(TINY.format(seeds=seeds, methods="\n".join(f"  - {m}" for m in methods),
                                extra=extra))
    return path


def environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS),
                                            os.environ.get("PYTHONPATH", "")]), **extra)


def start_run(cwd: Path, *args: str, log: Path | None = None, **env: str) -> subprocess.Popen:
    if log is not None:
        env["BAYESBENCH_FIT_LOG"] = str(log)
    return subprocess.Popen([sys.executable, "-m", "bayesbench", "run", *args], cwd=cwd,
                            env=environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bayesbench run did not end within {LIMIT_S} s:\n{out}\n{err}")


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


def rows(store: Path, sql: str) -> list[tuple]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=30) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def fits(log: Path) -> list[list[str]]:
    """(pid, label, training seed) of every fit so far."""
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def stop_group(proc: subprocess.Popen) -> None:
    """End a process we started in its own session, and everything it started."""
    if proc.poll() is None:
        with _suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with _suppress():
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group
    proc.wait(timeout=10)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


@dataclass
class Cluster:
    address: str
    folder: Path

    @property
    def fit_log(self) -> Path:
        """Where the workers log their fits (tests/fault_methods.py); emptied per test."""
        return self.folder / "fits.log"


@contextlib.contextmanager
def real_cluster(folder: Path, workers: int, **env: str):
    """`dask scheduler` on a free loopback port (found through its scheduler file) and
    ``workers`` one-thread `dask worker` processes with nannies; each in a session of its own,
    stopped by its pid at the end. Yields (address, the scheduler's Popen)."""
    from distributed import Client

    scheduler_file = folder / "scheduler.json"
    env = environment(**env)
    procs: list[subprocess.Popen] = []

    def spawn(module: str, *args: str, name: str) -> subprocess.Popen:
        with open(folder / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=folder,
                                          env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        return procs[-1]

    try:
        scheduler = spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                          "0", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                          "--scheduler-file", str(scheduler_file),
                          name="scheduler")
        address = wait_for(lambda: _address(scheduler_file), "the scheduler address")
        for i in range(workers):
            spawn("distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
                  "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                  "--local-directory", str(folder), name=f"worker{i}")
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=LIMIT_S)
            client.run(exec, "import bayesbench.runner")  # torch & co. imported once, here
        yield address, scheduler
    finally:
        for proc in reversed(procs):
            stop_group(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler (allowed-failures 1) and two workers on loopback, for the module."""
    folder = tmp_path_factory.mktemp("dask")
    with real_cluster(folder, 2, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1",
                      BAYESBENCH_FIT_LOG=str(folder / "fits.log")) as (address, _):
        yield Cluster(address, folder)


def _address(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["address"]
    except (ValueError, KeyError, OSError):
        return None


def _workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        return len(client.scheduler_info(n_workers=-1)["workers"])


# --------------------------------------------------------------------------- faults


def test_a_worker_killed_mid_grid_reruns_its_run_and_every_run_is_stored_once(cluster,
                                                                              tmp_path):
    config = write_config(tmp_path / "c.yaml", [
        "{name: 'fault_methods:Logged', params: {sleep: 3.0}}",
        "{name: 'fault_methods:Logged', label: second}",
    ], seeds=[0, 1])
    log, store = cluster.fit_log, tmp_path / "r.sqlite"
    log.write_text("")
    args = ("--config", str(config), "--quick", "--seeds", "0,1", "--store", "r.sqlite",
            "--scheduler", cluster.address)
    proc = start_run(tmp_path, *args)
    # the first fit of the 3-second runs: kill the worker process training it, mid-run
    first = wait_for(lambda: next((f for f in fits(log) if f[1] == "logged-3.0-False"), None),
                     "a slow run to start", proc)
    pid, _, seed = first
    os.kill(int(pid), signal.SIGKILL)
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert "4 run(s) done, 0 already stored" in out
    stored = rows(store, "SELECT label, seed, status, error FROM runs")
    assert len(stored) == 4 and {r[2] for r in stored} == {"complete"}, stored
    assert {r[3] for r in stored} == {None}
    trained = Counter((label, s) for _, label, s in fits(log))
    assert trained[("logged-3.0-False", seed)] == 2, trained  # trained again elsewhere...
    assert sum(trained.values()) == 5  # ...and nothing else twice
    assert rows(store, "SELECT * FROM claims") == []

    # a rerun resumes: nothing is left to do, nothing trains
    proc = start_run(tmp_path, *args)
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert "0 run(s) done, 4 already stored" in out and len(fits(log)) == 5
    wait_for(lambda: _workers(cluster.address) == 2, "the killed worker's restart")


def test_a_run_that_keeps_killing_workers_is_stored_failed_after_bounded_tries(cluster,
                                                                               tmp_path):
    config = write_config(tmp_path / "c.yaml", [
        "map",
        "{name: 'fault_methods:Logged', label: dies, params: {die: true}}",
    ], seeds=[0])
    log, store = cluster.fit_log, tmp_path / "r.sqlite"
    log.write_text("")
    proc = start_run(tmp_path, "--config", str(config), "--quick", "--store", "r.sqlite",
                     "--scheduler", cluster.address)
    out, err = finish(proc)
    assert proc.returncode == 1, out + err  # a failed run: exit 1
    status = {label: (st, error) for label, st, error in rows(
        store, "SELECT label, status, error FROM runs")}
    assert status["map"] == ("complete", None)
    st, error = status["dies"]
    assert st == "failed" and "died 2 time(s)" in error, error
    assert "allowed-failures = 1" in error
    assert [f[1] for f in fits(log)].count("logged-0.0-True") == 2  # two tries, no more
    assert rows(store, "SELECT * FROM claims") == []
    wait_for(lambda: _workers(cluster.address) == 2, "the workers' restart")


def test_an_unreachable_scheduler_exits_2_naming_the_address(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path / "c.yaml", ["map"], seeds=[0],
                          extra="executor: {connect_timeout: 2}")
    proc = start_run(tmp_path, "--config", str(config), "--quick", "--store", "r.sqlite",
                     "--scheduler", f"tcp://127.0.0.1:{port}")
    out, err = finish(proc)
    assert proc.returncode == 2, out + err
    text = " ".join(err.split())
    assert f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler answered within 2 s" in text
    assert "Traceback" not in err
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM runs") == []


# --------------------------------------------------------------------------- same numbers


def _same_numbers(tmp_path, executors: dict, seeds: list[int]) -> None:
    from bayesbench.config import expand, parse_config
    from bayesbench.runner import run_grid
    from bayesbench.store import ResultStore

    cfg = parse_config({
        "seeds": seeds, "model": {"d_model": 16, "heads": 2, "depth": 1},
        "training": {"epochs": 1}, "datasets": ["digits"], "methods": ["map", "mc_dropout"],
        "quick": {"epochs": 1, "max_train": 64, "max_eval": 32, "mc_samples": 2, "seeds": 2},
    })
    specs = expand(cfg, quick=True)
    found = {}
    for name, executor in executors.items():
        outcome = run_grid(specs, ResultStore(tmp_path / f"{name}.sqlite"),
                           device=torch.device("cpu"), executor=executor)
        assert len(outcome.results) == len(specs) and not outcome.failed, [
            r.error for r in outcome.results]
        found[name] = {r.key: [(m.split, m.metric, m.value) for m in r.metrics
                               if m.split != "cost"] for r in outcome.results}
    first = next(iter(found.values()))
    for name, values in found.items():
        assert values == first, name


def test_serial_and_dask_give_the_same_numbers(cluster, tmp_path):
    from bayesbench.config import ExecutorConfig

    _same_numbers(tmp_path, {"serial": ExecutorConfig(),
                             "dask": ExecutorConfig(kind="dask", scheduler=cluster.address)},
                  seeds=[0])


@pytest.mark.slow
def test_serial_local_processes_and_both_dask_clusters_give_the_same_numbers(cluster,
                                                                            tmp_path):
    from bayesbench.config import ExecutorConfig

    _same_numbers(tmp_path, {
        "serial": ExecutorConfig(), "pool": ExecutorConfig(workers=2),
        "dask": ExecutorConfig(kind="dask", scheduler=cluster.address),
        "local dask": ExecutorConfig(kind="dask", workers=2)}, seeds=[0, 1])


# --------------------------------------------------------------------------- slow ones


def _descendants(pid: int) -> set[int]:
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


@pytest.mark.slow
def test_a_local_dask_cluster_stops_on_ctrl_c_and_keeps_what_finished(tmp_path):
    config = write_config(tmp_path / "c.yaml", [
        "map", "{name: 'fault_methods:Blocking', params: {seconds: 120}}"], seeds=[0, 1])
    log, store = tmp_path / "fits.log", tmp_path / "r.sqlite"
    proc = start_run(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                     "--executor", "dask", "--workers", "2", "--store", "r.sqlite", log=log)
    wait_for(lambda: len(rows(store, "SELECT key FROM runs WHERE status = 'complete'")) >= 2
             and sum("blocking" in f[1] for f in fits(log)) >= 2, "map runs and blocked ones",
             proc)
    workers = _descendants(proc.pid)
    assert workers, "the local cluster's worker processes"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the workers too: they ignore it
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    text = " ".join(err.split())
    assert "2 run(s) finished and were stored" in text and "2 run(s) in flight" in text, text
    assert sorted(rows(store, "SELECT label, status FROM runs")) == [("map", "complete")] * 2
    assert rows(store, "SELECT * FROM claims") == []
    wait_for(lambda: not any(alive(p) for p in workers), f"workers {sorted(workers)} to exit")


@pytest.mark.slow
def test_losing_the_scheduler_mid_grid_exits_2_and_a_rerun_resumes(tmp_path):
    log = tmp_path / "fits.log"
    config = write_config(tmp_path / "c.yaml", [
        "{name: 'fault_methods:Logged', params: {sleep: 2.0}}"], seeds=[0, 1, 2],
        extra="executor: {connect_timeout: 3}")
    store = tmp_path / "r.sqlite"
    with real_cluster(tmp_path, 1, BAYESBENCH_FIT_LOG=str(log)) as (address, scheduler):
        args = ("--config", str(config), "--quick", "--seeds", "0,1,2", "--store", "r.sqlite")
        proc = start_run(tmp_path, *args, "--scheduler", address)
        wait_for(lambda: rows(store, "SELECT key FROM runs") and len(fits(log)) >= 2,
                 "one run stored and the next one training", proc)
        os.killpg(scheduler.pid, signal.SIGKILL)
        out, err = finish(proc)
    assert proc.returncode == 2, out + err
    text = " ".join(err.split())
    assert f"lost the Dask scheduler at {address}" in text and "rerun" in text, text
    assert "Traceback" not in err
    stored = rows(store, "SELECT status FROM runs")
    assert stored and set(stored) == {("complete",)}  # what finished, nothing failed
    assert rows(store, "SELECT * FROM claims") == []
    proc = start_run(tmp_path, *args)  # the rest, here
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert f"{3 - len(stored)} run(s) done, {len(stored)} already stored" in out


FAKE_SBATCH = """#!/usr/bin/env bash
# stands in for Slurm's sbatch: runs the job script here, in a session of its own
cp "$1" "$FAKE_SLURM/job-$$.sh"
setsid bash "$FAKE_SLURM/job-$$.sh" > "$FAKE_SLURM/job-$$.log" 2>&1 < /dev/null &
echo $! >> "$FAKE_SLURM/jobs"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null; echo "$job" >> "$FAKE_SLURM/cancelled"; done
exit 0
"""


@pytest.mark.slow
def test_slurm_jobs_through_dask_jobqueue_run_the_grid(tmp_path):
    pytest.importorskip("dask_jobqueue")
    bin_dir, slurm_dir = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    slurm_dir.mkdir()
    for name, text in [("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    config = write_config(tmp_path / "c.yaml", ["map", "mc_dropout"], seeds=[0, 1], extra=(
        textwrap.dedent("""
        executor:
          kind: slurm
          slurm: {queue: cpu, account: lab, cores: 1, memory: 2GB, walltime: 00:20:00,
                  jobs: 2, interface: lo}
        """)))
    store = tmp_path / "r.sqlite"
    proc = start_run(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                     "--store", "r.sqlite", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                     FAKE_SLURM=str(slurm_dir))
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert "4 run(s) done" in out
    assert sorted(rows(store, "SELECT status FROM runs")) == [("complete",)] * 4
    jobs = [int(j) for j in (slurm_dir / "jobs").read_text().split()]
    assert len(jobs) == 2
    script = next(slurm_dir.glob("job-*.sh")).read_text()
    assert "#SBATCH -p cpu" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 00:20:00" in script and "--nthreads 1" in script
    # the driver cancelled its jobs at the end, and they are gone
    wait_for(lambda: (slurm_dir / "cancelled").exists()
             and len((slurm_dir / "cancelled").read_text().split()) == 2, "scancel of both")
    wait_for(lambda: not any(alive(j) for j in jobs), "the jobs to end")


def test_a_cuda_run_never_goes_to_a_worker_without_gpus(cluster):
    """The module's workers declare no GPU: the scheduler keeps a CUDA run unscheduled
    ("no-worker") instead of giving it to them."""
    from bayesbench.config import expand, parse_config
    from bayesbench.execution.dask_cluster import DaskExecutor, connect

    spec = expand(parse_config({"datasets": ["digits"], "methods": ["map"]}), quick=True,
                  device="cuda")[0]
    executor = DaskExecutor(connect(cluster.address, 30), device="cuda", threads=1,
                            versions={}, commit=None, on_event=lambda e: None)
    try:
        assert executor.slots == 1  # nothing to count: one run handed over, to wait
        executor.submit(spec)
        future, _ = executor._futures[spec.key]

        def state(dask_scheduler, key=future.key):
            task = dask_scheduler.tasks.get(key)
            return task.state if task is not None else None

        wait_for(lambda: executor.client.run_on_scheduler(state) == "no-worker",
                 "the scheduler to hold the run back")
        assert executor.poll(timeout=0.0) == []
    finally:
        executor.kill()


# --------------------------------------------------------------------------- same code everywhere


def test_workers_with_other_bayesbench_code_are_refused(cluster, tmp_path):
    """A worker whose bayesbench source differs from the driver's would store numbers of other
    code under the driver's keys: connecting says so (exit 2), and a run handed to such a
    worker is stored failed with the reason, never complete."""
    from bayesbench.config import expand, parse_config
    from bayesbench.execution.base import ExecutorError
    from bayesbench.execution.dask_cluster import DaskExecutor, code_mismatch, connect
    from bayesbench.run_plan import package_source_digest
    from bayesbench.runner import run_grid
    from bayesbench.store import ResultStore

    assert code_mismatch(package_source_digest(), "here") is None
    assert "install the driver's bayesbench" in code_mismatch("0" * 64, "the worker w0")

    def executor() -> DaskExecutor:
        return DaskExecutor(connect(cluster.address, 30), device="cpu", threads=1, versions={},
                            commit=None, on_event=lambda e: None)

    same = executor()
    same._check_workers_code()  # the module's workers run this checkout: accepted
    same.close()
    other = executor()
    other._code = "0" * 64  # as if the driver ran other code than the workers
    with pytest.raises(ExecutorError, match="2 of 2 worker.* run other bayesbench code"):
        other._check_workers_code()

    other = executor()
    other._code = "0" * 64
    spec = expand(parse_config({"datasets": ["digits"], "methods": ["map"]}), quick=True)[0]
    store = ResultStore(tmp_path / "s.sqlite")
    outcome = run_grid([spec], store, device=torch.device("cpu"), executor=other)
    (result,) = outcome.results
    assert result.status == "failed" and "runs other bayesbench code" in result.error
    assert store.completed_keys() == set()
