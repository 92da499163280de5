"""Execute runs: one RunSpec -> RunResult, and the grid over a worker pool into the store."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bayesbench import __version__
from bayesbench.backbones import make_backbone, unsupported_runs
from bayesbench.config import Config, ExecutorConfig, RunSpec
from bayesbench.errors import BayesbenchError, ConfigError
from bayesbench.execution.base import Executor, Finished, open_executor
from bayesbench.methods.base import EvaluationConfig, FitContext, Method, TrainingConfig
from bayesbench.metrics.calibration import reliability_statistics
from bayesbench.metrics.suite import evaluate_ood, evaluate_split
from bayesbench.models import ModelConfig
from bayesbench.registry import DATASETS, METHODS
from bayesbench.results import (
    COST_SPLIT,
    FIT_SPLIT,
    TEST_SPLIT,
    MetricValue,
    RunResult,
    metric_spec,
    ood_split,
    shift_split,
)
from bayesbench.store import CLAIM_LEASE_S, ClaimOwner, ResultStore
from bayesbench.task import Task

Event = tuple[Any, ...]
"""Progress events: ("start", key) | ("epoch", key, phase, epoch, total, loss) |
("evaluate", key) | ("held", key, holder) (another process trains it; waiting) |
("skipped", key) (another process stored it) | ("kept", key, error) (a failure not written
over the complete result stored for it) | ("unsupported", key, reason) (its method cannot
work on its backbone: skipped, not stored)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable explicit choice is an input error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this torch build sees no CUDA GPU; use --device cpu "
                          "or --device auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: choose auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's processor
    string; ``unknown`` when neither says). Stored with every run because the same run key
    gives different numbers on different CPU types (their BLAS kernels round differently, and
    training amplifies it): runs are bit-reproducible on one type only."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_versions() -> dict[str, str]:
    """What a run's numbers depend on beyond its settings: the library versions and the CPU
    model (see :func:`cpu_model`)."""
    return {
        "bayesbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _distribution_version("numpy", "numpy"),
        "scikit-learn": _distribution_version("scikit-learn", "sklearn"),
        "pandas": _distribution_version("pandas", "pandas"),
        "cpu": cpu_model(),
    }


def _distribution_version(distribution: str, module: str) -> str:
    """The installed version of ``distribution`` from its metadata, else the module's
    ``__version__`` (importing scikit-learn and pandas only to read it would cost 0.6 s in a
    driver that otherwise never imports them)."""
    from importlib import import_module, metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return import_module(module).__version__


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the checkout bayesbench runs from (with '+dirty'), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_task(spec: RunSpec) -> Task:
    """The run's task: the full build from the dataset cache (built and stored on a miss,
    see :mod:`bayesbench.data.cache`), then cut to the quick budget."""
    from bayesbench.data.cache import DatasetCache

    task = DatasetCache.default().build(DATASETS.get(spec.dataset), spec.dataset,
                                        spec.dataset_params, spec.seed)
    if spec.quick:
        task = task.limited(spec.quick["max_train"], spec.quick["max_eval"], seed=spec.seed,
                            severities=spec.quick.get("severities"))
    return task


def fit_context(spec: RunSpec, device: torch.device, on_epoch: Any = None) -> FitContext:
    return FitContext(
        model=ModelConfig(**spec.model),
        training=TrainingConfig(**spec.training),
        evaluation=EvaluationConfig(**spec.evaluation),
        device=device,
        seed=spec.training_seed,
        on_epoch=on_epoch,
        backbone=make_backbone(spec.backbone),
    )


def _finite_probs(samples: torch.Tensor, where: str) -> torch.Tensor:
    if not torch.isfinite(samples).all():
        raise FloatingPointError(f"the method predicted non-finite probabilities on {where}")
    return samples


