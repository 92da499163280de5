"""Reports and the regression gate, read from the results store.

* :func:`write_report` – leaderboard.md (summary across datasets first), report.html,
  results.csv, summary.csv (tidy), comparisons.csv, cd_diagram.png, cost_quality.png,
  reliability_<dataset>.png, sweep_<dataset>_<group>.png;
* :func:`select_store_runs` – the one selection of runs every part of a report reads;
* :mod:`bayesbench.report.render` – figures drawn only when their inputs changed (in
  parallel where possible); :mod:`bayesbench.report.grid` – "15 of 228 runs" of the
  configured grid;
* :func:`cross_dataset_summary` – mean ranks, Friedman / Nemenyi, win / tie / loss against
  map, cost ratios (:mod:`bayesbench.report.summary`, statistics in
  :mod:`bayesbench.report.stats`);
* :func:`aggregate_store` – mean / std / n over seeds, with derived summary splits;
* :func:`write_baseline`, :func:`load_baseline`, :func:`check_against_baseline` – the gate.
"""

from bayesbench.report.aggregate import (
    add_summary_splits,
    aggregate,
    aggregate_store,
    select_runs,
)
from bayesbench.report.gate import (
    GateResult,
    GateRow,
    baseline_frame,
    check_against_baseline,
    load_baseline,
    write_baseline,
)
from bayesbench.report.leaderboard import write_report
from bayesbench.report.selection import RunSelection, select_store_runs
from bayesbench.report.summary import CrossDatasetSummary, cross_dataset_summary, per_seed_values
from bayesbench.report.tidy import tidy_summary

__all__ = [
    "CrossDatasetSummary",
    "GateResult",
    "GateRow",
    "RunSelection",
    "add_summary_splits",
    "aggregate",
    "aggregate_store",
    "baseline_frame",
    "check_against_baseline",
    "cross_dataset_summary",
    "load_baseline",
    "per_seed_values",
    "select_runs",
    "select_store_runs",
    "tidy_summary",
    "write_baseline",
    "write_report",
]
