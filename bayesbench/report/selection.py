"""The one selection of runs a report reads.

Every table, count, figure and CSV of a report comes from one :class:`RunSelection`: the
runs of one kind (quick or full, never mixed) and, per (label, dataset, seed), the latest
complete run (:func:`bayesbench.report.aggregate.latest_runs`). A superseded run (the same
label rerun under changed settings, stored under another key) is therefore counted nowhere:
not in the header, the tables, the CSVs, the reliability diagrams or the sweep plots.

Failed runs are listed when a failure is the latest run of its (label, dataset, seed); a
failure that a later complete run superseded is left out, like any superseded run.

Runs computed under different metric specifications (``spec["metric_spec"]``: ECE bins and
binning, the confidence definition; see :func:`bayesbench.results.metric_spec`) are never
mixed: the selection keeps the specification most of the latest runs share (ties: the most
recent run's), takes per (label, dataset, seed) the latest run computed under it, and counts
the runs it left out for being computed under another (``other_spec``, said in the header).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayesbench.report.aggregate import latest_runs, select_runs
from bayesbench.results import RunResult, describe_metric_spec, run_metric_spec
from bayesbench.store import ResultStore


@dataclass
class RunSelection:
    """The selected runs of one kind.

    ``tidy``: metric rows of the selected complete runs (``metrics_frame`` columns);
    ``runs``: one ``runs_frame`` row per selected complete run (key, label, method, dataset,
    seed, config_hash, git_commit, finished_at, ...); ``complete``: those runs as
    :class:`RunResult` (spec, reliability statistics), in ``runs`` order; ``failed``: the
    failed runs that are the latest of their (label, dataset, seed); ``superseded``: how many
    stored runs of this kind were left out because a later run of the same identity exists.
    """

    quick: bool
    store_path: str
    tidy: pd.DataFrame
    runs: pd.DataFrame
    complete: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)
    superseded: int = 0
    metric_spec: dict | None = None
    other_spec: int = 0

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def labels(self) -> list[str]:
        return sorted(self.runs["label"].unique())

    @property
    def datasets(self) -> list[str]:
        return sorted(self.runs["dataset"].unique())

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.runs["seed"].unique())

    @property
    def cpus(self) -> dict[str, int]:
        """CPU model -> number of selected runs made on it (runs that recorded one)."""
        if "cpu" not in self.runs:
            return {}
        return {str(c): int(n) for c, n in self.runs["cpu"].dropna().value_counts().items()}

    @property
    def commits(self) -> list[str]:
        return sorted({c for c in self.runs["git_commit"] if isinstance(c, str) and c})

    def header_line(self) -> str:
        """'12 complete full runs: 2 methods × 2 datasets, seeds 0, 1, 2; commit abc1234.'"""
        n = len(self.runs)
        what = ("quick runs (smoke-test settings: not comparable with full runs)" if self.quick
                else "full runs")
        seeds = ", ".join(map(str, self.seeds))
        commits = self.commits
        commit_text = (f"; git commit{'s' * (len(commits) != 1)} "
                       + ", ".join(f"`{c[:12]}`" for c in commits)) if commits else \
            "; git commit not recorded"
        superseded = (f" ({self.superseded} superseded run{'s' * (self.superseded != 1)} "
                      "left out: only the latest run of each method label, dataset and seed "
                      "counts)") if self.superseded else ""
        line = (f"{n} complete {what}{superseded}: {len(self.labels)} method label"
                f"{'s' * (len(self.labels) != 1)} × {len(self.datasets)} dataset"
                f"{'s' * (len(self.datasets) != 1)}, seed{'s' * (len(self.seeds) != 1)} "
                f"{seeds}{commit_text}; {len(self.failed)} failed.")
        cpus = self.cpus
        if len(cpus) == 1:
            line += f" CPU: {next(iter(cpus))}."
        elif cpus:
            line += (" CPUs: " + ", ".join(f"{c} ({n} run{'s' * (n != 1)})"
                                           for c, n in sorted(cpus.items()))
                     + ": **runs from more than one CPU type** (the same settings give other "
                     "numbers on another CPU type, a draw like another seed's).")
        if self.metric_spec:
            line += f" Metrics: {describe_metric_spec(self.metric_spec)}."
        if self.other_spec:
            line += (f" {self.other_spec} run{'s' * (self.other_spec != 1)} computed under "
                     "another metric specification left out (never mixed; `bayesbench "
                     "rescore` can score them under this one).")
        return line


METRICS_FRAME_COLUMNS = ["key", "label", "method", "dataset", "seed", "quick", "finished_at",
                         "split", "metric", "value"]


def metrics_frame_of(results: list[RunResult]) -> pd.DataFrame:
    """:meth:`ResultStore.metrics_frame` of runs already loaded (``store.results()``, in its
    order): the metric rows of the complete runs, so a report reads the metrics once."""
    complete = [r for r in results if r.status == "complete"]
    counts = [len(r.metrics) for r in complete]
    columns: dict[str, object] = {
        c: np.repeat(np.array([getattr(r, c) for r in complete], dtype=object), counts)
        for c in METRICS_FRAME_COLUMNS[:7]}
    metrics = [m for r in complete for m in r.metrics]
    columns["split"] = [m.split for m in metrics]
    columns["metric"] = [m.metric for m in metrics]
    columns["value"] = np.array([m.value for m in metrics], dtype=float)
    frame = pd.DataFrame(columns, columns=METRICS_FRAME_COLUMNS)
    frame["seed"] = frame["seed"].astype("int64")
    frame["quick"] = frame["quick"].astype(bool)
    frame["value"] = frame["value"].astype(float)
    return frame


def select_store_runs(store: ResultStore, quick: bool | None = None) -> RunSelection:
    """The report's selection from ``store`` (``quick=None``: full runs when any complete
    full run exists, else quick runs; see :func:`select_runs`). The metric rows are read
    from the store once."""
    results = store.results()
    tidy, quick = select_runs(metrics_frame_of(results), quick)
    chosen, other_spec = _common_metric_spec(results, set(tidy["key"]))
    if other_spec:  # select again among the runs computed under the chosen specification
        other = [r for r in results if r.status == "complete" and _spec_id(r) != chosen]
        results = [r for r in results if r.status != "complete" or _spec_id(r) == chosen]
        tidy, quick = select_runs(metrics_frame_of(results), quick)
        other_spec = sum(1 for r in other if r.quick == quick)
    all_runs = store.runs_frame()
    kind = all_runs[all_runs["quick"].astype(bool) == quick]
    keys = set(tidy["key"])
    runs = kind[kind["key"].isin(keys)].sort_values(["dataset", "label", "seed", "key"])
    latest_any = latest_runs(kind) if len(kind) else kind
    failed_keys = set(latest_any.loc[latest_any["status"] == "failed", "key"])
    wanted = keys | failed_keys
    loaded = {r.key: r for r in results if r.key in wanted}
    complete = [loaded[k] for k in runs["key"] if k in loaded]
    failed = sorted((loaded[k] for k in failed_keys if k in loaded),
                    key=lambda r: (r.dataset, r.label, r.seed, r.key))
    superseded = int((~kind["key"].isin(wanted)).sum()) - other_spec
    spec = json.loads(chosen) if chosen else None
    return RunSelection(quick, str(store.path), tidy, runs.reset_index(drop=True), complete,
                        failed, superseded, spec, other_spec)


def _spec_id(run: RunResult) -> str:
    return json.dumps(run_metric_spec(run.spec), sort_keys=True)


def _common_metric_spec(results: list[RunResult], keys: set[str]) -> tuple[str, int]:
    """The metric specification most of the runs ``keys`` share (ties: the latest run's),
    and how many of them have another."""
    chosen = [r for r in results if r.key in keys]
    if not chosen:
        return json.dumps(None), 0
    counts = Counter(_spec_id(r) for r in chosen)
    latest = max(chosen, key=lambda r: (r.finished_at or "", r.key))
    best = max(counts, key=lambda s: (counts[s], s == _spec_id(latest)))
    return best, len(chosen) - counts[best]
