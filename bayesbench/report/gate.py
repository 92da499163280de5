"""Regression gate: compare current aggregates against a baseline CSV, direction-aware.

The baseline
------------
Columns ``method,dataset,split,metric,value,higher_is_better,tolerance``, then
``quick,seeds,ece_bins,config_hash,seed_values,cpu``. ``method`` holds the method *label* (the
name a run is reported under), ``value`` the mean over seeds. Only gated metrics
(``MetricInfo.gated``) on the splits ``test``, ``shift_mean`` and ``ood_mean`` are written,
which keeps the file small and meaningful. The last six columns say which runs a (method,
dataset)'s values came from:

* ``quick`` – ``True`` for quick-budget runs, ``False`` for full runs (one kind per file);
* ``seeds`` – the base seeds averaged, space-separated (``0 1 2``);
* ``ece_bins`` – those runs' ``evaluation.ece_bins``;
* ``config_hash`` – those runs' :attr:`RunSpec.config_hash` (every setting but the seed);
* ``seed_values`` – the per-seed values behind ``value``, space-separated in the order of
  ``seeds`` (``nan`` where a seed has none), for the significance test below;
* ``cpu`` – the CPU model(s) those runs recorded, ``; ``-separated (empty for runs that
  recorded none).

A cell is empty where the source did not know it (a baseline written from aggregates has no
seeds). A baseline without these columns (the older format) still loads; its kind and seeds
are then unknown, and the gate says so.

Which runs are checked
----------------------
* **Kind.** The baseline's: ``quick=True/False`` (``--quick/--full``) must agree with it, else
  :class:`BaselineError` (exit 2). For an older baseline, ``quick`` or, by default, full runs
  when the store has any.
* **Latest run.** Per (label, dataset, seed) of that kind, the latest stored run, complete or
  failed (:func:`bayesbench.report.aggregate.latest_runs`: greatest ``finished_at``, ties by
  the greater key), so a failed rerun under a new key (a method version bump, a changed
  setting) is never hidden by the older complete run it superseded.
* **Seeds.** Every seed the baseline averaged must have runs of that kind in the store, else
  :class:`BaselineError` (exit 2): a mean over seeds {0, 1, 2} against one over {0} is not
  like for like. Current means are taken over the baseline's seeds of each (method, dataset)
  only; further seeds in the store are left out, with a note. An older baseline is compared
  with the mean over every seed.
* **Binning.** Runs whose ``ece_bins`` differ from the baseline's make the binned metrics
  (ece, mce, adaptive_ece) incomparable: :class:`BaselineError` (exit 2). A different
  ``config_hash`` is only noted: a changed setting or method version is what the gate is for.
* **CPU.** Runs on another CPU model than the baseline's are gated all the same, with a note:
  float rounding differs between CPU types and training amplifies it into a different model
  of the same quality, so on one seed values move beyond the tolerances with no code change
  (measured: a quick baseline of an AMD EPYC against an Intel Xeon's quick suite failed 30 of
  2,698 rows; the reverse, 11). The note says to write the baseline on the machine type that
  checks against it, or to check 3 or more seeds (then only significant changes fail).

Verdicts
--------
A current mean ``c`` against a baseline ``b`` with tolerance ``t`` and ``better = c - b`` for
higher-is-better metrics (``b - c`` otherwise):

* ``failed`` if the latest run of any seed of the row's (method, dataset) failed; the error is
  in the row's ``detail``;
* ``missing`` if a baseline seed has no complete run or there is no (finite) current value;
* ``regressed`` if ``better < -t``; ``improved`` if ``better > t``; else ``ok``;
* **significance** (as ``asv compare`` does): when the baseline row has per-seed values (and
  they average to its ``value``: a hand-edited value drops them) and both sides have values
  for 3 or more shared seeds, a change beyond the tolerance counts only if a two-sided
  paired t-test over those seeds (same seed = same data split) gives p < 0.05; otherwise the
  row is ``ok`` with ``mark`` ``~`` (a change within seed noise). With fewer seeds, or a
  baseline without per-seed values (the older format), the tolerance alone decides, and
  ``p_value`` is NaN.

``failed``, ``missing`` and ``regressed`` fail the gate (exit code 1): a method or metric that
breaks or silently disappears must not pass CI. Rows in the current results without a
baseline row are ignored. Tolerance precedence: an override by metric name > the row's
``tolerance`` column (when not empty) > the metric's default in
:data:`bayesbench.metrics.METRICS`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from bayesbench.errors import BaselineError, ConfigError, StoreError, UnknownNameError
from bayesbench.metrics import METRICS
from bayesbench.report.aggregate import (
    AGGREGATE_COLUMNS,
    OOD_MEAN,
    SHIFT_MEAN,
    TIDY_COLUMNS,
    add_summary_splits,
    aggregate,
    latest_runs,
    select_runs,
)
from bayesbench.report.files import atomic_write
from bayesbench.report.stats import ALPHA, paired_t_pvalue
from bayesbench.results import TEST_SPLIT
from bayesbench.store import ResultStore

BASELINE_COLUMNS = ["method", "dataset", "split", "metric", "value", "higher_is_better",
                    "tolerance"]
# Where the values came from; optional on reading (older baselines lack them).
PROVENANCE_COLUMNS = ["quick", "seeds", "ece_bins", "config_hash", "seed_values", "cpu"]
CPU_SEPARATOR = "; "  # CPU model names hold spaces (and may hold commas)
SIGNIFICANCE_MIN_SEEDS = 3  # below this on either side the tolerance alone decides
GATED_SPLITS = (TEST_SPLIT, SHIFT_MEAN, OOD_MEAN)
BINNED_METRICS = frozenset({"ece", "mce", "adaptive_ece"})
_KEY = ["method", "dataset", "split", "metric"]
_PAIR = ["method", "dataset"]
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_HOW_TO_WRITE = ("write one from results you trust with "
                 "`bayesbench report --write-baseline PATH`")

GateStatus = Literal["ok", "regressed", "improved", "missing", "failed"]
_FAILING = ("regressed", "missing", "failed")


def _kind(quick: bool) -> str:
    return "quick" if quick else "full"


def _flag(quick: bool) -> str:
    return "--quick" if quick else "--full"


def _listed(values: Any, sep: str = ", ") -> str:
    return sep.join(str(v) for v in sorted(values))


# -- the current results: one kind of runs from a store, a tidy frame or aggregates ------------


@dataclass
class _Current:
    """The runs the gate reads. ``tidy`` is None when aggregates were given; ``runs`` (the
    latest run per (label, dataset, seed), complete or failed) only comes from a store."""

    quick: bool
    where: str
    tidy: pd.DataFrame | None = None
    agg: pd.DataFrame | None = None
    runs: pd.DataFrame | None = None
    all_runs: pd.DataFrame | None = None  # every stored run, both kinds (for messages)
    ece_bins: dict[str, Any] = field(default_factory=dict)  # config_hash -> ece_bins

    @property
    def seeds(self) -> set[int] | None:
        """Seeds with a run of this kind (failed ones included), None when unknown."""
        if self.runs is not None:
            return {int(s) for s in self.runs["seed"]}
        return None if self.tidy is None else {int(s) for s in self.tidy["seed"]}

    def has(self) -> str:
        """What the source holds, e.g. '4 full runs over seeds 0, 1'."""
        frame = self.all_runs if self.all_runs is not None else self.tidy
        if frame is None or frame.empty:
            return "no runs"
        runs = frame.drop_duplicates("key")
        parts = []
        for quick in (False, True):
            sub = runs[runs["quick"].astype(bool) == quick]
            if len(sub):
                parts.append(f"{len(sub)} {_kind(quick)} run{'s' * (len(sub) != 1)} over "
                             f"seeds {_listed(set(sub['seed']))}")
        return " and ".join(parts)


def _default_kind(metrics: pd.DataFrame, runs: pd.DataFrame) -> bool:
    """The report's default: full runs when any complete one exists, else quick; with no
    complete run at all, the same rule over the stored (failed) runs."""
    frame = metrics if len(metrics) else runs
    return not bool((~frame["quick"].astype(bool)).any()) if len(frame) else False


def _ece_bins_by_config(store: ResultStore, runs: pd.DataFrame) -> dict[str, Any]:
    """``evaluation.ece_bins`` per config hash, read from one stored spec per hash (the hash
    covers every setting but the seed, so one spec speaks for all its runs)."""
    out: dict[str, Any] = {}
    for config_hash, key in runs.drop_duplicates("config_hash")[["config_hash", "key"]] \
            .itertuples(index=False):
        run = store.get(key)
        evaluation = ((run.spec if run else None) or {}).get("evaluation") or {}
        out[config_hash] = evaluation.get("ece_bins")
    return out


def _load_current(source: ResultStore | pd.DataFrame | str | os.PathLike[str],
                  quick: bool | None) -> _Current:
    """The current results of one kind (``quick=None``: the report's default)."""
    if isinstance(source, pd.DataFrame):
        if {"mean", "n"} <= set(source.columns):
            # aggregate() holds one kind; the caller checks it against the one wanted
            kinds = {bool(q) for q in source["quick"]} if "quick" in source.columns else set()
            used = kinds.pop() if len(kinds) == 1 else bool(quick)
            agg = source[source["quick"].astype(bool) == used] if kinds else source
            return _Current(used, "the given aggregates", agg=agg)
        if set(TIDY_COLUMNS) <= set(source.columns):
            tidy, used = select_runs(source, quick)
            return _Current(used, "the given results", tidy=tidy, all_runs=source)
        raise TypeError("expected aggregates or a tidy metrics frame")
    store = source if isinstance(source, ResultStore) else ResultStore.open_existing(source)
    metrics, all_runs = store.metrics_frame(), store.runs_frame()
    used = _default_kind(metrics, all_runs) if quick is None else bool(quick)
    tidy, used = select_runs(metrics, used)
    runs = latest_runs(all_runs[all_runs["quick"] == used])
    # config hash of every run we may read values from (tidy may hold a superseded run)
    read = all_runs[all_runs["key"].isin(set(runs["key"]) | set(tidy["key"]))]
    return _Current(used, f"store {store.path}", tidy=tidy, runs=runs, all_runs=all_runs,
                    ece_bins=_ece_bins_by_config(store, read))


def _no_runs_error(current: _Current) -> StoreError:
    mode = _kind(current.quick)
    other = " (or choose the other run mode)" if current.has() != "no runs" else ""
    return StoreError(f"no complete {mode} runs in {current.where.removeprefix('store ')}: "
                      f"run `bayesbench run` first{other}")


def _aggregate(tidy: pd.DataFrame) -> pd.DataFrame:
    return aggregate(tidy) if len(tidy) else pd.DataFrame(columns=AGGREGATE_COLUMNS)


# -- writing and reading the baseline --------------------------------------------------------


def _joined(values: Any) -> str:
    """Sorted distinct values, space-separated; empty when there are none."""
    return " ".join(str(v) for v in sorted({v for v in values if v is not None}))


def baseline_frame(aggregates_or_store: ResultStore | pd.DataFrame | str | os.PathLike[str],
                   quick: bool | None = None) -> pd.DataFrame:
    """The baseline rows (BASELINE_COLUMNS + PROVENANCE_COLUMNS) for gated metrics on the
    gated splits; the provenance columns are empty where the source does not know them."""
    current = _load_current(aggregates_or_store, quick)
    if current.tidy is not None and current.tidy.empty:
        raise _no_runs_error(current)
    agg = current.agg if current.tidy is None else aggregate(current.tidy)
    gated = {name for name, info in METRICS.items() if info.gated}
    rows = agg[agg["split"].isin(GATED_SPLITS) & agg["metric"].isin(gated) & agg["mean"].notna()]
    pairs = list(zip(rows["label"].astype(str), rows["dataset"].astype(str)))
    seeds: dict[tuple[str, str], str] = {}
    hashes: dict[tuple[str, str], str] = {}
    bins: dict[tuple[str, str], str] = {}
    cpus: dict[tuple[str, str], str] = {}
    per_seed: list[str] = [""] * len(rows)
    if current.tidy is not None:
        table = _per_seed_table(current.tidy)
        seeds_of = {(str(lab), str(ds)): sorted({int(x) for x in g["seed"]}) for (lab, ds), g
                    in current.tidy.drop_duplicates("key").groupby(["label", "dataset"])}
        per_seed = [_seed_text(table, (lab, ds, sp, me), seeds_of.get((lab, ds), []))
                    for (lab, ds), sp, me in zip(pairs, rows["split"], rows["metric"])]
        runs = current.tidy.drop_duplicates("key")
        if current.all_runs is not None and "config_hash" in current.all_runs.columns:
            known = [c for c in ("config_hash", "cpu") if c in current.all_runs.columns]
            runs = runs.merge(current.all_runs[["key", *known]], on="key", how="left")
        for (label, dataset), group in runs.groupby(["label", "dataset"]):
            pair = (str(label), str(dataset))
            seeds[pair] = _joined(int(s) for s in group["seed"])
            if "config_hash" in group.columns:
                hashes[pair] = _joined(group["config_hash"].dropna())
                bins[pair] = _joined(current.ece_bins.get(h) for h in group["config_hash"])
            if "cpu" in group.columns:
                cpus[pair] = CPU_SEPARATOR.join(sorted(set(group["cpu"].dropna())))
    out = pd.DataFrame({
        "method": [p[0] for p in pairs],
        "dataset": [p[1] for p in pairs],
        "split": rows["split"].to_numpy(),
        "metric": rows["metric"].to_numpy(),
        "value": rows["mean"].astype(float).to_numpy(),
        "higher_is_better": [METRICS[m].higher_is_better for m in rows["metric"]],
        "tolerance": [METRICS[m].tolerance for m in rows["metric"]],
        "quick": current.quick,
        "seeds": [seeds.get(p, "") for p in pairs],
        "ece_bins": [bins.get(p, "") for p in pairs],
        "config_hash": [hashes.get(p, "") for p in pairs],
        "seed_values": per_seed,
        "cpu": [cpus.get(p, "") for p in pairs],
    })
    return out.sort_values(_KEY).reset_index(drop=True)


def _per_seed_table(tidy: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[int, float]]:
    """(label, dataset, split, metric) -> {seed: value} of the gated splits, derived summary
    splits included."""
    full = add_summary_splits(tidy)
    full = full[full["split"].isin(GATED_SPLITS)]
    out: dict[tuple[str, str, str, str], dict[int, float]] = {}
    for lab, ds, sp, me, seed, value in zip(full["label"].astype(str),
                                             full["dataset"].astype(str), full["split"],
                                             full["metric"], full["seed"],
                                             full["value"].astype(float)):
        out.setdefault((lab, ds, sp, me), {})[int(seed)] = value
    return out


def _seed_text(table: dict, key: tuple[str, str, str, str], seeds: list[int]) -> str:
    """Per-seed values in seed order, full precision ('nan' for a seed without one)."""
    values = table.get(key, {})
    return " ".join(repr(float(values.get(s, math.nan))) for s in seeds)


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


def _parse_list(text: str, cast: Callable[[str], Any]) -> tuple | None:
    """'0 1 2' (or '0,1,2', '0;1;2') -> (0, 1, 2); '' -> None (unknown)."""
    items = [t for t in re.split(r"[\s,;]+", text) if t]
    return tuple(sorted({cast(t) for t in items})) if items else None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _provenance(raw: pd.DataFrame, source: str) -> dict[str, list]:
    """Typed provenance columns (None = unknown) and their consistency checks."""
    out: dict[str, list] = {c: [] for c in PROVENANCE_COLUMNS}
    parsers = {"seeds": (int, "integers", "0 1 2"), "ece_bins": (_positive_int,
               "positive integers", "15"), "config_hash": (str, "", "")}
    for i, row in enumerate(raw.itertuples(index=False)):
        where = f"row {i + 1} (line {i + 2})"
        text = row.quick.lower() if "quick" in raw.columns else ""
        # seed_values are parsed below, once the seeds are known
        if text and text not in _TRUE | _FALSE:
            raise _fail(source, f"{where}: quick '{row.quick}' is not a boolean",
                        "write True (quick runs) or False (full runs), or leave it empty")
        out["quick"].append(None if not text else text in _TRUE)
        for col, (cast, what, example) in parsers.items():
            cell = getattr(row, col) if col in raw.columns else ""
            try:
                out[col].append(_parse_list(cell, cast))
            except ValueError:
                raise _fail(source, f"{where}: {col} '{cell}' are not {what}",
                            f"write them separated by spaces, e.g. {example}, or leave it "
                            "empty") from None
    kinds = {q for q in out["quick"] if q is not None}
    if len(kinds) > 1:
        lines = [str(i + 2) for i, q in enumerate(out["quick"]) if q is True]
        raise _fail(source, f"it mixes quick and full rows (quick on lines "
                    f"{', '.join(lines[:5])}{' ...' if len(lines) > 5 else ''})",
                    "a baseline comes from one kind of runs; write it again with `bayesbench "
                    "report --quick|--full --write-baseline PATH`")
    for i, cell in enumerate(raw["seed_values"] if "seed_values" in raw.columns
                             else [""] * len(raw)):
        where = f"row {i + 1} (line {i + 2})"
        items = [t for t in re.split(r"[\s,;]+", cell) if t]
        try:
            values = tuple(float(t) for t in items) if items else None
        except ValueError:
            raise _fail(source, f"{where}: seed_values '{cell}' are not numbers",
                        "write the per-seed values separated by spaces in the order of "
                        "seeds, or leave it empty") from None
        seeds = out["seeds"][i]
        if values is not None and (seeds is None or len(values) != len(seeds)):
            raise _fail(source, f"{where}: {len(values)} seed_values for "
                        f"{len(seeds) if seeds else 'no'} seeds",
                        "give one value per seed, in the order of seeds, or leave it empty")
        out["seed_values"].append(values)
    for cell in raw["cpu"] if "cpu" in raw.columns else [""] * len(raw):
        models = tuple(sorted({m.strip() for m in cell.split(";") if m.strip()}))
        out["cpu"].append(models or None)
    seen: dict[tuple[str, str], tuple | None] = {}
    for i, (method, dataset, seeds) in enumerate(zip(raw["method"], raw["dataset"],
                                                     out["seeds"])):
        if seen.setdefault((method, dataset), seeds) != seeds:
            raise _fail(source, f"row {i + 1} (line {i + 2}) gives {method} on {dataset} "
                        f"other seeds than an earlier row", "a (method, dataset)'s values "
                        "come from one set of runs: give its rows the same seeds")
    return out


def validate_baseline(raw: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Check a baseline read with every cell as a string; returns it typed (value float,
    higher_is_better bool, tolerance float with NaN = use the metric default; quick a bool
    and seeds, ece_bins, config_hash tuples, each None where unknown). The frame's
    ``attrs["source"]`` names where it came from."""
    missing = [c for c in BASELINE_COLUMNS if c not in raw.columns]
    if missing:
        raise _fail(source, f"missing column(s) {', '.join(missing)} "
                    f"(found: {', '.join(map(str, raw.columns)) or 'none'})",
                    f"the header must start {','.join(BASELINE_COLUMNS)}; {_HOW_TO_WRITE}")
    if raw.empty:
        raise _fail(source, "no rows", f"a baseline must gate something; {_HOW_TO_WRITE}")
    columns = BASELINE_COLUMNS + [c for c in PROVENANCE_COLUMNS if c in raw.columns]
    raw = raw[columns].astype(str).apply(lambda col: col.str.strip())
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
    provenance = _provenance(raw, source)
    out = raw[_KEY].copy()
    out["value"] = values
    out["higher_is_better"] = directions
    out["tolerance"] = tolerances
    for col in PROVENANCE_COLUMNS:
        out[col] = pd.Series(provenance[col], index=out.index, dtype=object)
    dup = out.duplicated(_KEY, keep=False)
    if dup.any():
        lines = ", ".join(str(i + 2) for i in out.index[dup])
        raise _fail(source, f"duplicate rows for the same method, dataset, split and metric "
                    f"(lines {lines})", "keep one row per combination")
    out = out.reset_index(drop=True)
    out.attrs["source"] = source
    return out


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


def _as_baseline(baseline: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    """A validated baseline from a path, a frame :func:`validate_baseline` returned, or a
    frame of the CSV's columns (validated here)."""
    if not isinstance(baseline, pd.DataFrame):
        return load_baseline(baseline)
    if "source" in baseline.attrs and set(PROVENANCE_COLUMNS) <= set(baseline.columns):
        return baseline

    def text(cell: Any, sep: str) -> str:
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            return ""
        return sep.join(map(str, cell)) if isinstance(cell, tuple) else str(cell)

    return validate_baseline(baseline.apply(lambda col: col.map(
        lambda cell: text(cell, CPU_SEPARATOR if col.name == "cpu" else " "))), "<frame>")


# -- checking -----------------------------------------------------------------------------------


@dataclass
class GateRow:
    method: str
    dataset: str
    split: str
    metric: str
    baseline: float
    current: float  # NaN when missing or failed
    delta: float  # current - baseline (raw, not direction-adjusted); NaN when missing or failed
    tolerance: float
    status: GateStatus
    detail: str = ""  # why a row is failed or missing (the runs' errors, the seeds lacking)
    p_value: float = math.nan  # paired t-test over shared seeds; NaN when not tested
    mark: str = ""  # "~": beyond the tolerance but not significant (counted as ok)


@dataclass
class GateResult:
    """Outcome of :func:`check_against_baseline`; ``failed`` and ``missing`` rows count as
    failures. ``quick`` is the kind of runs checked, ``notes`` what the caller should know
    about the comparison (an older baseline, seeds left out, changed settings)."""

    rows: list[GateRow] = field(default_factory=list)
    quick: bool | None = None
    notes: list[str] = field(default_factory=list)

    def _with(self, status: str) -> list[GateRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def regressions(self) -> list[GateRow]:
        return self._with("regressed")

    @property
    def missing(self) -> list[GateRow]:
        return self._with("missing")

    @property
    def failed(self) -> list[GateRow]:
        return self._with("failed")

    @property
    def improvements(self) -> list[GateRow]:
        return self._with("improved")

    @property
    def passed(self) -> bool:
        return not any(r.status in _FAILING for r in self.rows)

    @property
    def exit_code(self) -> int:
        """0 when every baseline row is ok or improved; 1 on any regressed, missing or failed
        row."""
        return 0 if self.passed else 1

    def frame(self) -> pd.DataFrame:
        columns = list(GateRow.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.rows], columns=columns)

    def summary(self) -> str:
        counts = {s: len(self._with(s))
                  for s in ("ok", "improved", "regressed", "missing", "failed")}
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


def _describe_baseline(source: str, quick: bool | None, seeds: set[int]) -> str:
    """'baseline reports/baseline.csv was written from quick runs (seeds 0)'."""
    kind = "runs of an unrecorded kind" if quick is None else f"{_kind(quick)} runs"
    over = f" (seeds {_listed(seeds)})" if seeds else ""
    return f"baseline {source} was written from {kind}{over}"


def _write_fix(source: str, quick: bool) -> str:
    return f"write a {_kind(quick)} baseline with `bayesbench report {_flag(quick)} " \
           f"--write-baseline {source}`"


def _run_cmd(quick: bool) -> str:
    return "bayesbench run --quick" if quick else "bayesbench run"


def _failures(runs: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """Per (label, dataset): the errors of its seeds whose latest run failed."""
    if runs is None:
        return {}
    out: dict[tuple[str, str], list[str]] = {}
    for r in runs[runs["status"] == "failed"].sort_values(["label", "dataset", "seed"]) \
            .itertuples(index=False):
        when = f", finished {r.finished_at}" if isinstance(r.finished_at, str) \
            and r.finished_at else ""
        error = r.error.split("\n", 1)[0] if isinstance(r.error, str) and r.error \
            else "no error recorded"  # the summary line; `bayesbench show KEY` has the traceback
        out.setdefault((str(r.label), str(r.dataset)), []).append(
            f"seed {r.seed}: run {r.key}{when} failed: {error}")
    return {pair: "; ".join(errors) for pair, errors in out.items()}


def check_against_baseline(
    store_or_aggregates: ResultStore | pd.DataFrame | str | os.PathLike[str],
    baseline: pd.DataFrame | str | os.PathLike[str],
    tolerance_overrides: dict[str, float] | None = None,
    quick: bool | None = None,
) -> GateResult:
    """Compare current means with every baseline row (see the module docstring).

    ``baseline`` is a path or a frame (validated either way). ``quick`` selects quick or full
    runs; by default the baseline's kind (for an older baseline: full runs when the store has
    any). A baseline of the other kind, or over seeds the store has no runs for, raises
    :class:`BaselineError`. Failed runs are seen only when reading a store; seeds only when
    reading a store or a tidy frame.
    """
    overrides = _check_overrides(tolerance_overrides)
    base = _as_baseline(baseline)
    source = base.attrs.get("source", "<frame>")
    kinds = {q for q in base["quick"] if q is not None}
    kind = kinds.pop() if kinds else None
    base_seeds: set[int] = {s for seeds in base["seeds"] if seeds for s in seeds}
    described = _describe_baseline(source, kind, base_seeds)
    if kind is not None and quick is not None and bool(quick) != kind:
        raise BaselineError(
            f"{described}, but {_kind(quick)} runs were asked for ({_flag(quick)}): pass "
            f"{_flag(kind)} (or neither flag, to follow the baseline), or "
            f"{_write_fix(source, quick)}")
    wanted = kind if quick is None else bool(quick)
    current = _load_current(store_or_aggregates, wanted)
    notes: list[str] = []
    if current.agg is not None:
        if wanted is not None and current.quick != wanted:
            raise BaselineError(f"{described}, but {current.where} hold "
                                f"{_kind(current.quick)} runs: pass {_kind(wanted)} "
                                f"aggregates, or {_write_fix(source, current.quick)}")
    elif (current.tidy.empty if current.runs is None else current.runs.empty):
        if kind is None:
            raise _no_runs_error(current)
        raise BaselineError(
            f"{described}, but {current.where} has no {_kind(kind)} runs (it has "
            f"{current.has()}): run `{_run_cmd(kind)}` first, or "
            f"{_write_fix(source, not kind)}")
    if kind is None:
        how = ("the default; pass --quick/--full to choose, or" if quick is None
               else f"as {_flag(current.quick)} asks;")
        notes.append(f"baseline {source} does not record whether it was written from quick or "
                     f"full runs (an older format): checked against the "
                     f"{_kind(current.quick)} runs, {how} write it again with `bayesbench "
                     f"report {_flag(current.quick)} --write-baseline {source}` to record its "
                     "kind and seeds")
    have = current.seeds
    if base_seeds and have is not None and not base_seeds <= have:
        lacking = base_seeds - have
        raise BaselineError(
            f"{described}, but {current.where} has {_kind(current.quick)} runs for seeds "
            f"{_listed(have)} only (none for {_listed(lacking)}): means over other seeds "
            f"are not like for like; run them (`{_run_cmd(current.quick)} --seeds "
            f"{_listed(base_seeds, ',')}`), or write a baseline from the seeds you run "
            f"(`bayesbench report {_flag(current.quick)} --write-baseline {source}`)")
    if base_seeds and have and have - base_seeds:
        notes.append(f"{current.where} also has {_kind(current.quick)} runs for seed(s) "
                     f"{_listed(have - base_seeds)}, which baseline {source} does not "
                     f"average: current means are taken over the baseline's seeds "
                     f"{_listed(base_seeds)} only")
    elif not base_seeds and kind is not None and have:
        notes.append(f"baseline {source} does not record its seeds: compared with the mean "
                     f"over every seed of the {_kind(current.quick)} runs "
                     f"({_listed(have)})")

    seeds_of = {(m, d): set(s) for m, d, s in zip(base["method"], base["dataset"],
                                                   base["seeds"]) if s}
    complete: dict[tuple[str, str], set[int]] = {}
    hashes: dict[tuple[str, str], set[str]] = {}
    agg = current.agg
    if current.tidy is not None:
        tidy = current.tidy
        pair = list(zip(tidy["label"].astype(str), tidy["dataset"].astype(str)))
        keep = [p not in seeds_of or int(s) in seeds_of[p] for p, s in zip(pair, tidy["seed"])]
        tidy = tidy[keep]
        for (label, dataset), group in tidy.drop_duplicates("key").groupby(["label", "dataset"]):
            complete[(str(label), str(dataset))] = {int(s) for s in group["seed"]}
        if current.runs is not None and len(tidy):
            keyed = tidy.drop_duplicates("key").merge(
                current.all_runs[["key", "config_hash"]], on="key", how="left")
            for (label, dataset), group in keyed.groupby(["label", "dataset"]):
                hashes[(str(label), str(dataset))] = set(group["config_hash"].dropna())
        agg = _aggregate(tidy)

    # binning and settings of the runs compared, against the baseline's
    bins_differ, settings_differ = [], []
    binned = {(m, d) for m, d, metric in zip(base["method"], base["dataset"], base["metric"])
              if metric in BINNED_METRICS}
    for (method, dataset), rows in base.groupby(_PAIR, sort=True):
        now = hashes.get((method, dataset))
        if not now:
            continue
        base_bins = {b for v in rows["ece_bins"] if v for b in v}
        now_bins = {current.ece_bins.get(h) for h in now} - {None}
        if base_bins and now_bins and base_bins != now_bins and (method, dataset) in binned:
            bins_differ.append((method, dataset, base_bins, now_bins))
        base_hashes = {h for v in rows["config_hash"] if v for h in v}
        if base_hashes and base_hashes != now:
            settings_differ.append((method, dataset, base_hashes, now))
    if bins_differ:
        method, dataset, b, c = bins_differ[0]
        more = f" (and {len(bins_differ) - 1} more)" if len(bins_differ) > 1 else ""
        raise BaselineError(
            f"baseline {source} holds ECE over {_listed(b, '/')} bins but the "
            f"{_kind(current.quick)} runs of {method} on {dataset}{more} use "
            f"{_listed(c, '/')} (evaluation.ece_bins): ece, mce and adaptive_ece are not "
            f"comparable; evaluate with evaluation.ece_bins: {_listed(b, '/')}, or "
            f"{_write_fix(source, current.quick)}")
    if settings_differ:
        method, dataset, b, c = settings_differ[0]
        notes.append(f"settings changed since the baseline for {len(settings_differ)} "
                     f"(method, dataset) pair(s), e.g. {method} on {dataset} (config "
                     f"{_listed(b, '/')} → {_listed(c, '/')}): a setting or a method "
                     f"version changed; gated all the same")

    cpu_note = _cpu_note(base, current, source)
    if cpu_note:
        notes.append(cpu_note)

    failures = _failures(current.runs)
    per_seed = _per_seed_table(tidy) if current.tidy is not None and len(tidy) else {}
    dropped = 0
    values = {
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
        pair = (b.method, b.dataset)
        lacking = set(b.seeds or ()) - complete.get(pair, set())
        cur = values.get((b.method, b.dataset, b.split, b.metric), math.nan)
        if pair in failures:
            status, detail = "failed", failures[pair]
        elif lacking and current.tidy is not None:
            status, detail = "missing", f"no complete run for seed(s) {_listed(lacking)}"
        elif math.isnan(cur):
            status, detail = "missing", "no current value"
        else:
            delta = cur - b.value
            better = delta if info.higher_is_better else -delta
            slack = tol + 1e-12 * max(1.0, abs(b.value))  # float noise is never a regression
            status = ("regressed" if better < -slack else "improved" if better > slack
                      else "ok")
            p_value, usable = _significance(b, per_seed.get((b.method, b.dataset, b.split,
                                                              b.metric), {}))
            dropped += not usable
            mark = ""
            if status != "ok" and p_value >= ALPHA:  # NaN (no test) compares False
                status, mark = "ok", "~"
            rows.append(GateRow(b.method, b.dataset, b.split, b.metric, b.value, cur, delta,
                                tol, status, p_value=p_value, mark=mark))
            continue
        rows.append(GateRow(b.method, b.dataset, b.split, b.metric, b.value, math.nan,
                            math.nan, tol, status, detail))
    if dropped:
        notes.append(f"{dropped} baseline row(s) of {source} have per-seed values that do not "
                     "average to their value (edited by hand?): those rows are gated on the "
                     "tolerance alone")
    return GateResult(rows, current.quick, notes)


def _cpu_note(base: pd.DataFrame, current: _Current, source: str) -> str | None:
    """A note when the runs checked ran on other CPU models than the baseline's (both known)."""
    was = {m for models in base["cpu"] if models for m in models}
    runs = current.runs
    if not was or runs is None or "cpu" not in runs.columns:
        return None
    now = set(runs["cpu"].dropna())
    if not now or now == was:
        return None
    return (f"baseline {source} was written from runs on {_listed(was, ' / ')}, but these "
            f"{_kind(current.quick)} runs ran on {_listed(now, ' / ')}: float rounding differs "
            "between CPU types and training turns it into a different model of the same "
            "quality, so values can move beyond the tolerances with no change of code; write "
            "the baseline on the machine type that checks against it, or check 3 or more "
            "seeds (then only significant changes fail)")


def _significance(row: Any, current: dict[int, float]) -> tuple[float, bool]:
    """(p-value of the paired t-test of the current against the baseline per-seed values over
    the seeds both have, NaN when either side has fewer than
    :data:`SIGNIFICANCE_MIN_SEEDS`; whether the row's per-seed values were usable)."""
    seeds, base = row.seeds, row.seed_values
    if not seeds or not base:
        return math.nan, True
    finite = [v for v in base if math.isfinite(v)]
    if not finite or not math.isclose(sum(finite) / len(finite), row.value, rel_tol=1e-9,
                                      abs_tol=1e-12):
        return math.nan, False
    pairs = [(current[s], b) for s, b in zip(seeds, base)
             if s in current and math.isfinite(b) and math.isfinite(current[s])]
    if len(pairs) < SIGNIFICANCE_MIN_SEEDS:
        return math.nan, True
    return paired_t_pvalue([c for c, _ in pairs], [b for _, b in pairs]), True
