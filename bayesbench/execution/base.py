"""The executor seam: what ``run_grid`` needs from wherever the runs execute.

``run_grid`` claims a run in the store, then hands it to an :class:`Executor` with ``submit``
as long as the executor has a ``free`` slot, and collects what ended with ``poll``. Results come
back to the driver, which alone writes the store. Implementations:

- :class:`~bayesbench.execution.serial.SerialExecutor`: in this process, one run at a time;
- :class:`~bayesbench.execution.local_pool.LocalPool`: spawned worker processes on this
  machine (CPU, or several runs sharing each GPU);
- :class:`~bayesbench.execution.dask_cluster.DaskExecutor`: tasks on a Dask cluster (an
  existing scheduler, a ``LocalCluster`` started for the grid, or Slurm jobs through
  dask-jobqueue).

:func:`open_executor` picks one from an :class:`~bayesbench.config.ExecutorConfig`.
Kept free of heavy imports (see the package docstring).
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bayesbench.errors import BayesbenchError, ConfigError

Event = tuple[Any, ...]
EventSink = Callable[[Event], None]


class ExecutorError(BayesbenchError):
    """The place the runs should execute cannot be used (an unreachable scheduler, a missing
    optional dependency, a lost cluster); the message names it and the fix. Exit 2."""


@dataclass
class Finished:
    """A run an executor is done with: its result, or why its worker died without one."""

    spec: Any  # RunSpec
    result: Any = None  # RunResult, or None when the worker died
    died: str = ""  # how the worker died ("killed by SIGKILL")
    error: str = ""  # or the whole error text, when the executor lost the run otherwise


class Executor(ABC):
    """Runs specs somewhere and reports each one's end.

    ``free`` slots limit ``submit`` (so a run is claimed only right before it can start);
    ``poll(timeout)`` waits up to ``timeout`` s and returns what finished (forwarding progress
    events to the sink it was given); ``drain`` returns what already finished without waiting
    or starting anything; ``close`` ends it after the grid, ``kill`` at once (Ctrl-C, abort).
    """

    interrupts_on_stop = False
    """True when the run in flight executes in the driver's own thread (serial): Ctrl-C then
    interrupts it (KeyboardInterrupt) instead of waiting for the executor to return."""

    in_run = False
    """While True, a Ctrl-C may interrupt the driver's thread (see ``interrupts_on_stop``)."""

    description = "executor"
    """What it is, for messages ("2 local worker processes", "Dask at tcp://...")."""

    @property
    @abstractmethod
    def free(self) -> int:
        """How many more specs ``submit`` takes now."""

    @property
    @abstractmethod
    def running(self) -> list[Any]:
        """The specs submitted and not finished yet."""

    @abstractmethod
    def submit(self, spec: Any) -> None:
        """Start ``spec`` (check ``free`` first)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` s; return the runs that finished or whose worker died."""

    def drain(self) -> list[Finished]:
        """What has finished already, without waiting (after a stop request)."""
        return self.poll(timeout=0.0)

    @abstractmethod
    def close(self) -> None:
        """Stop cleanly once nothing is running."""

    def kill(self) -> None:
        """Stop now: what is running is lost."""
        self.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- GPUs


def gpu_share(runs_per_gpu: int) -> float:
    """The amount of the Dask worker resource ``GPU`` one run needs: a hair under
    ``1 / runs_per_gpu``, so that exactly ``runs_per_gpu`` runs fit on each GPU in Dask's
    float bookkeeping (with exactly 1/6, a worker with ``GPU=2`` takes 11 runs, not 12).

    A worker process trains one run at a time, so workers bayesbench starts declare
    ``GPU = 1 / runs_per_gpu`` each, and a node with G GPUs hosts G × runs_per_gpu of them:
    never more runs than that on its GPUs, and CUDA runs never go to a worker without GPUs.
    Started by hand: ``dask worker ... --nworkers 2 --nthreads 1 --resources GPU=0.5`` per
    GPU for runs_per_gpu = 2."""
    if runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be at least 1, got {runs_per_gpu}")
    return (1.0 - 1e-9) / runs_per_gpu


