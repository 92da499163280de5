"""Dask workers as Slurm jobs (dask-jobqueue's ``SLURMCluster``), from ``executor.slurm``.

The driver (``bayesbench run --executor slurm``, on a login node or in a small job of its
own) runs the Dask scheduler and writes the store; it submits ``jobs`` Slurm jobs, each
starting ``processes`` Dask worker processes of one thread (one run at a time each), and
cancels them when the grid ends. Slurm is asked for ``cores`` CPUs per job
(``--cpus-per-task``), ``memory``, ``walltime`` and ``--gres=gpu:<gpus>``; with GPUs each
worker process declares its share of them as the Dask resource ``GPU`` (``processes`` defaults
to ``gpus × runs_per_gpu``), so no GPU gets more than ``runs_per_gpu`` runs.

A job that reaches its walltime takes its workers with it: Dask reschedules their runs on the
other jobs' workers, and a run cut ``max_tries`` times is stored failed. Submit enough jobs, or
a walltime well above the longest run.

Jobs that die at start (a failing ``prologue`` line, a ``python`` that is missing or lacks
bayesbench, a partition or account Slurm refuses only at start) never connect a worker, and
neither dask-jobqueue nor Dask notices: the job stays in ``cluster.workers`` with its
``job_id``, and nothing resubmits it. :class:`SlurmJobWatch` asks ``squeue`` every
``squeue_interval`` seconds which jobs are still queued or running: a job that left the queue
before any of its workers connected has *failed at start*. Each is reported once and not
resubmitted (it would fail the same way, after waiting in the queue again); when no job is left
and no worker is connected, the grid stops (exit 2) naming the jobs, their output files and
the likely fixes. Pending jobs never count, however long they wait.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from bayesbench.errors import ConfigError
from bayesbench.execution.base import ExecutorError, gpu_share

JOB_NAME = "bayesbench"

SQUEUE_INTERVAL_S = 30.0
"""Seconds between two ``squeue`` listings (the default of ``executor.slurm.squeue_interval``):
a job that died at start is noticed within about two of them, and the controller is asked
rarely."""

SLURM_COMMAND_TIMEOUT_S = 30.0
"""How long one ``squeue`` / ``sacct`` call may take before its answer counts as unknown."""

ENDED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})
"""Job states (``squeue %T``, sacct's State) of a job whose script is no longer running."""


def worker_processes(config: Any, *, threads: int = 1) -> int:
    """Dask worker processes (concurrent runs) per job: ``slurm.processes``, or
    ``gpus × runs_per_gpu`` with GPUs, or one per ``threads`` cores."""
    slurm = config.slurm
    if slurm.processes:
        return slurm.processes
    if slurm.gpus:
        return slurm.gpus * config.runs_per_gpu
    return max(1, slurm.cores // max(1, threads))


def slurm_job_kwargs(config: Any, *, device: str, threads: int = 1) -> dict[str, Any]:
    """The arguments of dask-jobqueue's ``SLURMJob`` / ``SLURMCluster`` for ``config`` (an
    ExecutorConfig), for runs on ``device`` with ``threads`` torch threads each."""
    slurm = config.slurm
    processes = worker_processes(config, threads=threads)
    where = "executor.slurm"
    if device == "cuda" and not slurm.gpus:
        raise ConfigError(f"--device cuda with --executor slurm: set {where}.gpus (GPUs per "
                          "job) in the config, e.g. gpus: 1")
    if processes * threads > slurm.cores:
        raise ConfigError(
            f"{where}: {processes} worker process(es) × {threads} torch thread(s) need "
            f"{processes * threads} cores, more than cores: {slurm.cores}; raise cores or "
            "lower processes")
    extra_args: list[str] = []
    directives = list(slurm.job_extra)
    if slurm.gpus:
        directives.append(f"--gres=gpu:{slurm.gpus}")
        share = slurm.gpus / processes
        if share + 1e-12 < gpu_share(config.runs_per_gpu):
            raise ConfigError(
                f"{where}: {processes} worker processes on {slurm.gpus} GPU(s) is more than "
                f"runs_per_gpu: {config.runs_per_gpu} per GPU; lower processes or raise "
                "executor.runs_per_gpu")
        extra_args += ["--resources", f"GPU={share:.12g}"]
    return dict(
        job_name=JOB_NAME,
        queue=slurm.queue,
        account=slurm.account,
        walltime=slurm.walltime,
        # Dask threads = cores / processes = 1: one run per worker process; Slurm gets
        # the real core count through --cpus-per-task (the runs' torch threads use them)
        cores=processes,
        processes=processes,
        job_cpu=slurm.cores,
        memory=slurm.memory,
        job_extra_directives=directives,
        job_script_prologue=list(slurm.prologue),
        worker_extra_args=extra_args,
        python=slurm.python or sys.executable,
        interface=slurm.interface,
        log_directory=slurm.log_directory,
        local_directory=slurm.local_directory,
    )


def slurm_job_script(config: Any, *, device: str, threads: int = 1,
                     scheduler: str = "tcp://scheduler:8786") -> str:
    """The batch script one worker job runs (``sbatch``), as dask-jobqueue writes it."""
    from dask_jobqueue.slurm import SLURMJob

    return SLURMJob(scheduler=scheduler, name="bayesbench-job",
                    **slurm_job_kwargs(config, device=device, threads=threads)).job_script()


def closing_job_class() -> type:
    """dask-jobqueue's ``SLURMJob`` whose ``close`` (``scancel``) marks it closed.

    ``Job.close`` leaves the job's status ``running``; ``SpecCluster.close`` then fails its
    final check on every job object still alive (a job that died at start stays referenced
    until the end), leaves the cluster ``closing``, and Dask's exit hook waits 10 s more on it.
    """
    from dask_jobqueue.slurm import SLURMJob
    from distributed.core import Status

    class ClosingSLURMJob(SLURMJob):
        async def close(self) -> None:
            await super().close()
            self.status = Status.closed

    return ClosingSLURMJob


def start_slurm_cluster(config: Any, *, device: str, threads: int = 1,
                        scheduler_options: dict[str, Any] | None = None) -> tuple[Any, int]:
    """Start the scheduler here and submit ``slurm.jobs`` worker jobs; returns the cluster
    and the number of runs it will take at once (jobs × processes)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ExecutorError("--executor slurm needs dask-jobqueue: pip install "
                            "'bayesbench[dask]'") from None
    kwargs = slurm_job_kwargs(config, device=device, threads=threads)
    if shutil.which("sbatch") is None:
        raise ExecutorError("--executor slurm: no `sbatch` on PATH; run bayesbench on a Slurm "
                            "login node (or in a Slurm job), or use --executor dask")
    options = {"dashboard_address": None, **(scheduler_options or {})}
    try:
        cluster = SLURMCluster(scheduler_options=options, job_cls=closing_job_class(),
                               **kwargs)
    except Exception as exc:
        raise ExecutorError(f"--executor slurm: could not start the Dask scheduler for the "
                            f"Slurm jobs: {exc}") from None
    try:
        cluster.scale(jobs=config.slurm.jobs)
    except Exception as exc:
        cluster.close()
        raise ExecutorError(f"--executor slurm: submitting {config.slurm.jobs} job(s) "
                            f"failed: {exc}") from None
    return cluster, config.slurm.jobs * kwargs["processes"]


# --------------------------------------------------------------------------- jobs that die at start


def job_ended(state: str) -> bool:
    """Whether a job in Slurm state ``state`` (``squeue %T``) no longer runs its script."""
    return state.split()[0].rstrip("+").upper() in ENDED_STATES if state.strip() else True


def job_of_worker(worker_name: str, job_names: Iterable[str]) -> str | None:
    """The job (a dask-jobqueue job name such as ``SLURMCluster-3``) a Dask worker belongs to:
    a job of one process names its worker after itself, one of N processes ``<job>-<i>``."""
    for job in job_names:
        if worker_name == job or (worker_name.startswith(f"{job}-")
                                  and worker_name[len(job) + 1:].isdigit()):
            return job
    return None


def jobs_gone(jobs: Iterable[str], listed: Mapping[str, str]) -> list[str]:
    """The job ids among ``jobs`` that left the Slurm queue: not in ``listed`` (``squeue``'s
    job id → state) or listed in an ended state. A PENDING (or running) job is never gone."""
    return [job for job in jobs if job not in listed or job_ended(listed[job])]


def queue_listing(timeout: float = SLURM_COMMAND_TIMEOUT_S) -> dict[str, str] | None:
    """``squeue``'s job id → state of this user's jobs; None when squeue fails or is missing
    (the answer is unknown: nothing counts as gone). All of the user's jobs rather than
    ``--jobs``: squeue fails outright on a single job id it no longer knows."""
    try:
        proc = subprocess.run(["squeue", "--noheader", "--format=%i %T", f"--user={os.getuid()}"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    listed: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            listed[fields[0]] = fields[1].strip()
    return listed


def accounting(job_ids: Collection[str], timeout: float = SLURM_COMMAND_TIMEOUT_S
               ) -> dict[str, str]:
    """How each job ended according to ``sacct`` ("FAILED, exit code 1:0"); {} where sacct is
    missing, off or fails (accounting is optional on a Slurm cluster)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        proc = subprocess.run(["sacct", "--noheader", "--parsable2",
                               "--format=JobID,State,ExitCode", f"--jobs={','.join(job_ids)}"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return {}
    ended: dict[str, str] = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        fields = line.split("|")
        if len(fields) >= 3 and fields[0] in job_ids:  # the job itself, not its steps
            ended[fields[0]] = f"{fields[1]}, exit code {fields[2]}"
    return ended


def log_folder(log_directory: str, submit_dir: Path) -> Path:
    """The folder of ``executor.slurm.log_directory`` (relative to the submit directory)."""
    return submit_dir / Path(log_directory).expanduser()


def job_log_files(job_id: str, log_directory: str | None, submit_dir: Path) -> list[Path]:
    """Where Slurm writes a worker job's output: ``<log_directory>/bayesbench-<id>.err`` and
    ``.out`` (dask-jobqueue's ``-e`` / ``-o``), else Slurm's ``slurm-<id>.out`` in the
    directory the job was submitted from. Existing files first; the expected names when
    none exists (yet)."""
    if not log_directory:
        return [submit_dir / f"slurm-{job_id}.out"]
    folder = log_folder(log_directory, submit_dir)
    found = [path for suffix in ("err", "out")
             for pattern in (f"{JOB_NAME}-{job_id}.{suffix}", f"{JOB_NAME}-{job_id}.*.{suffix}")
             for path in sorted(folder.glob(pattern))]
    return found or [folder / f"{JOB_NAME}-{job_id}.err", folder / f"{JOB_NAME}-{job_id}.out"]


def log_tail(paths: Iterable[Path], lines: int = 6, width: int = 120) -> tuple[Path, str] | None:
    """The last ``lines`` lines (each cut at ``width`` characters) of the first of ``paths``
    that can be read and is not empty."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        last = [line.rstrip()[:width] for line in text.splitlines() if line.strip()][-lines:]
        if last:
            return path, "\n".join(f"    {line}" for line in last)
    return None


class SlurmJobWatch:
    """Notices the worker jobs of a ``SLURMCluster`` that died before any of their Dask
    workers connected (see the module docstring).

    The executor reports the names of the workers it sees connected (:meth:`saw_workers`, at
    every look at the scheduler) and calls :meth:`check` while it waits; at most every
    ``interval`` s, ``check`` lists the queue (``squeue``). A job counts as gone once
    :attr:`CONFIRMATIONS` listings in a row lack it (or show it ended): one odd listing never
    decides, and a failed ``squeue`` is no answer. A job sbatch refused (dask-jobqueue keeps it
    without a ``job_id``, and logs sbatch's error) is gone at once. Each job gone before a
    worker of it connected is warned about once; when every job is gone and no worker is
    connected, ``check`` raises :class:`ExecutorError` (exit 2) naming the jobs, their output
    files, the end of one of them and the likely fixes."""

    CONFIRMATIONS = 2
    """Listings in a row that must lack a job before it counts as gone."""

    REFUSED = "refused by sbatch: its error is printed above"

    def __init__(self, cluster: Any, *, jobs: int, interval: float = SQUEUE_INTERVAL_S,
                 log_directory: str | None = None, python: str | None = None,
                 submit_dir: Path | None = None,
                 listing: Callable[[], dict[str, str] | None] = queue_listing,
                 accounting: Callable[[Collection[str]], dict[str, str]] = accounting,
                 warn: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster, self.expected, self.interval = cluster, jobs, interval
        self.log_directory, self.python = log_directory, python or sys.executable
        self.submit_dir = submit_dir or Path.cwd()
        self._listing, self._accounting, self._clock = listing, accounting, clock
        self._warn = warn or logging.getLogger("bayesbench").warning
        self.jobs: dict[str, str | None] = {}  # job name -> Slurm job id (None: refused)
        self.workers_seen: set[str] = set()  # names of every Dask worker seen connected
        self.failed: dict[str, str] = {}  # job name -> how it ended, jobs failed at start
        self._absent: Counter[str] = Counter()  # job name -> listings in a row without it
        self._next = clock() + interval

    @classmethod
    def for_cluster(cls, cluster: Any, config: Any) -> SlurmJobWatch:
        """The watch of ``cluster``'s jobs, from an ExecutorConfig."""
        slurm = config.slurm
        return cls(cluster, jobs=slurm.jobs, interval=slurm.squeue_interval,
                   log_directory=slurm.log_directory, python=slurm.python)

    def _learn_jobs(self) -> None:
        # a job enters cluster.workers once every sbatch of its batch returned: without a
        # job_id there, sbatch refused it
        try:  # the cluster's loop thread may be changing the dict
            jobs = list(getattr(self.cluster, "workers", {}).items())
        except RuntimeError:
            return
        for name, job in jobs:
            job_id = getattr(job, "job_id", None)
            if self.jobs.get(str(name)) is None:
                self.jobs[str(name)] = str(job_id) if job_id else None

    def saw_workers(self, names: Iterable[Any]) -> None:
        """Record the Dask workers connected now (their names)."""
        self.workers_seen.update(str(name) for name in names)

    @property
    def connected(self) -> set[str]:
        """The names of the jobs some worker of which has connected."""
        return {job for job in (job_of_worker(name, self.jobs) for name in self.workers_seen)
                if job is not None}

    @property
    def due(self) -> bool:
        """Whether :meth:`check` would list the queue now."""
        return self._clock() >= self._next

    def check(self, workers_now: Iterable[Any]) -> None:
        """Every ``interval`` s (else nothing): list the queue, warn about each job newly
        failed at start, raise :class:`ExecutorError` when no job is left and none of
        ``workers_now`` (the names of the workers connected now) runs."""
        if not self.due:
            return
        self._next = self._clock() + self.interval
        workers_now = [str(name) for name in workers_now]
        self.saw_workers(workers_now)
        self._learn_jobs()
        if not self.jobs:
            return
        submitted = [job_id for job_id in self.jobs.values() if job_id]
        # listed before the connections are judged: a job gone from the queue connects no more
        listed = self._listing() if submitted else {}
        if listed is None:
            return
        gone_ids = set(jobs_gone(submitted, listed))
        for name, job_id in self.jobs.items():
            if job_id is None or job_id in gone_ids:
                self._absent[name] += 1
            else:
                self._absent[name] = 0
        gone = [n for n, j in self.jobs.items()
                if j is None or self._absent[n] >= self.CONFIRMATIONS]
        connected = self.connected
        new = [n for n in gone if n not in self.failed and n not in connected]
        if new:
            ended = self._accounting([self.jobs[n] for n in new if self.jobs[n]])
            for name in new:
                job_id = self.jobs[name]
                self.failed[name] = ended.get(job_id, "") if job_id else self.REFUSED
        if len(gone) == len(self.jobs) >= self.expected and not workers_now:
            raise ExecutorError(self.all_gone_message())
        for name in new:
            self._warn(self.job_failed_warning(name, left=len(self.jobs) - len(gone)))

    # -- messages ------------------------------------------------------------------------------

    def _job(self, name: str) -> str:
        job_id = self.jobs.get(name)
        how = f" ({self.failed[name]})" if self.failed.get(name) else ""
        return f"{job_id}{how}" if job_id else f"{name}{how}"

    def _where(self, job_id: str) -> str:
        paths = job_log_files(job_id, self.log_directory, self.submit_dir)
        return " and ".join(str(p) for p in paths)

    def _fixes(self) -> str:
        return ("executor.slurm.prologue (a `module load` or `source .../activate` line that "
                f"fails on the compute nodes), executor.slurm.python ({self.python}: it must "
                "exist on the compute nodes and import this bayesbench), "
                "executor.slurm.queue / account / job_extra (a partition, account and options "
                "your jobs may use)")

    def job_failed_warning(self, name: str, *, left: int) -> str:
        """The warning about one job that failed at start while others are left."""
        job_id = self.jobs.get(name)
        output = f"; its output: {self._where(job_id)}" if job_id else ""
        return (f"Slurm job {self._job(name)} ended before any of its Dask workers connected"
                f"{output}. The grid goes on with the other {left} job(s); to fix the failed "
                f"one check {self._fixes()}")

    def all_gone_message(self) -> str:
        """The error when no job is left: which failed at start, where their output is, the
        end of one of their logs and the likely fixes."""
        failed = [n for n in self.jobs if n in self.failed]
        ran = [n for n in self.jobs if n not in self.failed]
        if not failed:
            return (f"--executor slurm: all {len(ran)} Slurm job(s) "
                    f"({', '.join(self._job(n) for n in ran[:8])}) have ended (their walltime, "
                    "or cancelled) and no Dask worker is left; the runs finished so far are "
                    "stored: rerun the same command to resume (raise executor.slurm.walltime "
                    "or jobs for a long grid)")
        ids = ", ".join(self._job(n) for n in failed[:8])
        ids += f" and {len(failed) - 8} more" if len(failed) > 8 else ""
        lines = [f"--executor slurm: {len(failed)} of {len(self.jobs)} Slurm job(s) ended "
                 f"before any of their Dask workers connected: {ids}"
                 + (f"; the other {len(ran)} ended after running" if ran else "")
                 + ". No job or worker is left; the runs finished so far are stored."]
        with_ids = [self.jobs[n] for n in failed if self.jobs[n]]
        if with_ids and self.log_directory:
            folder = log_folder(self.log_directory, self.submit_dir)
            lines.append(f"Their output: {folder}/{JOB_NAME}-<job id>.err and .out "
                         "(executor.slurm.log_directory).")
        elif with_ids:
            lines.append(f"Their output: slurm-<job id>.out in {self.submit_dir} (Slurm's "
                         "default; set executor.slurm.log_directory to put it elsewhere).")
        for job_id in with_ids:
            tail = log_tail(job_log_files(job_id, self.log_directory, self.submit_dir))
            if tail is not None:
                lines.append(f"The end of {tail[0]}:\n{tail[1]}")
                break
        else:
            if with_ids:
                lines.append(f"(No output of job {with_ids[0]} could be read here: "
                             f"{self._where(with_ids[0])}.)")
        lines.append(f"Likely fixes: {self._fixes()}. Then rerun the same command to resume.")
        return "\n".join(lines)
