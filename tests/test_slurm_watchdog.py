"""The watchdog of Slurm worker jobs that die at start (issue #13).

The decision on a fake job table (a pending job never counts, a failed squeue decides nothing,
one odd listing decides nothing), the messages, the ``executor.slurm.squeue_interval`` key,
and ``bayesbench run --executor slurm`` with stand-in ``sbatch`` / ``squeue`` / ``scancel``
scripts on PATH that run dask-jobqueue's real job script on this machine: jobs whose
prologue fails make the run exit 2 with the jobs, their logs and the fixes, keeping what was
stored; one failed job of two is warned about and the grid completes on the other.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bayesbench.config import parse_config
from bayesbench.errors import ConfigError
from bayesbench.execution.base import ExecutorError
from bayesbench.execution.slurm import (
    SlurmJobWatch,
    accounting,
    job_ended,
    job_log_files,
    job_of_worker,
    jobs_gone,
    log_tail,
    queue_listing,
)

TINY = {"datasets": ["digits"], "methods": ["map"]}

# --------------------------------------------------------------------------- stand-in Slurm

FAKE_SBATCH = """#!/usr/bin/env bash
# stands in for Slurm's sbatch: job id = this process's id; the script runs here in a session
# of its own, its output where '#SBATCH -o/-e' say (%J: the job id), else slurm-<id>.out here.
# With FAKE_SLURM_PENDING set the job stays pending for ever.
id=$$
if [ -n "$FAKE_SLURM_PENDING" ]; then
  echo "$id 0 PENDING" >> "$FAKE_SLURM/jobs"; echo "Submitted batch job $id"; exit 0
