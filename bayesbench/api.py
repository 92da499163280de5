"""The Python API: bayesbench from notebooks and scripts.

Everything the command line does, as functions that take and return Python objects:

* :func:`score` – every metric of saved predictions (arrays, tensors or files);
* :func:`run` – run a grid from a config file or a dict, into a results store;
* :func:`load_runs`, :func:`load_metrics`, :func:`load_aggregates` – the store as pandas
  DataFrames: one row per run, tidy metric values, means over seeds;
* :func:`get_run` – one stored run in full (what ``bayesbench show`` prints).

Bad input raises a :class:`~bayesbench.errors.BayesbenchError` subclass whose message names
the input and the fix (the CLI prints the same message and exits with code 2).

A whole session, on a tiny budget (a few seconds on one CPU core):

>>> import tempfile, bayesbench
>>> store = tempfile.mkdtemp() + "/results.sqlite"
>>> grid = bayesbench.run({
...     "seeds": [0, 1],
...     "model": {"d_model": 16, "heads": 2, "depth": 1},
...     "training": {"epochs": 1},
...     "datasets": [{"name": "markov", "params": {"num_train": 200, "num_val": 50,
...                                                 "num_test": 100}}],
...     "methods": ["map", {"name": "mc_dropout", "params": {"samples": 2}}],
... }, store=store)
>>> len(grid.results), len(grid.failed), len(grid.skipped)
(4, 0, 0)
>>> runs = bayesbench.load_runs(store)
>>> runs[["label", "dataset", "seed", "status"]].to_string(index=False).split("\\n")[1]
'       map  markov     0 complete'
>>> tidy = bayesbench.load_metrics(store)
>>> sorted({split.split("/")[0] for split in tidy["split"]})
['cost', 'ood', 'shift', 'test']
>>> tidy.query("split == 'test' and metric == 'accuracy'")[["label", "seed"]].shape
(4, 2)
>>> agg = bayesbench.load_aggregates(store)
>>> row = agg.query("label == 'map' and split == 'test' and metric == 'ece'").iloc[0]
>>> int(row["n"]), bool(0 <= row["mean"] <= 1)
(2, True)
>>> bayesbench.run(grid.config, store=store).skipped == grid.specs  # stored: nothing reruns
True
>>> bayesbench.get_run(store, "map", dataset="markov", seed=1).status
'complete'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from bayesbench.errors import ConfigError

if TYPE_CHECKING:  # imported lazily: `import bayesbench` stays light
    import pandas as pd

    from bayesbench.config import Config, RunSpec
    from bayesbench.results import RunResult
    from bayesbench.store import ResultStore

DEFAULT_STORE = Path("results/bayesbench.sqlite")
"""The store ``bayesbench run`` writes by default (relative to the working directory)."""

StoreLike = Union[str, os.PathLike, "ResultStore"]
ConfigLike = Union[str, os.PathLike, dict, "Config"]

__all__ = ["GridRun", "get_run", "load_aggregates", "load_config", "load_metrics",
           "load_runs", "run", "score"]


# --------------------------------------------------------------------------- scoring


def score(probs: Any, labels: Any, ood_probs: Any | None = None, *,
          n_bins: int = 15) -> dict[str, dict[str, float]]:
    """Every bayesbench metric of a model's predictions: ``{"test": {...}, "ood": {...}}``.

    probs: ``[N, C]`` class probabilities or ``[S, N, C]`` predictive samples (numpy, torch
    or a ``.npy`` / ``.npz`` / ``.csv`` path); labels: ``[N]`` integer classes; ood_probs:
    optional ``[M, C]`` or ``[S, M, C]`` predictions on OOD inputs (adds the ``"ood"``
    entry: AUROC, AUPR, FPR@95 with OOD as the positive class, per uncertainty score);
    n_bins: equal-width bins of the ECE. Logits are refused (apply softmax first).

    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> scores = score(probs, [0, 1, 1, 1], ood_probs=[[0.5, 0.5], [0.55, 0.45]])
    >>> round(scores["test"]["accuracy"], 4), round(scores["test"]["nll"], 4)
    (0.75, 0.4004)
    >>> scores["ood"]["auroc_max_prob"]  # every OOD input is less confident than any test one
    1.0
    """
    import numpy as np

    from bayesbench.scoring import score_predictions

    def array(value: Any) -> Any:  # nested lists too; paths and arrays pass through
        return np.asarray(value) if isinstance(value, (list, tuple)) else value

    return score_predictions(array(probs), array(labels),
                             None if ood_probs is None else array(ood_probs), n_bins=n_bins)


# --------------------------------------------------------------------------- running


def load_config(config: ConfigLike) -> Config:
    """A validated :class:`~bayesbench.config.Config` from a benchmarks.yaml path, a dict of
    the same layout (see :mod:`bayesbench.config`), or a Config (returned as is).

    >>> cfg = load_config({"datasets": ["digits"], "methods": ["map", "MC_Dropout"]})
    >>> [m.label for m in cfg.methods], cfg.seeds  # names as registered, whatever their case
    (['map', 'mc_dropout'], [0])
    """
    from bayesbench.config import Config, parse_config
    from bayesbench.config import load_config as load_file

    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return parse_config(config, "<config dict>")
    if isinstance(config, (str, os.PathLike)):
        return load_file(config)
    raise ConfigError(f"config: expected a benchmarks.yaml path or a dict, got "
                      f"{type(config).__name__}")


def _open_store(store: StoreLike, must_exist: bool) -> ResultStore:
    from bayesbench.store import ResultStore

    if isinstance(store, ResultStore):
        return store
    return ResultStore.open_existing(store) if must_exist else ResultStore(store)


def config_labels(cfg: Config, section: str, wanted: Sequence[str] | None) -> list[str] | None:
    """``methods`` / ``datasets`` filter values in the config's own spelling ("MAP" -> "map"
    when unambiguous); one the config lacks raises ConfigError with a "did you mean"."""
    if wanted is None:
        return None
    from bayesbench.registry import resolve_names

    if isinstance(wanted, str):
        wanted = [wanted]
    entries = getattr(cfg, section)
    available = [e.label for e in entries] + [e.group for e in entries]
    return resolve_names(list(wanted), available, f"--{section}", cfg.path)


@dataclass
class GridRun:
    """What :func:`run` did.

    ``specs``: every run of the grid; ``results``: the runs trained now (each stored as it
    ended); ``skipped``: runs complete in the store already; ``interrupted``: Ctrl-C stopped
    the grid (finished runs are stored; rerun to resume).
    """

    config: Config
    store: ResultStore
    specs: list[RunSpec]
    results: list[RunResult] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[RunResult]:
        """The runs that failed now (their errors are stored; see :func:`get_run`)."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def keys(self) -> list[str]:
        """Store keys of every run of the grid."""
        return [s.key for s in self.specs]

    def metrics(self) -> pd.DataFrame:
        """Tidy metric values (:func:`load_metrics` columns) of this grid's complete runs."""
        tidy = self.store.metrics_frame()
        return tidy[tidy["key"].isin(set(self.keys))].reset_index(drop=True)

    def aggregates(self) -> pd.DataFrame:
        """Mean, std and n over seeds (:func:`load_aggregates` columns) of this grid."""
        from bayesbench.report.aggregate import aggregate

        tidy = self.metrics()
        if tidy.empty:
            from bayesbench.errors import StoreError

            raise StoreError("no complete run in this grid to aggregate")
        return aggregate(tidy)


