"""Runs as tasks on a Dask distributed cluster; results come back to the driver as futures.

Three ways to get a cluster (:meth:`DaskExecutor.open`):

- an existing scheduler (``--scheduler tcp://host:8786``): its workers must be able to import
  bayesbench (and any plugin methods the config names), the same version as the driver;
- a ``LocalCluster`` started for the grid (``--executor dask`` alone): ``executor.workers``
  worker processes on this machine;
- Slurm jobs through dask-jobqueue (``--executor slurm``, :mod:`bayesbench.execution.slurm`).

The driver writes the store, never a worker: a worker returns the RunResult, the driver writes
it the moment its future ends. A run is submitted only when the cluster has a free slot for
it, so claims in the store mean "running", as locally.

Every run occupies a whole worker process: :func:`run_on_worker` holds a process-wide lock
while it trains, since the methods seed torch's global RNG (two runs in threads of one
process would change each other's numbers). Start workers with ``--nthreads 1``; more threads
give no more parallelism. On CUDA a run asks for the worker resource ``GPU`` = 1/runs_per_gpu
(:func:`~bayesbench.execution.base.gpu_share`), so it only goes to workers that declare GPUs
and no GPU gets more runs than that.

Faults: a worker that dies mid-run (killed, out of memory, its Slurm job ended) makes Dask
reschedule the run on another worker; after ``max_tries`` deaths the run is stored failed with
the reason (Dask's ``allowed-failures`` on clusters bayesbench starts, and the driver's own
count of the run's starts on any cluster). Slurm jobs that die before any of their workers
connect are noticed by a :class:`~bayesbench.execution.slurm.SlurmJobWatch` (``squeue`` every
``executor.slurm.squeue_interval`` s): each is warned about, and when none is left the grid
stops with exit 2. Progress events travel as Dask worker events (``Worker.log_event``) on a
topic of this driver's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bayesbench.execution.base import (
    EventSink,
    Executor,
    ExecutorError,
    Finished,
    device_for_slot,
    gpu_share,
    runs_fitting,
    worker_slot,
)
from bayesbench.run_plan import package_source_digest

GPU_RESOURCE = "GPU"
"""The Dask worker resource that counts GPUs (``dask worker --resources GPU=1``)."""

_RUN_LOCK = threading.Lock()  # one run per worker process at a time (see the module docstring)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ExecutorError(
            "--executor dask/slurm needs Dask distributed: pip install 'bayesbench[dask]' "
            "(distributed and dask-jobqueue)") from None
    return distributed


# --------------------------------------------------------------------------- on the worker


class _Cancelled(Exception):
    """The driver cancelled this run (Ctrl-C, or it gave up on it): stop training."""


def _task_cancelled(worker: Any) -> bool:
    try:
        key = worker.get_current_task()
        task = worker.state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")
    except Exception:  # best effort: internals of the worker
        return False


DASK_MALLOC_TRIM_THRESHOLD = "65536"
"""The ``MALLOC_TRIM_THRESHOLD_`` a Dask nanny gives its worker process by default
(``distributed.nanny.pre-spawn-environ``)."""

MMAP_THRESHOLD = 32 * 2**20
"""The mmap threshold :func:`undo_nanny_malloc_trim` sets: glibc's ceiling for its own dynamic
threshold on 64-bit, i.e. where the default settles once large blocks have been freed."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_checked = False


def undo_nanny_malloc_trim() -> bool:
    """Undo, in this process, what the nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` does to torch
    on CPU; True when it did.

    Setting any glibc malloc threshold switches off glibc's *dynamic* mmap threshold, so every
    block over 128 KiB (most activations and gradients) is mmapped on allocation and unmapped
    on free, and its pages fault in again at every step: with the variable set, map trained
    about 1.6x slower on digits (1.13 s against 0.68 s CPU for 2 epochs), and a 2-worker Dask
    cluster ran the quick grid at half the local pool's throughput. Here the mmap threshold
    goes to :data:`MMAP_THRESHOLD` and the trim threshold to twice that, where the default
    settles. Only Dask's own default value is undone (a value a user set on purpose is
    kept), and only with glibc; once per process.
    """
    global _malloc_checked
    if _malloc_checked:
        return False
    _malloc_checked = True
    if (os.environ.get("MALLOC_TRIM_THRESHOLD_") != DASK_MALLOC_TRIM_THRESHOLD
            or not sys.platform.startswith("linux")):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


