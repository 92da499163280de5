"""summary.csv as a tidy table: one row per (label, dataset, split, metric), with the split
taken apart into columns and each method's parameters as columns, so a sweep can be analysed
in pandas without parsing labels or split names.

Columns: ``label, method, dataset, quick, split, split_kind, shift_kind, severity, ood_set,
metric, mean, std, n`` then ``param.<name>`` for every method parameter of any run.

* ``split_kind`` – ``test``, ``shift`` (one shift kind at one severity), ``shift_kind`` (mean
  over one kind's severities), ``severity`` (mean over the kinds at one severity),
  ``shift_mean``, ``ood``, ``ood_mean``, ``cost`` or ``fit``;
* ``std`` – sample std over seeds (ddof = 1), empty (NaN) for one seed;
* ``param.<name>`` – the run's resolved ``method_params`` (a value that is not a number, a
  string or a boolean is written as JSON); empty where a method has no such parameter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bayesbench.report.aggregate import AGGREGATE_COLUMNS, extract_unique
from bayesbench.results import RunResult

SPLIT_COLUMNS = ["split_kind", "shift_kind", "severity", "ood_set"]
PARAM_PREFIX = "param."

_SPLIT_RE = (r"^(?:(?P<test>test|cost|fit|shift_mean|ood_mean)"
             r"|shift/(?P<kind>[^/]+)/(?P<sev>\d+)"
             r"|shift/(?P<kind_only>[^/]+)"
             r"|severity/(?P<sev_only>\d+)"
             r"|ood/(?P<ood>.+))$")


def split_columns(splits: pd.Series) -> pd.DataFrame:
    """``split_kind``, ``shift_kind``, ``severity`` (nullable integer) and ``ood_set`` of each
    split name (module docstring); unknown split names get ``split_kind`` = the name."""
    parts = extract_unique(splits, _SPLIT_RE)
    kind = np.select(
        [parts["test"].notna(), parts["kind"].notna(), parts["kind_only"].notna(),
         parts["sev_only"].notna(), parts["ood"].notna()],
        [parts["test"], "shift", "shift_kind", "severity", "ood"], default=None)
    kind = np.where(pd.isna(kind), splits.to_numpy(), kind)
    severity = np.where(parts["sev"].notna(), parts["sev"], parts["sev_only"])
    shift_kind = np.where(parts["kind"].notna(), parts["kind"], parts["kind_only"])
    return pd.DataFrame({"split_kind": kind,
                         "shift_kind": shift_kind,
                         "severity": pd.to_numeric(pd.Series(severity, index=splits.index))
                         .astype("Int64"),
                         "ood_set": parts["ood"].to_numpy()}, index=splits.index)


def _cell(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def method_params(runs: Sequence[RunResult]) -> pd.DataFrame:
    """One row per (label, dataset): the ``param.<name>`` columns of its runs' resolved
    method parameters (the first run's: a label's runs on a dataset share their settings)."""
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        key = (run.label, run.dataset)
        if key not in rows:
            params = (run.spec or {}).get("method_params") or {}
            rows[key] = {f"{PARAM_PREFIX}{k}": _cell(v) for k, v in sorted(params.items())}
    return pd.DataFrame([{"label": label, "dataset": dataset, **params}
                         for (label, dataset), params in rows.items()],
                        columns=None if rows else ["label", "dataset"])


def tidy_summary(agg: pd.DataFrame, runs: Sequence[RunResult] = ()) -> pd.DataFrame:
    """The summary.csv frame of :func:`~bayesbench.report.aggregate.aggregate` rows ``agg``
    and the selected runs ``runs`` (for their method parameters)."""
    out = pd.concat([agg[AGGREGATE_COLUMNS[:5]], split_columns(agg["split"]),
                     agg[AGGREGATE_COLUMNS[5:]]], axis=1)
    params = method_params(runs)
    if len(params.columns) > 2:
        out = out.merge(params, on=["label", "dataset"], how="left")
        columns = sorted(c for c in params.columns if c.startswith(PARAM_PREFIX))
        out = out[[c for c in out.columns if c not in columns] + columns]
    return out.reset_index(drop=True)
