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
from bayesbench.config import Config, RunSpec
from bayesbench.errors import BayesbenchError, ConfigError
from bayesbench.execution.local_pool import Finished, LocalPool
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
    ood_split,
    shift_split,
)
from bayesbench.store import CLAIM_LEASE_S, ClaimOwner, ResultStore
from bayesbench.task import Task

Event = tuple[Any, ...]
"""Progress events: ("start", key) | ("epoch", key, phase, epoch, total, loss) |
("evaluate", key) | ("held", key, holder) (another process trains it; waiting) |
("skipped", key) (another process stored it) | ("kept", key, error) (a failure not written
over the complete result stored for it)."""


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


def package_versions() -> dict[str, str]:
    import numpy
    import pandas
    import sklearn

    return {
        "bayesbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pandas.__version__,
    }


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
    dataset = DATASETS.get(spec.dataset)(**spec.dataset_params)
    task = dataset.build(spec.seed)
    if spec.quick:
        task = task.limited(spec.quick["max_train"], spec.quick["max_eval"], seed=spec.seed)
    return task


def fit_context(spec: RunSpec, device: torch.device, on_epoch: Any = None) -> FitContext:
    return FitContext(
        model=ModelConfig(**spec.model),
        training=TrainingConfig(**spec.training),
        evaluation=EvaluationConfig(**spec.evaluation),
        device=device,
        seed=spec.training_seed,
        on_epoch=on_epoch,
    )


def _finite_probs(samples: torch.Tensor, where: str) -> torch.Tensor:
    if not torch.isfinite(samples).all():
        raise FloatingPointError(f"the method predicted non-finite probabilities on {where}")
    return samples


def evaluate_method(
    method: Method, task: Task, evaluation: EvaluationConfig
) -> tuple[list[MetricValue], dict[str, Any], float]:
    """All metrics on test, shifted and OOD sets; returns (metrics, reliability, predict s/1000)."""
    bins = evaluation.ece_bins
    t0 = time.perf_counter()
    test = _finite_probs(method.predict(task.test.x), "test")
    per_1000 = (time.perf_counter() - t0) / len(task.test) * 1000
    out = [MetricValue(TEST_SPLIT, k, v)
           for k, v in evaluate_split(test, task.test.y, n_bins=bins,
                                      true_probs=task.test.true_probs).items()]
    for kind, severities in task.shifted.items():
        for severity, split in sorted(severities.items()):
            name = shift_split(kind, severity)
            samples = _finite_probs(method.predict(split.x), name)
            out += [MetricValue(name, k, v) for k, v in
                    evaluate_split(samples, split.y, n_bins=bins,
                                   true_probs=split.true_probs).items()]
    for ood_name, x in task.ood.items():
        name = ood_split(ood_name)
        samples = _finite_probs(method.predict(x), name)
        out += [MetricValue(name, k, v) for k, v in evaluate_ood(test, samples).items()]
    reliability = reliability_statistics(test.mean(0), task.test.y, n_bins=bins)
    return out, reliability, per_1000


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
        method: Method = METHODS.get(spec.method)(**spec.method_params)
        ctx = fit_context(spec, device, on_epoch)
        t0 = time.perf_counter()
        method.fit(task, ctx)
        train_seconds = time.perf_counter() - t0
        if on_evaluate is not None:
            on_evaluate()
        metrics, reliability, per_1000 = evaluate_method(method, task, ctx.evaluation)
        metrics += [
            MetricValue(COST_SPLIT, "train_seconds", train_seconds),
            MetricValue(COST_SPLIT, "predict_seconds_per_1000", per_1000),
            MetricValue(COST_SPLIT, "num_parameters", float(method.num_parameters())),
        ]
        metrics += [MetricValue(FIT_SPLIT, name, float(value))
                    for name, value in method.diagnostics().items()]
        result.metrics, result.reliability, result.status = metrics, reliability, "complete"
    except Exception as exc:  # a failing run is recorded and the grid goes on
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        result.error = f"{type(exc).__name__}: {exc}{where}"
    result.finished_at = _now()
    return result


# --------------------------------------------------------------------------- the grid


@dataclass
class GridOutcome:
    """What ``run_grid`` did: ``results`` (each written to the store, in the order they ended),
    ``skipped`` (complete in the store already, or completed meanwhile by another process),
    ``interrupted`` (Ctrl-C / SIGTERM) and ``stopped`` (runs in flight then: not stored)."""

    results: list[RunResult]
    skipped: list[RunSpec]
    interrupted: bool = False
    stopped: list[RunSpec] = field(default_factory=list)
    kept_complete: list[RunResult] = field(default_factory=list)

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