def run(config: ConfigLike, *, store: StoreLike = DEFAULT_STORE,
        methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None, quick: bool = False, workers: int | None = None,
        threads: int | None = None, device: str = "auto", executor: str | None = None,
        scheduler: str | None = None, progress: bool = False) -> GridRun:
    """Train and evaluate every (method, dataset, seed) of ``config`` not yet in ``store``:
    ``bayesbench run`` as a function.

    config: a benchmarks.yaml path, a dict of the same layout, or a Config; methods /
    datasets: labels to keep (default all; a sweep's group label selects all its members);
    seeds: base seeds (default the config's); quick: the config's quick budget; workers,
    executor (``local``, ``dask`` or ``slurm``), scheduler (a Dask scheduler address):
    override the config's ``executor`` section as the flags of ``bayesbench run`` do;
    threads: torch threads per run (default 1); device: ``auto``, ``cpu``, ``cuda`` or
    ``mps``; progress: print progress to stderr as the CLI does. Runs complete in the store
    are skipped, so calling it again resumes. Bad input raises ConfigError (or DataError for
    a data file) before anything trains. See the module docstring for an example.
    """
    from bayesbench.config import check_parallelism, expand
    from bayesbench.execution.base import with_overrides
    from bayesbench.runner import check_inputs, resolve_device, run_grid

    check_parallelism(workers, threads)
    cfg = load_config(config)
    plan = with_overrides(cfg.executor, kind=executor, scheduler=scheduler, workers=workers)
    if plan.kind == "local" or (plan.kind == "dask" and not plan.scheduler):
        check_parallelism(plan.workers, threads)  # processes on this machine
    dev = resolve_device(device)
    seed_list = None if seeds is None else [int(s) for s in seeds]
    specs = expand(cfg, methods=config_labels(cfg, "methods", methods),
                   datasets=config_labels(cfg, "datasets", datasets), seeds=seed_list,
                   quick=quick, threads=threads or 1, device=dev.type)
    check_inputs(cfg, specs)
    result_store = _open_store(store, must_exist=False)
    kwargs: dict[str, Any] = dict(device=dev, threads=threads, executor=plan)
    if progress:
        from rich.console import Console

        from bayesbench.progress import GridProgress

        with GridProgress(specs, result_store.completed_keys(), Console(stderr=True)) as bar:
            outcome = run_grid(specs, result_store, on_event=bar.on_event,
                               on_result=bar.on_result, **kwargs)
    else:
        outcome = run_grid(specs, result_store, **kwargs)
    return GridRun(cfg, result_store, specs, list(outcome.results), list(outcome.skipped),
                   outcome.interrupted)


