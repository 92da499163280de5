"""Aggregate tidy metric values over seeds.

Input is the tidy frame of :meth:`ResultStore.metrics_frame` (key, label, method, dataset,
seed, quick, split, metric, value). Besides the stored splits, each run gets derived summary
splits before averaging over seeds:

* ``shift_mean``   – mean over every shift kind and severity of the run;
* ``shift/<kind>`` – mean over the severities of one shift kind;
* ``severity/<s>`` – mean over the shift kinds at severity ``s``;
* ``ood_mean``     – mean over the run's OOD sets.

Then, per (label, dataset, split, metric): ``mean``, ``std`` (sample std, ddof = 1; NaN when
only one seed is available: a spread cannot be estimated from one value) and ``n`` (number of
seeds with a value).

Quick (smoke-test) runs and full runs are never mixed: see :func:`select_runs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from bayesbench.errors import StoreError

if TYPE_CHECKING:
    from bayesbench.store import ResultStore

SHIFT_MEAN = "shift_mean"
OOD_MEAN = "ood_mean"

TIDY_COLUMNS = ["key", "label", "method", "dataset", "seed", "quick", "split", "metric", "value"]
AGGREGATE_COLUMNS = ["label", "method", "dataset", "quick", "split", "metric", "mean", "std", "n"]

_SHIFT_RE = r"^shift/(?P<kind>[^/]+)/(?P<severity>\d+)$"


RUN_IDENTITY = ["label", "dataset", "seed"]


def extract_unique(values: pd.Series, pattern: str) -> pd.DataFrame:
    """``values.str.extract(pattern)``, matching each distinct value once (a store has a few
    hundred split names but one row per run × split × metric)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parts = pd.Series(uniques, dtype=object).str.extract(pattern)
    out = parts.reindex(codes)  # code -1 (a missing value) matches nothing: a row of NaN
    out.index = values.index
    return out


def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, dataset, seed) of ``runs`` (a frame with key, label, dataset, seed,
    finished_at, one row per run): the latest run.

    "Latest" means the greatest ``finished_at`` (ISO-8601 UTC text, so text order is time
    order; a run without one counts as the oldest); runs that finished in the same second are
    ordered by ``key``, the greater key counting as the later, so the choice never depends on
    row order. Used by :func:`select_runs` and by the regression gate, so both mean the same.
    """
    if runs.empty:
        return runs.copy()
    finished = runs["finished_at"].fillna("").astype(str).rename("_finished")
    order = pd.concat([runs, finished], axis=1).sort_values(["_finished", "key"], kind="stable")
    return order.drop_duplicates(RUN_IDENTITY, keep="last").drop(columns="_finished")


def select_runs(tidy: pd.DataFrame, quick: bool | None = None) -> tuple[pd.DataFrame, bool]:
    """Keep only quick or only full runs; returns (rows, quick flag used).

    ``quick=None`` picks full runs when any exist, else quick runs. When the store holds
    several runs of one (label, dataset, seed) — the same label run under changed settings,
    each stored under its own hash — only the latest one counts (:func:`latest_runs`), so a
    report never averages two configurations under one name.
    """
    if quick is None:
        quick = not bool((~tidy["quick"].astype(bool)).any()) if len(tidy) else False
    tidy = tidy[tidy["quick"].astype(bool) == bool(quick)]
    if "finished_at" in tidy.columns and len(tidy):
        latest = latest_runs(tidy.drop_duplicates("key"))["key"]
        tidy = tidy[tidy["key"].isin(set(latest))]
    return tidy.copy(), bool(quick)


def add_summary_splits(tidy: pd.DataFrame) -> pd.DataFrame:
    """``tidy`` plus per-run rows for the derived splits (module docstring); NaN values are
    skipped in the per-run means."""
    id_cols = [c for c in tidy.columns if c not in ("split", "value")]
    parts = extract_unique(tidy["split"], _SHIFT_RE)
    is_shift = parts["kind"].notna()
    # assign plain arrays: assigning the index-aligned columns to an empty selection would
    # re-create the unselected rows as NaN (pandas 3)
    shift = tidy[is_shift].assign(
        kind=parts.loc[is_shift, "kind"].to_numpy(),
        severity=parts.loc[is_shift, "severity"].astype(float).to_numpy(),
    )
    ood = tidy[tidy["split"].str.startswith("ood/")]

    run_cols = [c for c in id_cols if c != "metric"]
    by_key = "key" in run_cols and "metric" in id_cols

    def per_run(rows: pd.DataFrame, by: list[str], split_name) -> pd.DataFrame:
        if rows.empty:
            return rows.iloc[0:0][list(tidy.columns)]
        if by_key:  # a key is one run: it fixes the label, dataset, seed, ... (cheaper groups)
            out = rows.groupby(["key", "metric", *by], dropna=False, sort=False)["value"]
            out = out.mean().reset_index().merge(rows.drop_duplicates("key")[run_cols],
                                                 on="key", how="left", sort=False)
        else:
            out = rows.groupby(id_cols + by, dropna=False, sort=False)["value"].mean()
            out = out.reset_index()
        out["split"] = split_name(out) if by else split_name
        return out[list(tidy.columns)]

    derived = [
        per_run(shift, [], SHIFT_MEAN),
        per_run(shift, ["kind"], lambda out: "shift/" + out["kind"].astype(str)),
        per_run(shift, ["severity"],
                lambda out: "severity/" + out["severity"].astype(int).astype(str)),
        per_run(ood, [], OOD_MEAN),
    ]
    derived = [d for d in derived if not d.empty]
    return pd.concat([tidy, *derived], ignore_index=True) if derived else tidy.copy()


def aggregate(tidy: pd.DataFrame, full: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, std (ddof = 1; NaN when n = 1) and n over seeds per (label, dataset, split, metric),
    including the derived summary splits. ``tidy`` must hold one mode (quick or full) only;
    ``full``, when given, is ``add_summary_splits(tidy)`` already computed."""
    if tidy["quick"].nunique() > 1:
        raise ValueError("aggregate() got quick and full runs together: use select_runs first")
    full = add_summary_splits(tidy) if full is None else full
    grouped = full.groupby(
        ["label", "method", "dataset", "quick", "split", "metric"], sort=True, dropna=False
    )["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].where(out["n"] > 1)
    out["n"] = out["n"].astype(int)
    return out[AGGREGATE_COLUMNS]


def aggregate_store(store: ResultStore, quick: bool | None = None) -> pd.DataFrame:
    """:func:`aggregate` of the store's complete runs of one mode (see :func:`select_runs`).

    Raises :class:`StoreError` when there is no complete run to aggregate.
    """
    tidy, quick = select_runs(store.metrics_frame(), quick)
    if tidy.empty:
        mode = "quick" if quick else "full"
        raise StoreError(
            f"no complete {mode} runs in {store.path}: run `bayesbench run` first"
            + (" (or choose the other run mode)" if len(store.completed_keys()) else "")
        )
    return aggregate(tidy)
