"""Reports and the regression gate, read from the results store.

* :func:`write_report` – leaderboard.md, results.csv, summary.csv, reliability_<dataset>.png;
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

__all__ = [
    "GateResult",
    "GateRow",
    "add_summary_splits",
    "aggregate",
    "aggregate_store",
    "baseline_frame",
    "check_against_baseline",
    "load_baseline",
    "select_runs",
    "write_baseline",
    "write_report",
]