# --------------------------------------------------------------------------- reading the store


def load_runs(store: StoreLike = DEFAULT_STORE) -> pd.DataFrame:
    """One row per stored run, complete or failed: key, label, method, dataset, seed,
    config_hash, quick, status, error, device, git_commit, started_at, finished_at.
    Every run ever stored is here (superseded ones too); see :func:`load_metrics` for the
    selection reports use."""
    return _open_store(store, must_exist=True).runs_frame()


def load_metrics(store: StoreLike = DEFAULT_STORE, *, quick: bool | None = None,
                 latest: bool = True) -> pd.DataFrame:
    """Tidy metric values of complete runs, one row per run × split × metric: key, label,
    method, dataset, seed, quick, finished_at, split, metric, value.

    Splits: ``test``, ``shift/<kind>/<severity>``, ``ood/<set>``, ``cost`` (train_seconds,
    predict_seconds_per_1000, num_parameters) and ``fit`` (a method's own diagnostics).
    With ``latest`` (the default) the rows are those reports use: only full or only quick
    runs (``quick``; default full runs if any) and, per (label, dataset, seed), the latest
    run; ``latest=False`` returns every stored value (``quick`` still filters when given).
    """
    from bayesbench.report.aggregate import select_runs

    tidy = _open_store(store, must_exist=True).metrics_frame()
    if latest:
        tidy, _ = select_runs(tidy, quick)
    elif quick is not None:
        tidy = tidy[tidy["quick"] == bool(quick)]
    return tidy.reset_index(drop=True)


def load_aggregates(store: StoreLike = DEFAULT_STORE, *,
                    quick: bool | None = None) -> pd.DataFrame:
    """Mean, std and n over seeds per (label, method, dataset, quick, split, metric), with the
    summary splits reports add (``shift_mean``, ``shift/<kind>``, ``severity/<s>``,
    ``ood_mean``): the numbers of summary.csv and the regression gate. Raises StoreError when
    the store has no complete run of that kind."""
    from bayesbench.report.aggregate import aggregate_store

    return aggregate_store(_open_store(store, must_exist=True), quick)


def get_run(store: StoreLike, run: str, *, dataset: str | None = None,
            seed: int | None = None, quick: bool | None = None) -> RunResult:
    """One stored run in full (:class:`~bayesbench.results.RunResult`: spec, versions,
    commit, timings, metrics, error): ``run`` is a key, a unique key prefix, or a method
    label with ``dataset`` and ``seed`` (see :func:`bayesbench.show.find_run`)."""
    from bayesbench.show import find_run

    return find_run(_open_store(store, must_exist=True), run, dataset=dataset, seed=seed,
                    quick=quick).run
