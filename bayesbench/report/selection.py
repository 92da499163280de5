"""The one selection of runs a report reads.

Every table, count, figure and CSV of a report comes from one :class:`RunSelection`: the
runs of one kind (quick or full, never mixed) and, per (label, dataset, seed), the latest
complete run (:func:`bayesbench.report.aggregate.latest_runs`). A superseded run (the same
label rerun under changed settings, stored under another key) is therefore counted nowhere:
not in the header, the tables, the CSVs, the reliability diagrams or the sweep plots.

Failed runs are listed when a failure is the latest run of its (label, dataset, seed); a
failure that a later complete run superseded is left out, like any superseded run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bayesbench.report.aggregate import latest_runs, select_runs
from bayesbench.results import RunResult
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
        return (f"{n} complete {what}{superseded}: {len(self.labels)} method label"
                f"{'s' * (len(self.labels) != 1)} × {len(self.datasets)} dataset"
                f"{'s' * (len(self.datasets) != 1)}, seed{'s' * (len(self.seeds) != 1)} "
                f"{seeds}{commit_text}; {len(self.failed)} failed.")


def select_store_runs(store: ResultStore, quick: bool | None = None) -> RunSelection:
    """The report's selection from ``store`` (``quick=None``: full runs when any complete
    full run exists, else quick runs; see :func:`select_runs`)."""
    metrics = store.metrics_frame()
    tidy, quick = select_runs(metrics, quick)
    all_runs = store.runs_frame()
    kind = all_runs[all_runs["quick"].astype(bool) == quick]
    keys = set(tidy["key"])
    runs = kind[kind["key"].isin(keys)].sort_values(["dataset", "label", "seed", "key"])
    latest_any = latest_runs(kind) if len(kind) else kind
    failed_keys = set(latest_any.loc[latest_any["status"] == "failed", "key"])
    wanted = keys | failed_keys
    loaded = {r.key: r for r in store.results() if r.key in wanted}
    complete = [loaded[k] for k in runs["key"] if k in loaded]
    failed = sorted((loaded[k] for k in failed_keys if k in loaded),
                    key=lambda r: (r.dataset, r.label, r.seed, r.key))
    superseded = int((~kind["key"].isin(wanted)).sum())
    return RunSelection(quick, str(store.path), tidy, runs.reset_index(drop=True), complete,
                        failed, superseded)