def runs_fitting(supplied: float, share: float) -> int:
    """How many runs of ``share`` a worker supplying ``supplied`` GPU takes at once, counted the
    way Dask's worker does (subtracting what each running task holds)."""
    available, n = supplied, 0
    while available >= share:
        available -= share
        n += 1
    return n


def device_for_slot(device: str, slot: int, gpu_count: int) -> str:
    """The device a worker slot uses: on CUDA, slots go round-robin over the visible GPUs
    (``cuda:slot % gpu_count``), so N slots on G GPUs put ceil(N / G) runs on each."""
    if device != "cuda" or gpu_count <= 1:
        return device
    return f"cuda:{slot % gpu_count}"


def worker_slot(worker_name: Any) -> int:
    """A Dask worker's index among the processes of its host or job, read from the name that
    ``dask worker --nworkers N`` gives it (``<name>-<i>``); 0 when it has none."""
    found = re.search(r"-(\d+)$", str(worker_name))
    return int(found.group(1)) if found else 0


# --------------------------------------------------------------------------- choosing one


def with_overrides(config: Any, *, kind: str | None = None, scheduler: str | None = None,
                   workers: int | None = None, jobs: int | None = None) -> Any:
    """The config's ``executor`` section (an :class:`~bayesbench.config.ExecutorConfig`) with
    the flags of ``bayesbench run`` applied; ``--scheduler`` alone implies ``--executor dask``.
    """
    from bayesbench.config import EXECUTOR_KINDS

    if kind is not None and kind not in EXECUTOR_KINDS:
        raise ConfigError(f"--executor {kind}: choose one of {', '.join(EXECUTOR_KINDS)}")
    if scheduler is not None:
        if kind not in (None, "dask"):
            raise ConfigError(f"--scheduler {scheduler}: an existing Dask scheduler is used by "
                              f"--executor dask, not --executor {kind}; drop one of them")
        if not scheduler.strip():
            raise ConfigError("--scheduler: give an address like tcp://10.0.0.5:8786")
        kind = "dask"
    changes: dict[str, Any] = {}
    if kind is not None:
        changes["kind"] = kind
        if kind != "dask" and scheduler is None:
            changes["scheduler"] = None
    if scheduler is not None:
        changes["scheduler"] = scheduler
    if workers is not None:
        changes["workers"] = workers
    if jobs is not None:
        if (kind or config.kind) != "slurm":
            raise ConfigError(f"--jobs {jobs}: Slurm jobs are for --executor slurm")
        changes["slurm"] = dataclasses.replace(config.slurm, jobs=jobs)
    return dataclasses.replace(config, **changes)


def open_executor(config: Any, *, device: str, threads: int, versions: dict[str, str],
                  commit: str | None, on_event: EventSink, runs: int,
                  driver_id: str = "") -> Executor:
    """The executor ``config`` (an ExecutorConfig) asks for, ready for ``runs`` runs on
    ``device`` (a device type) with ``threads`` torch threads each.

    ``local`` is serial for one worker (or one run, or MPS) and a :class:`LocalPool` otherwise;
    ``dask`` connects to ``config.scheduler`` or starts a LocalCluster of ``config.workers``;
    ``slurm`` starts a dask-jobqueue SLURMCluster. Raises :class:`ExecutorError` (exit 2) when
    the cluster cannot be reached or started."""
    common = dict(device=device, threads=threads, versions=versions, commit=commit,
                  on_event=on_event)
    if config.kind == "local":
        if config.workers > 1 and runs > 1 and device in ("cpu", "cuda"):
            from bayesbench.execution.local_pool import LocalPool

            return LocalPool(min(config.workers, runs), **common)
        from bayesbench.execution.serial import SerialExecutor

        return SerialExecutor(**common)
    from bayesbench.execution.dask_cluster import DaskExecutor

    return DaskExecutor.open(config, driver_id=driver_id, **common)