class _InProcess:
    """The serial executor: runs one spec at a time in this process (``poll`` runs it)."""

    def __init__(self, device: torch.device, versions: dict, commit: str | None,
                 emit: Callable[[Event], None]) -> None:
        self.device, self.versions, self.commit, self.emit = device, versions, commit, emit
        self.spec: RunSpec | None = None
        self.in_run = False

    @property
    def free(self) -> int:
        return 0 if self.spec is not None else 1

    @property
    def running(self) -> list[RunSpec]:
        return [self.spec] if self.spec is not None else []

    def submit(self, spec: RunSpec) -> None:
        self.spec = spec

    def poll(self, timeout: float) -> list[Finished]:
        if self.spec is None:
            return []
        spec, key = self.spec, self.spec.key
        self.emit(("start", key))
        self.in_run = True
        try:
            result = run_one(
                spec, self.device,
                on_epoch=lambda p, e, n, loss: self.emit(("epoch", key, p, e, n, loss)),
                on_evaluate=lambda: self.emit(("evaluate", key)),
                versions=self.versions, commit=self.commit,
            )
        finally:
            self.in_run = False
        self.spec = None
        return [Finished(spec, result=result)]

    def close(self) -> None:
        pass

    kill = close


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
                executor.kill()
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
    on_event: Callable[[Event], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    lease_s: float = CLAIM_LEASE_S,
    wait_s: float = 2.0,
) -> GridOutcome:
    """Run every spec not already complete in ``store``, writing each result as it ends.

    ``workers`` > 1 runs specs in spawned processes (:class:`LocalPool`; CPU only), one run per
    worker at a time. Each worker (or the serial loop) uses ``threads`` torch threads, default
    1: these models are small, and on 2 cores two 1-thread workers gave 1.5x the throughput of
    one 2-thread process. ``threads`` and ``device`` are stamped on the specs (they enter the
    run keys when not the defaults: see :class:`RunSpec`).

    Each run is claimed in the store right before it starts, so several ``run`` processes on
    one store share the grid and never train a run twice; runs another live process holds are
    waited for (checked every ``wait_s`` s) and taken over if that process dies. A worker that
    dies fails only its own run. Ctrl-C or SIGTERM stops the grid within about a second: no
    new run starts, every finished run is stored, runs in flight are dropped (and rerun by the
    next ``run``); a second Ctrl-C aborts at once.
    """
    threads = threads or 1
    specs = [s if (s.threads, s.device) == (threads, device.type)
             else dataclasses.replace(s, threads=threads, device=device.type) for s in specs]
    done = store.completed_keys()
    todo = [s for s in specs if s.key not in done]
    outcome = GridOutcome([], [s for s in specs if s.key in done])
    if not todo:
        return outcome
    versions, commit = package_versions(), git_commit()
    emit = on_event or (lambda event: None)
    owner = ClaimOwner.this_process()

    def finish(fin: Finished) -> None:
        result = fin.result
        if result is None:  # the worker process died
            result = _failed_result(fin.spec, device, versions, commit)
            result.error = (f"the worker process running it died ({fin.died}): out of memory, "
                            "or killed from outside")
            result.finished_at = _now()
        if store.write(result):
            outcome.results.append(result)
            if on_result:
                on_result(result)
        else:  # a failure that would have replaced a complete result: not written
            outcome.kept_complete.append(result)
            outcome.skipped.append(fin.spec)
            emit(("kept", result.key, result.error))

    pooled = workers > 1 and len(todo) > 1 and device.type == "cpu"
    previous_threads = torch.get_num_threads()
    if pooled:
        executor: Any = LocalPool(min(workers, len(todo)), threads=threads, device=device.type,
                                  versions=versions, commit=commit, on_event=emit)
    else:
        torch.set_num_threads(threads)
        executor = _InProcess(device, versions, commit, emit)
    stop = _StopRequest()
    heartbeat_stop = threading.Event()

    def heartbeat() -> None:
        while not heartbeat_stop.wait(lease_s / 6):
            with contextlib.suppress(BayesbenchError):
                store.renew_claims(owner)

    beat = threading.Thread(target=heartbeat, daemon=True, name="claims-heartbeat")
    beat.start()
    pending = deque(todo)
    held: dict[str, str] = {}  # key -> holder, runs another live process is training
    try:
        with stop.installed(executor):
            while not stop.requested:
                while executor.free and pending and not stop.requested:
                    spec = pending.popleft()
                    claim = store.claim(spec.key, owner, lease_s)
                    if claim.status == "complete":  # another process stored it meanwhile
                        held.pop(spec.key, None)
                        outcome.skipped.append(spec)
                        emit(("skipped", spec.key))
                    elif claim.status == "held":
                        if spec.key not in held:
                            emit(("held", spec.key, claim.holder))
                        held[spec.key] = claim.holder
                    else:
                        held.pop(spec.key, None)
                        executor.submit(spec)
                if not executor.running:
                    if not held:
                        break
                    if not pending:  # only others' runs are left: look again shortly
                        _sleep_unless(stop, wait_s)
                        pending.extend(s for s in todo if s.key in held)
                    continue
                for fin in executor.poll(timeout=0.25):
                    finish(fin)
    except KeyboardInterrupt:  # the serial executor's run was interrupted
        stop.requested = True
    finally:
        if stop.requested:
            outcome.interrupted = True
            with contextlib.suppress(Exception):
                for fin in executor.poll(timeout=0.0) if pooled else []:
                    if fin.result is not None:  # results that had already arrived
                        finish(fin)
            outcome.stopped = list(executor.running)
            executor.kill()
        else:
            executor.close()
        heartbeat_stop.set()
        beat.join(timeout=5)
        with contextlib.suppress(BayesbenchError):
            store.release_claims(owner)
        if not pooled:
            torch.set_num_threads(previous_threads)
    return outcome


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