fi
out=$(sed -n 's/^#SBATCH -o //p' "$1"); err=$(sed -n 's/^#SBATCH -e //p' "$1")
out=${out:-slurm-%J.out}; err=${err:-$out}; out=${out//%J/$id}; err=${err//%J/$id}
cp "$1" "$FAKE_SLURM/job-$id.sh"
if [ "$out" = "$err" ]; then
  setsid bash "$FAKE_SLURM/job-$id.sh" > "$out" 2>&1 < /dev/null &
else
  setsid bash "$FAKE_SLURM/job-$id.sh" > "$out" 2> "$err" < /dev/null &
fi
echo "$id $! RUNNING" >> "$FAKE_SLURM/jobs"
echo "Submitted batch job $id"
"""
FAKE_SQUEUE = """#!/usr/bin/env bash
# stands in for squeue: '<id> <state>' of every job not cancelled that is pending or whose
# script still runs (not a zombie); with $FAKE_SLURM/squeue-down, the controller is away
echo "$*" >> "$FAKE_SLURM/squeue-calls"
if [ -e "$FAKE_SLURM/squeue-down" ]; then
  echo "squeue: error: Unable to contact slurm controller" >&2; exit 1
fi
[ -e "$FAKE_SLURM/jobs" ] || exit 0
while read -r id pid state; do
  grep -qx "$id" "$FAKE_SLURM/cancelled" 2>/dev/null && continue
  if [ "$state" = PENDING ]; then echo "$id PENDING"
  elif [ -r "/proc/$pid/stat" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ]
  then echo "$id RUNNING"; fi
done < "$FAKE_SLURM/jobs"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do
  pid=$(awk -v id="$job" '$1 == id {print $2}' "$FAKE_SLURM/jobs")
  [ -n "$pid" ] && [ "$pid" != 0 ] && kill -TERM -- "-$pid" 2>/dev/null
  echo "$job" >> "$FAKE_SLURM/cancelled"
done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """A folder of stand-in Slurm commands (``bin``) and their job table (``dir``); every job
    process still alive at the end is killed with its group."""
    bin_dir, slurm_dir = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    slurm_dir.mkdir()
    for name, text in [("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE),
                       ("scancel", FAKE_SCANCEL)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    fake = SimpleNamespace(bin=bin_dir, dir=slurm_dir,
                           path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    fake.jobs = lambda: [line.split() for line in (slurm_dir / "jobs").read_text().splitlines()
                         ] if (slurm_dir / "jobs").exists() else []
    yield fake
    for _, pid, _ in fake.jobs():
        if pid != "0":
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --------------------------------------------------------------------------- the decision


def test_pending_and_running_jobs_are_never_gone():
    listed = {"1": "PENDING", "2": "RUNNING", "3": "CONFIGURING", "4": "COMPLETING",
              "5": "FAILED", "6": "CANCELLED by 1000", "7": "NODE_FAIL", "8": "OUT_OF_MEMORY"}
    assert jobs_gone([str(i) for i in range(1, 10)], listed) == ["4", "5", "6", "7", "8", "9"]
    assert not job_ended("PENDING") and not job_ended("SUSPENDED") and job_ended("TIMEOUT")


def test_workers_belong_to_their_job():
    jobs = ["SLURMCluster-1", "SLURMCluster-10"]
    assert job_of_worker("SLURMCluster-1", jobs) == "SLURMCluster-1"  # one process per job
    assert job_of_worker("SLURMCluster-1-3", jobs) == "SLURMCluster-1"  # <job>-<i> of N
    assert job_of_worker("SLURMCluster-10-0", jobs) == "SLURMCluster-10"
    assert job_of_worker("SLURMCluster-2", jobs) is None
    assert job_of_worker("SLURMCluster-1-x", jobs) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp_path: Path, jobs: dict[str, str | None], **kwargs):
    """A watch of a fake cluster of ``jobs`` (name -> job id), its queue listing settable as
    ``watch.listed``; returns the watch, its clock and the warnings it gave."""
    cluster = SimpleNamespace(workers={n: SimpleNamespace(job_id=j) for n, j in jobs.items()})
    clock, warnings, calls = _Clock(), [], []

    def listing():
        calls.append(clock.now)
        return watch.listed

    watch = SlurmJobWatch(cluster, jobs=len(jobs), interval=30.0, submit_dir=tmp_path,
                          listing=listing, warn=warnings.append, clock=clock, **kwargs)
    watch.listed, watch.calls = {}, calls
    return watch, clock, warnings


def _checks(watch, clock, times: int, workers_now=()) -> None:
    for _ in range(times):
        clock.now += watch.interval
        watch.check(workers_now)


def test_a_pending_job_never_trips_the_watch_and_squeue_runs_only_when_due(tmp_path):
    watch, clock, warnings = _watch(tmp_path, {"SLURMCluster-0": "101"})
    watch.listed = {"101": "PENDING", "55": "RUNNING"}
    for _ in range(10):
        watch.check([])  # not due yet: squeue is not asked
    assert watch.calls == []
    _checks(watch, clock, 200)  # 100 minutes in the queue
    assert len(watch.calls) == 200 and warnings == [] and watch.failed == {}


def test_a_failed_squeue_or_one_odd_listing_decides_nothing(tmp_path):
    watch, clock, warnings = _watch(tmp_path, {"SLURMCluster-0": "101"})
    watch.listed = None  # squeue failed: unknown
    _checks(watch, clock, 5)
    watch.listed = {}  # one listing without the job ...
    _checks(watch, clock, 1)
    watch.listed = {"101": "RUNNING"}  # ... then it is there again
    _checks(watch, clock, 1)
    watch.listed = {}
    _checks(watch, clock, 1)
    watch.listed = None
    _checks(watch, clock, 1)  # (no answer breaks no run of listings)
    assert warnings == []
    watch.listed = {}
    with pytest.raises(ExecutorError, match="1 of 1 Slurm job.* ended before any of their"):
        _checks(watch, clock, 1)


def test_every_job_failed_at_start_stops_with_jobs_logs_and_fixes(tmp_path):
    watch, clock, warnings = _watch(
        tmp_path, {"SLURMCluster-0": "101", "SLURMCluster-1": "102"}, python="/opt/bb/python",
        accounting=lambda ids: {"101": "FAILED, exit code 1:0"})
    (tmp_path / "slurm-102.out").write_text("".join(f"line {i}\n" for i in range(40))
                                            + "module: cuda/99.9: no such module\n")
    watch.listed = {"7": "RUNNING"}  # another job of the user's
    _checks(watch, clock, 1)  # gone from one listing: not yet
    with pytest.raises(ExecutorError) as err:
        _checks(watch, clock, 1)
    text = str(err.value)
    assert text.startswith("--executor slurm: 2 of 2 Slurm job(s) ended before any of their "
                           "Dask workers connected: 101 (FAILED, exit code 1:0), 102.")
    assert f"slurm-<job id>.out in {tmp_path}" in text
    assert f"The end of {tmp_path / 'slurm-102.out'}:" in text  # 101's output is not here
    assert "module: cuda/99.9: no such module" in text and "line 35" in text
    assert "line 34" not in text  # the last 6 lines
    for fix in ("executor.slurm.prologue", "executor.slurm.python (/opt/bb/python",
                "executor.slurm.queue / account", "rerun the same command"):
        assert fix in text
    assert "more characters" not in text  # whole, under the message limit
    assert warnings == []  # one message, not a warning per job


def test_one_job_failed_at_start_is_warned_about_once_and_the_grid_goes_on(tmp_path):
    watch, clock, warnings = _watch(tmp_path, {"SLURMCluster-0": "101", "SLURMCluster-1": "102"},
                                    log_directory="logs")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "bayesbench-101.err").write_text("/no/such/python: No such file or directory\n")
    watch.saw_workers(["SLURMCluster-1"])
    watch.listed = {"102": "RUNNING"}
    _checks(watch, clock, 10, workers_now=["SLURMCluster-1"])
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"Slurm job 101 ended before any of its Dask workers connected; its output: "
        f"{logs / 'bayesbench-101.err'}. The grid goes on with the other 1 job(s)")
    assert "executor.slurm.prologue" in warnings[0]
    watch.listed = {}  # the good job ends too (its walltime): nothing is left
    _checks(watch, clock, 1)
    with pytest.raises(ExecutorError) as err:
        _checks(watch, clock, 1)
    text = str(err.value)
    assert "1 of 2 Slurm job(s) ended before any of their Dask workers connected: 101; the " \
           "other 1 ended after running" in text
    assert "logs/bayesbench-<job id>.err and .out" in text
    assert f"The end of {logs / 'bayesbench-101.err'}:\n    /no/such/python: No such" in text
    assert len(warnings) == 1


def test_jobs_that_ran_and_ended_are_not_failed_at_start(tmp_path):
    watch, clock, warnings = _watch(tmp_path, {"SLURMCluster-0": "101"})
    watch.saw_workers(["SLURMCluster-0-0", "SLURMCluster-0-1"])
    watch.listed = {"101": "COMPLETING"}
    _checks(watch, clock, 1)
    with pytest.raises(ExecutorError, match=r"all 1 Slurm job\(s\) \(101\) have ended \(their "
                                            r"walltime.*rerun the same command"):
        _checks(watch, clock, 1)
    assert warnings == [] and watch.failed == {}


def test_a_job_sbatch_refused_counts_at_once_and_a_live_worker_keeps_the_grid(tmp_path):
    watch, clock, warnings = _watch(tmp_path, {"SLURMCluster-0": None, "SLURMCluster-1": "102"})
    watch.listed = {}
    _checks(watch, clock, 1, workers_now=["SLURMCluster-1"])
    assert warnings == ["Slurm job SLURMCluster-0 (refused by sbatch: its error is printed "
                        "above) ended before any of its Dask workers connected. The grid goes "
                        "on with the other 1 job(s); to fix the failed one check "
                        + watch._fixes()]
    # 102 is no longer listed, but a worker is connected: never stop under a live worker
    _checks(watch, clock, 5, workers_now=["SLURMCluster-1"])
    assert len(warnings) == 1
    with pytest.raises(ExecutorError, match="SLURMCluster-0 \\(refused by sbatch"):
        _checks(watch, clock, 1)


# --------------------------------------------------------------------------- Slurm's commands


def _command(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text("#!/bin/bash\n" + text)  # PATH holds only these
    (folder / name).chmod(0o755)


def test_squeue_and_sacct_are_read_and_their_failures_are_no_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert queue_listing() is None and accounting(["1"]) == {}  # not installed
    _command(tmp_path, "squeue", f'echo "$*" > {tmp_path}/args\n'
                                 'printf "101 PENDING\\n 102 RUNNING\\n\\n"\n')
    assert queue_listing() == {"101": "PENDING", "102": "RUNNING"}
    assert (tmp_path / "args").read_text().split() == [
        "--noheader", "--format=%i", "%T", f"--user={os.getuid()}"]
    _command(tmp_path, "squeue", 'echo "101 PENDING"; echo "slurm_load_jobs error" >&2; exit 1\n')
    assert queue_listing() is None
    _command(tmp_path, "sacct", 'printf "101|FAILED|1:0\\n101.batch|FAILED|1:0\\n'
                                '102|CANCELLED by 0|0:15\\n103|COMPLETED|0:0\\n"\n')
    assert accounting(["101", "102"]) == {"101": "FAILED, exit code 1:0",
                                          "102": "CANCELLED by 0, exit code 0:15"}
    _command(tmp_path, "sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1\n")
    assert accounting(["101"]) == {}


def test_job_log_files_follow_log_directory_or_slurms_default(tmp_path):
    assert job_log_files("7", None, tmp_path) == [tmp_path / "slurm-7.out"]
    logs = tmp_path / "logs"
    assert job_log_files("7", "logs", tmp_path) == [logs / "bayesbench-7.err",
                                                    logs / "bayesbench-7.out"]
    logs.mkdir()
    (logs / "bayesbench-7.out").write_text("started\n\nfailed\n")
    (logs / "bayesbench-77.out").write_text("another job\n")
    assert job_log_files("7", str(logs), Path("/elsewhere")) == [logs / "bayesbench-7.out"]
    assert log_tail([logs / "bayesbench-7.err", logs / "bayesbench-7.out"]) == (
        logs / "bayesbench-7.out", "    started\n    failed")
    assert log_tail([logs / "missing.out"]) is None


def test_squeue_interval_is_a_checked_setting():
    cfg = parse_config({**TINY, "executor": {"kind": "slurm",
                                             "slurm": {"squeue_interval": 0.5}}})
    assert cfg.executor.slurm.squeue_interval == 0.5
    assert parse_config(TINY).executor.slurm.squeue_interval == 30.0
    watch = SlurmJobWatch.for_cluster(SimpleNamespace(workers={}), cfg.executor)
    assert watch.interval == 0.5 and watch.expected == 1
    for bad in (0, -1, 100_000):
        with pytest.raises(ConfigError) as err:
            parse_config({**TINY, "executor": {"slurm": {"squeue_interval": bad}}}, "b.yaml")
        assert "b.yaml: executor.slurm.squeue_interval: must be a number in (0, 86400]" \
               in str(err.value)


# --------------------------------------------------------------------------- real clusters


def _wait(condition, what: str, limit: float = 60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def test_pending_jobs_of_a_real_slurm_cluster_never_trip_the_watch(fake_slurm, monkeypatch):
    """dask-jobqueue's own job table (``cluster.workers`` and their ``job_id``) read through
    the stand-in squeue: jobs that stay pending are never counted; cancelled ones are."""
    pytest.importorskip("dask_jobqueue")
    from bayesbench.execution.slurm import start_slurm_cluster

    monkeypatch.setenv("PATH", fake_slurm.path)
    monkeypatch.setenv("FAKE_SLURM", str(fake_slurm.dir))
    monkeypatch.setenv("FAKE_SLURM_PENDING", "1")
    cfg = parse_config({**TINY, "executor": {"kind": "slurm", "slurm": {
        "jobs": 2, "interface": "lo"}}}).executor
    cluster, slots = start_slurm_cluster(cfg, device="cpu")
    warnings: list[str] = []
    try:
        # interval 0: every check lists the queue, as if squeue_interval seconds had passed
        watch = SlurmJobWatch(cluster, jobs=2, interval=0.0, warn=warnings.append)
        _wait(lambda: len(cluster.workers) == 2
              and all(job.job_id for job in cluster.workers.values()), "both jobs submitted")
        for _ in range(30):  # as if for 15 minutes at squeue_interval: 30
            watch.check([])
        ids = sorted(watch.jobs.values())
        assert ids == sorted(job[0] for job in fake_slurm.jobs())
        assert warnings == [] and watch.failed == {}
        assert len((fake_slurm.dir / "squeue-calls").read_text().splitlines()) == 30
        (fake_slurm.dir / "cancelled").write_text(f"{ids[0]}\n")  # one leaves the queue
        for _ in range(3):
            watch.check([])
        assert len(warnings) == 1 and f"Slurm job {ids[0]} ended before" in warnings[0]
        (fake_slurm.dir / "cancelled").write_text(f"{ids[0]}\n{ids[1]}\n")
        (fake_slurm.dir / "squeue-down").touch()  # the controller away: no answer
        for _ in range(5):
            watch.check([])
        (fake_slurm.dir / "squeue-down").unlink()
        with pytest.raises(ExecutorError, match="2 of 2 Slurm job") as err:
            for _ in range(3):
                watch.check([])
        assert ids[0] in str(err.value) and ids[1] in str(err.value)
    finally:
        cluster.close()


def test_other_executors_never_ask_squeue(fake_slurm, monkeypatch):
    """A Dask executor on an existing scheduler (here one without workers, so the run
    waits) polls without any squeue call."""
    distributed = pytest.importorskip("distributed")
    from bayesbench.config import expand
    from bayesbench.execution.dask_cluster import DaskExecutor

    monkeypatch.setenv("PATH", fake_slurm.path)
    monkeypatch.setenv("FAKE_SLURM", str(fake_slurm.dir))
    config = parse_config(TINY)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc:
        cfg = parse_config({**TINY, "executor": {"kind": "dask", "scheduler": lc.scheduler_address,
                                                 "slurm": {"squeue_interval": 0.01}}}).executor
        executor = DaskExecutor.open(cfg, device="cpu", threads=1, versions={}, commit=None,
                                     on_event=lambda e: None)
        try:
            assert executor.job_watch is None
            executor.submit(expand(config, quick=True)[0])
            assert executor.poll(timeout=1.0) == []
        finally:
            executor.kill()
    assert not (fake_slurm.dir / "squeue-calls").exists()


# --------------------------------------------------------------------------- bayesbench run


def _slurm_config(tmp_path: Path, prologue: list[str], methods: list[str]) -> Path:
    from test_dask_cluster import write_config

    lines = "\n".join(f"      - {line!r}" for line in prologue)
    return write_config(tmp_path / "c.yaml", methods, seeds=[0, 1], extra=textwrap.dedent("""
        executor:
          kind: slurm
          slurm:
            cores: 1
            memory: 2GB
            walltime: 00:20:00
            jobs: 2
            interface: lo
            log_directory: logs
            squeue_interval: 0.5
            prologue:
        """) + lines + "\n")


def _all_jobs_end(fake_slurm) -> None:
    from test_dask_cluster import alive, wait_for

    pids = [int(pid) for _, pid, _ in fake_slurm.jobs()]
    assert len(pids) == 2
    wait_for(lambda: not any(alive(p) for p in pids), "the jobs to end")


def test_jobs_that_fail_at_start_stop_the_run_with_exit_2_keeping_the_store(tmp_path,
                                                                             fake_slurm):
    pytest.importorskip("dask_jobqueue")
    from test_dask_cluster import finish, rows, start_run

    config = _slurm_config(tmp_path, ["echo 'module: cuda/99.9: no such module' >&2", "exit 1"],
                           ["map"])
    args = ("--config", str(config), "--quick", "--store", "r.sqlite")
    proc = start_run(tmp_path, *args, "--seeds", "0", "--executor", "local")  # stored before
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    before = rows(tmp_path / "r.sqlite", "SELECT key, status, finished_at FROM runs")
    assert [r[1] for r in before] == ["complete"]

    proc = start_run(tmp_path, *args, "--seeds", "0,1", PATH=fake_slurm.path,
                     FAKE_SLURM=str(fake_slurm.dir))
    out, err = finish(proc)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err
    text = " ".join(err.split())
    ids = sorted(job for job, _, _ in fake_slurm.jobs())
    assert "error: --executor slurm: 2 of 2 Slurm job(s) ended before any of their Dask " \
           "workers connected:" in text
    assert all(job in text for job in ids), (ids, text)
    assert "logs/bayesbench-<job id>.err and .out" in text
    assert "module: cuda/99.9: no such module" in text  # the end of one job's log
    assert "executor.slurm.prologue" in text and "executor.slurm.python" in text
    # what was stored stays, nothing else was written, the claims are gone
    assert rows(tmp_path / "r.sqlite", "SELECT key, status, finished_at FROM runs") == before
    assert rows(tmp_path / "r.sqlite", "SELECT * FROM claims") == []
    assert (fake_slurm.dir / "squeue-calls").exists()
    _all_jobs_end(fake_slurm)


@pytest.mark.slow
def test_one_job_failing_at_start_is_warned_about_and_the_other_runs_the_grid(tmp_path,
                                                                             fake_slurm):
    pytest.importorskip("dask_jobqueue")
    from test_dask_cluster import finish, rows, start_run

    # the first job to start fails (mkdir is atomic), the other one runs
    config = _slurm_config(
        tmp_path, ['mkdir "$FAKE_SLURM/first" 2>/dev/null && { echo "no GPU here" >&2; exit 1; }'],
        ["{name: 'fault_methods:Logged', params: {sleep: 2.0}}"])
    proc = start_run(tmp_path, "--config", str(config), "--quick", "--seeds", "0,1",
                     "--store", "r.sqlite", PATH=fake_slurm.path, FAKE_SLURM=str(fake_slurm.dir))
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert "2 run(s) done" in out
    assert sorted(rows(tmp_path / "r.sqlite", "SELECT status FROM runs")) == [("complete",)] * 2
    failed = [job for job, _, _ in fake_slurm.jobs()
              if "no GPU here" in (tmp_path / "logs" / f"bayesbench-{job}.err").read_text()]
    assert len(failed) == 1
    text = " ".join(err.split())
    assert text.count("ended before any of its Dask workers connected") == 1, text
    assert f"Slurm job {failed[0]} ended before any of its Dask workers connected; its " \
           f"output: {tmp_path / 'logs' / f'bayesbench-{failed[0]}.err'}" in text
    assert "The grid goes on with the other 1 job(s)" in text
    _all_jobs_end(fake_slurm)


def test_a_fault_of_the_watch_never_ends_the_grid_but_its_verdict_does(caplog):
    pytest.importorskip("distributed")
    from bayesbench.execution.dask_cluster import DaskExecutor

    class Client:
        status, scheduler = "running", SimpleNamespace(address="tcp://127.0.0.1:1")

        def subscribe_topic(self, *args):
            pass

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"tcp://w": {"name": "SLURMCluster-0"}}}

    class Watch:
        due, seen = True, []

        def __init__(self, error):
            self.error = error

        def check(self, workers_now):
            self.seen.append(workers_now)
            raise self.error

    executor = DaskExecutor(Client(), device="cpu", threads=1, versions={}, commit=None,
                            on_event=lambda e: None, job_watch=Watch(KeyError("oops")))
    executor._watch_jobs()  # a bug in the watch: warned, the watch is off, the grid goes on
    assert executor.job_watch is None and "the watch of the Slurm jobs failed" in caplog.text
    executor.job_watch = Watch(ExecutorError("all jobs failed at start"))
    with pytest.raises(ExecutorError, match="all jobs failed at start"):
        executor._watch_jobs()
    assert Watch.seen == [["SLURMCluster-0"], ["SLURMCluster-0"]]
