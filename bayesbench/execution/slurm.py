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
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from bayesbench.errors import ConfigError
from bayesbench.execution.base import ExecutorError, gpu_share

JOB_NAME = "bayesbench"


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
        cluster = SLURMCluster(scheduler_options=options, **kwargs)
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