def evaluate_method(
    method: Method, task: Task, evaluation: EvaluationConfig,
    predictions: dict[str, Any] | None = None,
) -> tuple[list[MetricValue], dict[str, Any], float]:
    """All metrics on test, shifted and OOD sets; returns (metrics, reliability, predict s/1000).
    ``predictions``, when given, receives each split's
    :class:`~bayesbench.predictions.SplitPredictions` (what :func:`bayesbench.predictions.
    rescore` recomputes every metric from)."""
    bins = evaluation.ece_bins
    t0 = time.perf_counter()
    test = _finite_probs(method.predict(task.test.x), "test")
    per_1000 = (time.perf_counter() - t0) / len(task.test) * 1000
    keep = _prediction_keeper(predictions)
    keep(TEST_SPLIT, test, task.test.y, task.test.true_probs)
    out = [MetricValue(TEST_SPLIT, k, v)
           for k, v in evaluate_split(test, task.test.y, n_bins=bins,
                                      true_probs=task.test.true_probs).items()]
    for kind, severities in task.shifted.items():
        for severity, split in sorted(severities.items()):
            name = shift_split(kind, severity)
            samples = _finite_probs(method.predict(split.x), name)
            keep(name, samples, split.y, split.true_probs)
            out += [MetricValue(name, k, v) for k, v in
                    evaluate_split(samples, split.y, n_bins=bins,
                                   true_probs=split.true_probs).items()]
    for ood_name, x in task.ood.items():
        name = ood_split(ood_name)
        samples = _finite_probs(method.predict(x), name)
        keep(name, samples, None, None)
        out += [MetricValue(name, k, v) for k, v in evaluate_ood(test, samples).items()]
    reliability = reliability_statistics(test.mean(0), task.test.y, n_bins=bins)
    return out, reliability, per_1000


def _prediction_keeper(predictions: dict[str, Any] | None) -> Callable[..., None]:
    if predictions is None:
        return lambda *args: None
    from bayesbench.predictions import SplitPredictions

    def keep(split: str, samples: torch.Tensor, labels: Any, true_probs: Any) -> None:
        predictions[split] = SplitPredictions.of(samples, labels, true_probs)

    return keep


def task_record(task: Task) -> dict[str, Any]:
    """What reports need to know of a run's task: its classes (names where the dataset has
    them), for class-named tables and the chance level a collapsed model sits at."""
    return {"num_classes": task.num_classes,
            "class_names": list(task.class_names) if task.class_names else None}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_one(
    spec: RunSpec,
    device: torch.device,
    on_epoch: Callable[[str, int, int, float], None] | None = None,
    versions: dict[str, str] | None = None,
    commit: str | None = None,
    on_evaluate: Callable[[], None] | None = None,
) -> RunResult:
    """Build the task, fit the method, evaluate; a failure becomes a failed RunResult.
    ``on_epoch(phase, epoch, total, loss)`` reports training, ``on_evaluate()`` its end."""
    result = _failed_result(spec, device, versions or package_versions(), commit)
    try:
        task = build_task(spec)
        result.spec["task"] = task_record(task)  # stored beside the spec, never hashed
        result.spec["metric_spec"] = metric_spec(spec.evaluation["ece_bins"])  # likewise
        method: Method = METHODS.get(spec.method)(**spec.method_params)
        ctx = fit_context(spec, device, on_epoch)
        t0 = time.perf_counter()
        method.fit(task, ctx)
        train_seconds = time.perf_counter() - t0
        if on_evaluate is not None:
            on_evaluate()
        kept: dict[str, Any] | None = {} if spec.keep_predictions else None
        metrics, reliability, per_1000 = evaluate_method(method, task, ctx.evaluation, kept)
        if kept:
            from bayesbench.predictions import encode

            result.predictions = encode(kept)
        metrics += [
            MetricValue(COST_SPLIT, "train_seconds", train_seconds),
            MetricValue(COST_SPLIT, "predict_seconds_per_1000", per_1000),
            MetricValue(COST_SPLIT, "num_parameters", float(method.num_parameters())),
        ]
        metrics += [MetricValue(FIT_SPLIT, name, float(value))
                    for name, value in method.diagnostics().items()]
        result.metrics, result.reliability, result.status = metrics, reliability, "complete"
    except Exception as exc:  # a failing run is recorded and the grid goes on
        result.error = describe_failure(exc)
    result.finished_at = _now()
    return result


MAX_TRACEBACK_CHARS = 20_000
"""A stored traceback longer than this keeps its start and its end (where the error is)."""