class CodeMismatchError(RuntimeError):
    """A worker runs other bayesbench code than the driver: its results would be stored under
    keys the driver computed from its own code."""


def code_mismatch(driver_code: str, where: str) -> str | None:
    """Why a process whose bayesbench source digest is not ``driver_code`` must not run this
    grid's runs (None when it is the same code)."""
    from bayesbench import __version__

    if package_source_digest() == driver_code:
        return None
    return (f"{where} runs other bayesbench code than the driver (bayesbench {__version__} at "
            f"{Path(__file__).resolve().parents[2]}; source digest "
            f"{package_source_digest()[:12]}, the driver's {driver_code[:12]}): install the "
            "driver's bayesbench (same version, same checkout) on every worker, then rerun")


def worker_code_digest() -> str:
    """This worker's bayesbench source digest (run on every worker by ``client.run``)."""
    return package_source_digest()


def run_on_worker(spec: Any, device: str, threads: int, versions: dict[str, str],
                  commit: str | None, topic: str, code: str | None = None) -> Any:
    """The Dask task of one run: :func:`bayesbench.runner.run_one` on this worker, reporting
    progress on ``topic``; returns the RunResult (a failure is a failed RunResult too).
    ``code``: the driver's source digest; a worker with other code refuses the run (it fails
    with :class:`CodeMismatchError`, and the run is stored failed with that reason)."""
    from distributed import get_worker

    worker = get_worker()
    undo_nanny_malloc_trim()
    if code is not None:
        problem = code_mismatch(code, f"the Dask worker {worker.address}")
        if problem:
            raise CodeMismatchError(problem)

    import torch

    from bayesbench.runner import package_versions, run_one

    versions = {**versions, **package_versions()}  # what this worker runs with
    key = spec.key

    def emit(event: tuple) -> None:
        with contextlib.suppress(Exception):  # progress must never fail a run
            worker.log_event(topic, list(event))

    def on_epoch(phase: str, epoch: int, total: int, loss: float) -> None:
        if _task_cancelled(worker):
            raise _Cancelled(f"run {key} was cancelled by the driver")
        emit(("epoch", key, phase, epoch, total, float(loss)))

    with _RUN_LOCK:
        torch.set_num_threads(threads)
        if device == "cuda":
            device = device_for_slot(device, worker_slot(worker.name), torch.cuda.device_count())
        emit(("start", key))
        return run_one(spec, torch.device(device), on_epoch=on_epoch,
                       on_evaluate=lambda: emit(("evaluate", key)),
                       versions=versions, commit=commit)


class IgnoreInterrupts:
    """Worker plugin for the clusters bayesbench starts on this machine: Ctrl-C reaches the
    whole process group, and the driver alone decides what stops."""

    idempotent = True
    name = "bayesbench-ignore-sigint"

    def setup(self, worker: Any) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: nothing to do
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, *args: Any, **kwargs: Any) -> None:
        pass


# --------------------------------------------------------------------------- the driver


def local_cluster_kwargs(workers: int, *, device: str, threads: int, max_tries: int,
                         runs_per_gpu: int) -> dict[str, Any]:
    """Arguments of the ``LocalCluster`` started for ``--executor dask`` without a scheduler:
    ``workers`` processes of one thread on 127.0.0.1, no dashboards; on CUDA each declares its
    share of a GPU."""
    kwargs: dict[str, Any] = dict(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        # the scheduler's HTTP endpoints on a free loopback port (8787 may be taken)
        dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
        silence_logs=logging.ERROR, scheduler_kwargs={"allowed_failures": max_tries - 1},
    )
    if device == "cuda":
        kwargs["resources"] = {GPU_RESOURCE: 1 / runs_per_gpu}  # each one run's share
    return kwargs


