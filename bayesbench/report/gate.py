"""Regression gate: compare current aggregates against a baseline CSV, direction-aware.

Baseline CSV columns: ``method,dataset,split,metric,value,higher_is_better,tolerance``.
``method`` holds the method *label* (the name a run is reported under), ``value`` the mean over
seeds. Only gated metrics (``MetricInfo.gated``) on the splits ``test``, ``shift_mean`` and
``ood_mean`` are written, which keeps the file small and meaningful.

A current mean ``c`` against a baseline ``b`` with tolerance ``t`` and ``better = c - b`` for
higher-is-better metrics (``b - c`` otherwise):

* ``regressed`` if ``better < -t``; ``improved`` if ``better > t``; else ``ok``;
* ``missing`` if the current results have no (finite) value for the baseline row.

Both ``regressed`` and ``missing`` fail the gate (exit code 1): a method or metric that
silently disappears must not pass CI. Rows in the current results without a baseline row are
ignored. Tolerance precedence: an override by metric name > the row's ``tolerance`` column
(when not empty) > the metric's default in :data:`bayesbench.metrics.METRICS`.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from bayesbench.errors import BaselineError, ConfigError, UnknownNameError
from bayesbench.metrics import METRICS
from bayesbench.report.aggregate import (
    OOD_MEAN,
    SHIFT_MEAN,
    TIDY_COLUMNS,
    aggregate,
    aggregate_store,
    select_runs,
)
from bayesbench.report.leaderboard import atomic_write
from bayesbench.results import TEST_SPLIT
from bayesbench.store import ResultStore

BASELINE_COLUMNS = ["method", "dataset", "split", "metric", "value", "higher_is_better",
                    "tolerance"]
GATED_SPLITS = (TEST_SPLIT, SHIFT_MEAN, OOD_MEAN)
_KEY = ["method", "dataset", "split", "metric"]
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_HOW_TO_WRITE = ("write one from results you trust with "
                 "`bayesbench report --write-baseline PATH`")

GateStatus = Literal["ok", "regressed", "improved", "missing"]


def _as_aggregates(source: ResultStore | pd.DataFrame | str | os.PathLike[str],
                   quick: bool | None) -> pd.DataFrame:
    """Aggregates from a store, a store path, a tidy metrics frame or aggregates."""
    if isinstance(source, pd.DataFrame):
        if {"mean", "n"} <= set(source.columns):
            return source
        if set(TIDY_COLUMNS) <= set(source.columns):
            return aggregate(select_runs(source, quick)[0])
        raise TypeError("expected aggregates or a tidy metrics frame")
    store = source if isinstance(source, ResultStore) else ResultStore.open_existing(source)
    return aggregate_store(store, quick)


# -- writing and reading the baseline --------------------------------------------------------


def baseline_frame(aggregates_or_store: ResultStore | pd.DataFrame | str | os.PathLike[str],
                   quick: bool | None = None) -> pd.DataFrame:
    """The baseline rows (BASELINE_COLUMNS) for gated metrics on the gated splits."""
    agg = _as_aggregates(aggregates_or_store, quick)
    gated = {name for name, info in METRICS.items() if info.gated}
    rows = agg[agg["split"].isin(GATED_SPLITS) & agg["metric"].isin(gated) & agg["mean"].notna()]
    out = pd.DataFrame({
        "method": rows["label"].astype(str),
        "dataset": rows["dataset"].astype(str),
        "split": rows["split"],
        "metric": rows["metric"],
        "value": rows["mean"].astype(float),
        "higher_is_better": [METRICS[m].higher_is_better for m in rows["metric"]],
        "tolerance": [METRICS[m].tolerance for m in rows["metric"]],
    })
    return out.sort_values(_KEY).reset_index(drop=True)


def write_baseline(aggregates_or_store: ResultStore | pd.DataFrame | str | os.PathLike[str],
                   path: str | os.PathLike[str], quick: bool | None = None) -> Path:
    """Write the baseline CSV at ``path`` (atomically); returns the path.

    Values are written with full float precision, so checking the same results against it
    gives deltas of exactly zero.
    """
    frame = baseline_frame(aggregates_or_store, quick)
    if frame.empty:
        raise BaselineError(f"no gated metric values to write to baseline {path}: "
                            "run `bayesbench run` with evaluations that produce them first")
    return atomic_write(Path(path), frame.to_csv(index=False))


def _fail(source: str, what: str, fix: str) -> BaselineError:
    return BaselineError(f"baseline {source}: {what}: {fix}")


def validate_baseline(raw: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Check a baseline read with every cell as a string; returns it typed (value float,
    higher_is_better bool, tolerance float with NaN = use the metric default)."""
    missing = [c for c in BASELINE_COLUMNS if c not in raw.columns]
    if missing:
        raise _fail(source, f"missing column(s) {', '.join(missing)} "
                    f"(found: {', '.join(map(str, raw.columns)) or 'none'})",
                    f"the header must be {','.join(BASELINE_COLUMNS)}; {_HOW_TO_WRITE}")
    if raw.empty:
        raise _fail(source, "no rows", f"a baseline must gate something; {_HOW_TO_WRITE}")
    raw = raw[BASELINE_COLUMNS].astype(str).apply(lambda col: col.str.strip())
    values, directions, tolerances = [], [], []
    for i, row in enumerate(raw.itertuples(index=False)):
        where = f"row {i + 1} (line {i + 2})"
        for col in _KEY:
            if not getattr(row, col):
                raise _fail(source, f"{where} has an empty '{col}'", "fill it in or delete the row")
        if row.metric not in METRICS:
            close = difflib.get_close_matches(row.metric, list(METRICS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _fail(source, f"{where} names unknown metric '{row.metric}'{hint}",
                        "use a metric name from bayesbench.metrics.METRICS")
        info = METRICS[row.metric]
        try:
            value = float(row.value)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise _fail(source, f"{where}: value '{row.value}' for {row.metric} is not a "
                        "finite number", "write the baseline mean as a number")
        hib = row.higher_is_better.lower()
        if hib not in _TRUE | _FALSE:
            raise _fail(source, f"{where}: higher_is_better '{row.higher_is_better}' is not "
                        "a boolean", "write True or False")
        if (hib in _TRUE) != info.higher_is_better:
            raise _fail(source, f"{where}: higher_is_better={row.higher_is_better} but "
                        f"{row.metric} is {'higher' if info.higher_is_better else 'lower'}-is-"
                        "better", f"write {info.higher_is_better}")
        tol = math.nan
        if row.tolerance and row.tolerance.lower() != "nan":
            try:
                tol = float(row.tolerance)
            except ValueError:
                tol = -1.0
            if not tol >= 0:
                raise _fail(source, f"{where}: tolerance '{row.tolerance}' is not a "
                            "non-negative number", "write a number ≥ 0, or leave it empty "
                            "for the metric's default")
        values.append(value)
        directions.append(info.higher_is_better)
        tolerances.append(tol)
    out = raw[_KEY].copy()
    out["value"] = values
    out["higher_is_better"] = directions
    out["tolerance"] = tolerances
    dup = out.duplicated(_KEY, keep=False)
    if dup.any():
        lines = ", ".join(str(i + 2) for i in out.index[dup])
        raise _fail(source, f"duplicate rows for the same method, dataset, split and metric "
                    f"(lines {lines})", "keep one row per combination")
    return out.reset_index(drop=True)


def load_baseline(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a baseline CSV; every problem raises :class:`BaselineError`."""
    p = Path(path)
    if not p.is_file():
        raise _fail(str(p), "file not found" if not p.exists() else "not a file",
                    f"pass the right path, or {_HOW_TO_WRITE}")
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _fail(str(p), f"not a readable CSV file ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'empty'})",
                    _HOW_TO_WRITE) from None
    return validate_baseline(raw, str(p))


# -- checking -----------------------------------------------------------------------------------


@dataclass
class GateRow:
    method: str
    dataset: str
    split: str
    metric: str
    baseline: float
    current: float  # NaN when missing
    delta: float  # current - baseline (raw, not direction-adjusted); NaN when missing
    tolerance: float
    status: GateStatus


@dataclass
class GateResult:
    """Outcome of :func:`check_against_baseline`; ``missing`` rows count as failures."""

    rows: list[GateRow] = field(default_factory=list)

    def _with(self, status: str) -> list[GateRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def regressions(self) -> list[GateRow]:
        return self._with("regressed")

    @property
    def missing(self) -> list[GateRow]:
        return self._with("missing")

    @property
    def improvements(self) -> list[GateRow]:
        return self._with("improved")

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.missing

    @property
    def exit_code(self) -> int:
        """0 when every baseline row is ok or improved; 1 on any regression or missing row."""
        return 0 if self.passed else 1

    def frame(self) -> pd.DataFrame:
        columns = list(GateRow.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.rows], columns=columns)

    def summary(self) -> str:
        counts = {s: len(self._with(s)) for s in ("ok", "improved", "regressed", "missing")}
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def _check_overrides(overrides: dict[str, float] | None) -> dict[str, float]:
    out = {}
    for name, tol in (overrides or {}).items():
        if name not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UnknownNameError(f"tolerance override for unknown metric '{name}'{hint}: "
                                   "use a name from bayesbench.metrics.METRICS")
        try:
            tol = float(tol)
        except (TypeError, ValueError):
            tol = -1.0
        if not tol >= 0:
            raise ConfigError(f"tolerance override {name}={tol} must be a number ≥ 0")
        out[name] = tol
    return out


def check_against_baseline(
    store_or_aggregates: ResultStore | pd.DataFrame | str | os.PathLike[str],
    baseline: pd.DataFrame | str | os.PathLike[str],
    tolerance_overrides: dict[str, float] | None = None,
    quick: bool | None = None,
) -> GateResult:
    """Compare current means with every baseline row (see the module docstring).

    ``baseline`` is a path or a frame (validated either way); ``quick`` selects quick or full
    runs when reading a store (default: full runs when any exist). A baseline row with no
    current value is ``missing`` and fails the gate.
    """
    overrides = _check_overrides(tolerance_overrides)
    base = (load_baseline(baseline) if not isinstance(baseline, pd.DataFrame)
            else validate_baseline(baseline.astype(str).replace({"nan": ""}), "<frame>"))
    agg = _as_aggregates(store_or_aggregates, quick)
    current = {
        (str(r.label), str(r.dataset), r.split, r.metric): float(r.mean)
        for r in agg.itertuples(index=False)
    }
    rows = []
    for b in base.itertuples(index=False):
        info = METRICS[b.metric]
        if b.metric in overrides:
            tol = overrides[b.metric]
        elif not math.isnan(b.tolerance):
            tol = float(b.tolerance)
        else:
            tol = info.tolerance
        cur = current.get((b.method, b.dataset, b.split, b.metric), math.nan)
        if math.isnan(cur):
            rows.append(GateRow(b.method, b.dataset, b.split, b.metric, b.value, math.nan,
                                math.nan, tol, "missing"))
            continue
        delta = cur - b.value
        better = delta if info.higher_is_better else -delta
        slack = tol + 1e-12 * max(1.0, abs(b.value))  # float noise is never a regression
        status: GateStatus = ("regressed" if better < -slack
                              else "improved" if better > slack else "ok")
        rows.append(GateRow(b.method, b.dataset, b.split, b.metric, b.value, cur, delta, tol,
                            status))
    return GateResult(rows)