def describe_failure(exc: BaseException) -> str:
    """The error text stored for a failed run: one summary line (``Type: message (at
    file:line)``), a blank line, then the full traceback (the last line names the error)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(summary) > 500:
        summary = summary[:499] + "…"
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    if len(trace) > MAX_TRACEBACK_CHARS:
        half = MAX_TRACEBACK_CHARS // 2
        trace = f"{trace[:half]}\n… ({len(trace) - 2 * half} characters left out) …\n" \
                f"{trace[-half:]}"
    return f"{summary}{where}\n\n{trace}"


# --------------------------------------------------------------------------- the grid


@dataclass
class GridOutcome:
    """What ``run_grid`` did: ``results`` (each written to the store, in the order they ended),
    ``skipped`` (complete in the store already, or completed meanwhile by another process),
    ``interrupted`` (Ctrl-C / SIGTERM) and ``stopped`` (runs in flight then: not stored).
    ``unsupported``: (spec, reason) of runs whose method cannot work on their backbone:
    skipped before anything trained, not stored."""

    results: list[RunResult]
    skipped: list[RunSpec]
    interrupted: bool = False
    stopped: list[RunSpec] = field(default_factory=list)
    kept_complete: list[RunResult] = field(default_factory=list)
    unsupported: list[tuple[RunSpec, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "failed"]


def check_inputs(config: Config, specs: Iterable[RunSpec]) -> None:
    """Let every dataset used check its inputs (data files) before anything runs."""
    seen: set[str] = set()
    for spec in specs:
        if spec.dataset_label in seen:
            continue
        seen.add(spec.dataset_label)
        try:
            DATASETS.get(spec.dataset)(**spec.dataset_params).check()
        except BayesbenchError as exc:
            raise type(exc)(f"{config.path}: datasets '{spec.dataset_label}': {exc}") from None


class _StopRequest:
    """Ctrl-C / SIGTERM while the grid runs: the first stops the grid (no new run starts; in
    the serial executor it interrupts the run in flight), a second aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self, executor: Any) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def handle(signum: int, frame: Any) -> None:
            if self.requested:  # the second one: abort now, without a traceback
                # bounded: a cluster that does not answer must not hold the abort up
                killer = threading.Thread(target=_quietly, args=(executor.kill,), daemon=True)
                killer.start()
                killer.join(timeout=5)
                if sys.stderr.isatty():
                    sys.stderr.write("\x1b[?25h")  # the progress display hid the cursor
                sys.stderr.write("\naborted: runs already stored are kept\n")
                sys.stderr.flush()
                os._exit(130)
            self.requested = True
            if getattr(executor, "in_run", False):
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_grid(
    specs: list[RunSpec],
    store: ResultStore,
    *,
    device: torch.device,
    workers: int = 1,
    threads: int | None = None,
    executor: ExecutorConfig | Executor | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    lease_s: float = CLAIM_LEASE_S,
    wait_s: float = 2.0,
) -> GridOutcome:
    """Run every spec not already complete in ``store``, writing each result as it ends.

    Where the runs execute is ``executor``: the config's ``executor`` section with the flags
    applied (see :func:`bayesbench.execution.base.open_executor`), or an
    :class:`~bayesbench.execution.base.Executor` ready to use (closed at the end); without it,
    ``workers`` > 1 local processes (:class:`~bayesbench.execution.local_pool.LocalPool`) or
    this process.
    Each run uses ``threads`` torch threads, default 1: these models are small, and on 2 cores
    two 1-thread workers gave 1.5x the throughput of one 2-thread process. ``threads`` and
    ``device`` are stamped on the specs (they enter the run keys when not the defaults: see
    :class:`RunSpec`); the executor never does.

    Only this process writes the store. Each run is claimed in the store right before it is
    handed to the executor, so several ``run`` processes on one store share the grid and never
    train a run twice; runs another live process holds are waited for (checked every
    ``wait_s`` s) and taken over if that process dies. A worker that dies fails only its own
    run (a Dask cluster first retries it elsewhere, up to ``max_tries``). Ctrl-C or SIGTERM
    stops the grid within about a second: no new run starts, every finished run is stored,
    runs in flight are dropped (and rerun by the next ``run``); a second Ctrl-C aborts at once.
    """
    threads = threads or 1
    specs = [s if (s.threads, s.device) == (threads, device.type)
             else dataclasses.replace(s, threads=threads, device=device.type) for s in specs]
    done = store.completed_keys()
    todo = [s for s in specs if s.key not in done]
    outcome = GridOutcome([], [s for s in specs if s.key in done])
    outcome.unsupported = unsupported_runs(todo)  # skipped with the reason, before training
    for spec, reason in outcome.unsupported:
        todo.remove(spec)
        if on_event is not None:
            on_event(("unsupported", spec.key, reason))
    if not todo:
        if isinstance(executor, Executor):
            executor.close()
        return outcome
    versions, commit = package_versions(), git_commit()
    owner = ClaimOwner.this_process()
    emit = on_event or (lambda event: None)
    if isinstance(executor, Executor):
        pool = executor
    else:
        pool = open_executor(executor or ExecutorConfig(workers=workers), device=device.type,
                             threads=threads, versions=versions, commit=commit, on_event=emit,
                             runs=len(todo), driver_id=owner.token)
    lost = lambda spec: _failed_result(spec, device, versions, commit)  # noqa: E731
    _GridDriver(store, pool, owner, outcome, emit, on_result, lost, lease_s, wait_s).run(todo)
    return outcome


