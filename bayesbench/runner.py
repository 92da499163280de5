"""Execute runs: one RunSpec -> RunResult, and the grid over a worker pool into the store."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayesbench import __version__
from bayesbench.config import Config, RunSpec
from bayesbench.errors import BayesbenchError, ConfigError
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
from bayesbench.store import ResultStore
from bayesbench.task import Task

Event = tuple[Any, ...]
"""Progress events: ("start", key) | ("epoch", key, phase, epoch, total, loss)."""


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
) -> RunResult:
    """Build the task, fit the method, evaluate; a failure becomes a failed RunResult."""
    result = _failed_result(spec, device, versions or package_versions(), commit)
    try:
        task = build_task(spec)
        method: Method = METHODS.get(spec.method)(**spec.method_params)
        ctx = fit_context(spec, device, on_epoch)
        t0 = time.perf_counter()
        method.fit(task, ctx)
        train_seconds = time.perf_counter() - t0
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

_events: Any = None  # the worker's event queue, set by _init_worker


def _init_worker(threads: int, events: Any) -> None:
    global _events
    torch.set_num_threads(threads)
    _events = events
    parent = os.getppid()

    def exit_with_parent() -> None:  # a killed `bayesbench run` must not leave workers behind
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def _run_in_worker(spec: RunSpec, device: str, versions: dict, commit: str | None) -> RunResult:
    key = spec.key
    _events.put(("start", key))
    return run_one(
        spec, torch.device(device),
        on_epoch=lambda phase, e, n, loss: _events.put(("epoch", key, phase, e, n, loss)),
        versions=versions, commit=commit,
    )


@dataclass
class GridOutcome:
    results: list[RunResult]
    skipped: list[RunSpec]
    interrupted: bool = False

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


def run_grid(
    specs: list[RunSpec],
    store: ResultStore,
    *,
    device: torch.device,
    workers: int = 1,
    threads: int | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> GridOutcome:
    """Run every spec not already complete in ``store``, writing each result as it ends.

    ``workers`` > 1 runs specs in spawned processes. Each worker (or the serial loop) uses
    ``threads`` torch threads, default 1: these models are small, and on 2 cores two 1-thread
    workers gave 1.5x the throughput of one 2-thread process. Ctrl-C stops the grid; what was
    written stays.
    """
    done = store.completed_keys()
    todo = [s for s in specs if s.key not in done]
    outcome = GridOutcome([], [s for s in specs if s.key in done])
    threads = threads or 1
    versions, commit = package_versions(), git_commit()

    def finish(result: RunResult) -> None:
        store.write(result)
        outcome.results.append(result)
        if on_result:
            on_result(result)

    emit = on_event or (lambda event: None)
    if workers <= 1 or len(todo) <= 1 or device.type != "cpu":
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for spec in todo:
                emit(("start", spec.key))
                finish(run_one(
                    spec, device,
                    on_epoch=lambda p, e, n, loss, k=spec.key: emit(("epoch", k, p, e, n, loss)),
                    versions=versions, commit=commit,
                ))
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            torch.set_num_threads(previous)
        return outcome

    ctx = mp.get_context("spawn")  # fork is unsafe once torch has started its thread pools
    events = ctx.Queue()
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                emit(events.get(timeout=0.1))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx,
                               initializer=_init_worker, initargs=(threads, events))
    pending: dict[Future, RunSpec] = {}
    try:
        pending = {pool.submit(_run_in_worker, s, device.type, versions, commit): s for s in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = pending.pop(fut)
                try:
                    finish(fut.result())
                except Exception as exc:  # the worker process itself died
                    result = _failed_result(spec, device, versions, commit)
                    result.error = f"worker process failed: {type(exc).__name__}: {exc}"
                    result.finished_at = _now()
                    finish(result)
    except KeyboardInterrupt:
        outcome.interrupted = True
        for fut in pending:
            fut.cancel()
    finally:
        pool.shutdown(wait=not outcome.interrupted, cancel_futures=True)
        stop.set()
        pumper.join(timeout=1)
    return outcome


def _failed_result(spec: RunSpec, device: torch.device, versions: dict,
                   commit: str | None) -> RunResult:
    """A result marked failed (the status a run keeps unless it completes)."""
    return RunResult(
        key=spec.key, label=spec.label, method=spec.method, dataset=spec.dataset_label,
        seed=spec.seed, config_hash=spec.config_hash, quick=spec.quick is not None,
        status="failed", spec=spec.to_dict(), versions=versions, git_commit=commit,
        device=str(device), started_at=_now(),
    )