def connect(address: str, timeout: float) -> Any:
    """A Dask client of the scheduler at ``address``; :class:`ExecutorError` naming the address
    when none answers within ``timeout`` s."""
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ExecutorError(
            f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({exc}); "
            "check the address and that the scheduler runs and is reachable from here, or "
            "raise executor.connect_timeout in the config") from None
    except (ValueError, TypeError) as exc:
        raise ExecutorError(f"--scheduler {address}: not a usable scheduler address ({exc}); "
                            "write it like tcp://10.0.0.5:8786") from None


class DaskExecutor(Executor):
    """Submits each run as a task through ``client``; ``cluster`` (when bayesbench started it)
    is closed with the executor. ``job_watch`` (Slurm only) notices worker jobs that die at
    start while the executor waits."""

    def __init__(self, client: Any, *, device: str, threads: int, versions: dict[str, str],
                 commit: str | None, on_event: EventSink, max_tries: int = 3,
                 runs_per_gpu: int = 1, cluster: Any = None, expected_slots: int = 1,
                 connect_timeout: float = 30.0, driver_id: str = "",
                 description: str = "", job_watch: Any = None) -> None:
        self.client, self.cluster, self.job_watch = client, cluster, job_watch
        self.device, self.threads, self.versions, self.commit = device, threads, versions, commit
        self.max_tries, self.runs_per_gpu = max_tries, runs_per_gpu
        self.expected_slots, self.connect_timeout = max(1, expected_slots), connect_timeout
        self.address = getattr(client.scheduler, "address", "") or str(client)
        self.description = description or f"the Dask scheduler at {self.address}"
        self._emit = on_event
        self._futures: dict[str, tuple[Any, Any]] = {}  # run key -> (future, spec)
        self._starts: Counter[str] = Counter()
        self._attempt: Counter[str] = Counter()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._slots, self._slots_at = self.expected_slots, -1.0
        self._disconnected_at: float | None = None
        self._stopping = False  # after a stop request: nothing is resubmitted
        self._topic = f"bayesbench-progress-{driver_id or os.getpid()}"
        self._code = package_source_digest()
        self._resources = {GPU_RESOURCE: gpu_share(runs_per_gpu)} if device == "cuda" else None
        client.subscribe_topic(self._topic, self._events.put)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, config: Any, *, device: str, threads: int, versions: dict[str, str],
             commit: str | None, on_event: EventSink, driver_id: str = "") -> DaskExecutor:
        """From an ExecutorConfig: ``slurm`` starts a SLURMCluster, ``dask`` with a scheduler
        connects to it, ``dask`` without one starts a LocalCluster of ``config.workers``."""
        distributed = _distributed()
        common = dict(device=device, threads=threads, versions=versions, commit=commit,
                      on_event=on_event, max_tries=config.max_tries,
                      runs_per_gpu=config.runs_per_gpu, connect_timeout=config.connect_timeout,
                      driver_id=driver_id)
        if config.kind == "slurm":
            from bayesbench.execution.slurm import SlurmJobWatch, start_slurm_cluster

            cluster, slots = start_slurm_cluster(config, device=device, threads=threads)
            client = _client_of(distributed, cluster, config.connect_timeout)
            per_job = slots // max(1, config.slurm.jobs)
            return cls(client, cluster=cluster, expected_slots=slots, description=(
                f"Slurm: {config.slurm.jobs} job(s) of {per_job} worker process(es)"),
                job_watch=SlurmJobWatch.for_cluster(cluster, config), **common)
        if config.scheduler:
            client = connect(config.scheduler, config.connect_timeout)
            executor = cls(client, **common)
            executor._check_workers_code()
            executor._warn_about_threads()
            return executor
        try:
            cluster = distributed.LocalCluster(**local_cluster_kwargs(
                config.workers, device=device, threads=threads, max_tries=config.max_tries,
                runs_per_gpu=config.runs_per_gpu))
        except Exception as exc:
            raise ExecutorError(f"--executor dask: could not start a local Dask cluster of "
                                f"{config.workers} worker(s): {exc}") from None
        client = _client_of(distributed, cluster, config.connect_timeout)
        with contextlib.suppress(Exception):
            client.register_plugin(IgnoreInterrupts())
        return cls(client, cluster=cluster, expected_slots=config.workers,
                   description=f"a local Dask cluster of {config.workers} worker(s)", **common)

    def _check_workers_code(self) -> None:
        """Exit 2 before anything runs when a worker already connected runs other bayesbench
        code (workers that join later refuse each run instead: see :func:`run_on_worker`)."""
        try:
            digests = self.client.run(worker_code_digest)
        except Exception:  # e.g. no workers yet: each run checks on its worker
            return
        wrong = sorted(addr for addr, digest in digests.items() if digest != self._code)
        if wrong:
            with contextlib.suppress(Exception):
                self.client.close()
            raise ExecutorError(
                f"--scheduler {self.address}: {len(wrong)} of {len(digests)} worker(s) "
                f"({', '.join(wrong[:3])}{', …' if len(wrong) > 3 else ''}) run other "
                f"bayesbench code than this driver (source digest {digests[wrong[0]][:12]}, "
                f"this driver's {self._code[:12]}); their results would be stored under keys "
                "computed from this driver's code. Install this bayesbench (same version, "
                "same checkout) on every worker, then rerun")

    def _warn_about_threads(self) -> None:
        with contextlib.suppress(Exception):
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            many = [a for a, w in workers.items() if w.get("nthreads", 1) > 1]
            if many:
                logging.getLogger("bayesbench").warning(
                    "%d Dask worker(s) at %s have several threads; a worker process trains "
                    "one run at a time, so start workers with --nthreads 1 (and more "
                    "--nworkers) for parallel runs", len(many), self.address)

    # -- capacity --------------------------------------------------------------------------------

    def _capacity(self) -> int:
        """Runs the cluster can train at once now (refreshed at most once a second): one per
        worker process (each trains one run at a time), on CUDA only on workers with a GPU
        share for a run; at least ``expected_slots`` (workers still starting, Slurm jobs
        still queued)."""
        now = time.monotonic()
        if now - self._slots_at < 1.0:
            return self._slots
        self._slots_at = now
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:
            return self._slots
        if self.job_watch is not None:  # a job whose workers connected did not fail at start
            self.job_watch.saw_workers(w.get("name") for w in workers.values())
        total = 0
        for w in workers.values():
            if self._resources is not None:
                supplied = float((w.get("resources") or {}).get(GPU_RESOURCE, 0.0))
                total += min(1, runs_fitting(supplied, self._resources[GPU_RESOURCE]))
            else:
                total += 1
        self._slots = max(total, self.expected_slots)
        return self._slots

    @property
    def free(self) -> int:
        return max(0, self.slots - len(self._futures))

    @property
    def slots(self) -> int:
        """Runs the cluster trains at once now (see :meth:`_capacity`)."""
        return self._capacity()

    @property
    def running(self) -> list[Any]:
        return [spec for _, spec in self._futures.values()]

    # -- submitting and collecting -------------------------------------------------------------

    def submit(self, spec: Any) -> None:
        self._attempt[spec.key] += 1
        future = self.client.submit(
            run_on_worker, spec, self.device, self.threads, self.versions, self.commit,
            self._topic, self._code, key=f"bayesbench-run-{spec.key}-{self._topic[-12:]}-"
                             f"{self._attempt[spec.key]}",
            pure=False, resources=self._resources)
        self._futures[spec.key] = (future, spec)

    def _forward_events(self) -> None:
        while True:
            try:
                _, message = self._events.get_nowait()
            except queue.Empty:
                return
            event = tuple(message)
            if len(event) < 2 or event[1] not in self._futures:
                continue  # an event of a run given up on
            if event[0] == "start":
                self._starts[event[1]] += 1
            self._emit(event)

    def poll(self, timeout: float) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while True:
            self._forward_events()
            done = self._collect()
            if done or not self._futures or time.monotonic() >= deadline:
                return done
            self._check_connection()
            self._watch_jobs()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def drain(self) -> list[Finished]:
        self._stopping = True
        self._forward_events()
        return [f for f in self._collect() if f.result is not None]

    def _collect(self) -> list[Finished]:
        done: list[Finished] = []
        for key, (future, spec) in list(self._futures.items()):
            status = future.status
            if status == "finished":
                try:
                    result = future.result(timeout=max(self.connect_timeout, 5.0))
                except Exception:  # its data went with a dead worker: Dask recomputes it
                    continue
                done.append(Finished(spec, result=result))
            elif status == "error":
                done.append(Finished(spec, error=self._task_error(future)))
            elif status in ("cancelled", "lost"):
                if self.client.status != "running" or self._stopping:
                    continue  # the scheduler is away: _check_connection decides
                if self._attempt[key] < self.max_tries:  # e.g. the scheduler restarted
                    del self._futures[key]
                    self.submit(spec)
                    continue
                done.append(Finished(spec, error=(
                    f"the Dask cluster at {self.address} dropped the run "
                    f"{self._attempt[key]} time(s) (its task was cancelled or lost); stored "
                    f"failed after executor.max_tries = {self.max_tries}")))
            elif self._starts[key] > self.max_tries:  # keeps killing (or losing) workers
                with contextlib.suppress(Exception):
                    future.cancel()
                done.append(Finished(spec, error=(
                    f"the run started {self._starts[key]} times on Dask workers that died or "
                    f"left before it finished (killed, out of memory, a job's walltime); "
                    f"stored failed after executor.max_tries = {self.max_tries}")))
            else:
                continue
            del self._futures[key]
            self._starts.pop(key, None)
        return done

    def _task_error(self, future: Any) -> str:
        from bayesbench.runner import describe_failure

        try:
            exc = future.exception(timeout=5)
        except Exception as lost:
            return f"its Dask task failed and the error could not be fetched ({lost!r})"
        if type(exc).__name__ == "KilledWorker":
            tries = getattr(exc, "allowed_failures", self.max_tries - 1) + 1
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            return (f"the worker process running it died {tries} time(s) (killed, out of memory "
                    f"or crashed; the last one was {last}): Dask gave up on it after its "
                    f"allowed-failures = {tries - 1}\n\n{exc}")
        with contextlib.suppress(Exception):
            exc.__traceback__ = future.traceback(timeout=5)
        return describe_failure(exc)

    def _watch_jobs(self) -> None:
        """Let the job watch (Slurm) list the queue when it is due; it raises ExecutorError
        when every job is gone without a worker left."""
        if self.job_watch is None or not self.job_watch.due or self.client.status != "running":
            return
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # the scheduler is away: _check_connection decides
            return
        try:
            self.job_watch.check([w.get("name") for w in workers.values()])
        except ExecutorError:
            raise
        except Exception as exc:  # a fault of the watch itself must not end a long grid
            self.job_watch = None
            logging.getLogger("bayesbench").warning(
                "the watch of the Slurm jobs failed (%r) and is off for this grid: jobs that "
                "die at start are no longer noticed", exc)

    def _check_connection(self) -> None:
        if self.client.status == "running":
            self._disconnected_at = None
            return
        now = time.monotonic()
        if self._disconnected_at is None:
            self._disconnected_at = now
        elif now - self._disconnected_at > self.connect_timeout:
            raise ExecutorError(
                f"lost the Dask scheduler at {self.address} for over {self.connect_timeout:g} s "
                f"with {len(self._futures)} run(s) in flight; the runs finished so far are "
                "stored: restart the scheduler and rerun the same command to resume")

    # -- stopping ----------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        futures = [f for f, _ in self._futures.values()]
        self._futures.clear()
        with contextlib.suppress(Exception):
            if futures:
                self.client.cancel(futures)
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self._topic)
        with contextlib.suppress(Exception):
            self.client.close(timeout=min(10.0, timeout))
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=timeout)

    def kill(self) -> None:
        """Cancel every run; the workers of a cluster bayesbench started here die at once."""
        if self.cluster is not None and hasattr(self.cluster, "workers"):
            for nanny in list(getattr(self.cluster, "workers", {}).values()):
                pid = getattr(nanny, "pid", None)
                if isinstance(pid, int) and type(self.cluster).__name__ == "LocalCluster":
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        self.close(timeout=5.0)


def _client_of(distributed: Any, cluster: Any, timeout: float) -> Any:
    try:
        return distributed.Client(cluster, timeout=timeout, set_as_default=False)
    except Exception as exc:
        with contextlib.suppress(Exception):
            cluster.close()
        raise ExecutorError(f"could not connect to the Dask cluster bayesbench started "
                            f"({exc})") from None