class _GridDriver:
    """The claim-driven loop of :func:`run_grid` over any :class:`Executor`: claim a run, hand
    it over while the executor has a free slot, store each result as it arrives."""

    def __init__(self, store: ResultStore, executor: Executor, owner: ClaimOwner,
                 outcome: GridOutcome, emit: Callable[[Event], None],
                 on_result: Callable[[RunResult], None] | None,
                 lost: Callable[[RunSpec], RunResult], lease_s: float, wait_s: float) -> None:
        self.store, self.executor, self.owner, self.outcome = store, executor, owner, outcome
        self.emit, self.on_result, self.lost = emit, on_result, lost
        self.lease_s, self.wait_s = lease_s, wait_s
        self.stop = _StopRequest()

    def finish(self, fin: Finished) -> None:
        result = fin.result
        if result is None:  # its worker died, or the executor lost it
            result = self.lost(fin.spec)
            result.error = fin.error or (
                f"the worker process running it died ({fin.died}): out of memory, or killed "
                "from outside")
            result.finished_at = _now()
        if self.store.write(result):
            self.outcome.results.append(result)
            if self.on_result:
                self.on_result(result)
        else:  # a failure that would have replaced a complete result: not written
            self.outcome.kept_complete.append(result)
            self.outcome.skipped.append(fin.spec)
            self.emit(("kept", result.key, (result.error or "").split("\n", 1)[0]))

    def run(self, todo: list[RunSpec]) -> None:
        executor, stop, store = self.executor, self.stop, self.store
        heartbeat_stop = threading.Event()

        def heartbeat() -> None:
            while not heartbeat_stop.wait(self.lease_s / 6):
                with contextlib.suppress(BayesbenchError):
                    store.renew_claims(self.owner)

        beat = threading.Thread(target=heartbeat, daemon=True, name="claims-heartbeat")
        beat.start()
        clean = False
        try:
            with stop.installed(executor):
                self._loop(todo)
            clean = not stop.requested
        except KeyboardInterrupt:  # the serial executor's run was interrupted
            stop.requested = True
        finally:
            if stop.requested:
                self.outcome.interrupted = True
                with contextlib.suppress(Exception):
                    for fin in executor.drain():
                        if fin.result is not None:  # results that had already arrived
                            self.finish(fin)
                self.outcome.stopped = list(executor.running)
            (executor.close if clean else executor.kill)()
            heartbeat_stop.set()
            beat.join(timeout=5)
            with contextlib.suppress(BayesbenchError):
                store.release_claims(self.owner)

    def _loop(self, todo: list[RunSpec]) -> None:
        executor, stop, store, outcome = self.executor, self.stop, self.store, self.outcome
        pending = deque(todo)
        held: dict[str, str] = {}  # key -> holder, runs another live process is training
        while not stop.requested:
            while executor.free and pending and not stop.requested:
                spec = pending.popleft()
                claim = store.claim(spec.key, self.owner, self.lease_s)
                if claim.status == "complete":  # another process stored it meanwhile
                    held.pop(spec.key, None)
                    outcome.skipped.append(spec)
                    self.emit(("skipped", spec.key))
                elif claim.status == "held":
                    if spec.key not in held:
                        self.emit(("held", spec.key, claim.holder))
                    held[spec.key] = claim.holder
                else:
                    held.pop(spec.key, None)
                    executor.submit(spec)
            if not executor.running:
                if not held:
                    return
                if not pending:  # only others' runs are left: look again shortly
                    _sleep_unless(stop, self.wait_s)
                    pending.extend(s for s in todo if s.key in held)
                continue
            for fin in executor.poll(timeout=0.25):
                self.finish(fin)


def _quietly(action: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        action()


def _sleep_unless(stop: _StopRequest, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.05)


def _failed_result(spec: RunSpec, device: torch.device, versions: dict,
                   commit: str | None) -> RunResult:
    """A result marked failed (the status a run keeps unless it completes)."""
    return RunResult(
        key=spec.key, label=spec.label, method=spec.method, dataset=spec.dataset_label,
        seed=spec.seed, config_hash=spec.config_hash, quick=spec.quick is not None,
        status="failed", spec=spec.to_dict(), versions=versions, git_commit=commit,
        device=str(device), started_at=_now(),
    )
