"""One stored run, in full: the library behind ``bayesbench show RUN``.

A run is named by its key (the RunSpec hash ``bayesbench report`` and ``results.csv`` print),
a unique prefix of it, or its method label narrowed by ``dataset`` and ``seed``. When several
stored runs share one (label, dataset, seed) — quick and full runs, or runs under changed
settings — the one reports use is chosen (full runs if any, then the latest: see
:func:`bayesbench.report.aggregate.latest_runs`) and the others are listed.

>>> from bayesbench.store import ResultStore                          # doctest: +SKIP
>>> found = find_run(ResultStore("results/bayesbench.sqlite"), "map", dataset="digits",
...                  seed=0)                                          # doctest: +SKIP
>>> found.run.status, [r.key for r in found.others]                   # doctest: +SKIP
('complete', [])
"""

from __future__ import annotations

import datetime as dt
import json
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bayesbench.errors import RunNotFoundError
from bayesbench.registry import close_names, match_name
from bayesbench.results import (
    COST_SPLIT,
    FIT_SPLIT,
    TEST_SPLIT,
    RunResult,
    describe_metric_spec,
    run_metric_spec,
)

if TYPE_CHECKING:
    from bayesbench.store import ResultStore

MIN_PREFIX = 4
"""Shortest key prefix taken as a key (shorter text is only matched as a label)."""


@dataclass
class FoundRun:
    """The run to show and the other stored runs of its (label, dataset, seed)."""

    run: RunResult
    others: list[dict[str, Any]] = field(default_factory=list)  # rows of runs_frame()


def _describe_rows(rows: Any, limit: int = 8) -> str:
    shown = [f"{r.key} ({r.label} on {r.dataset}, seed {r.seed}, "
             f"{'quick' if r.quick else 'full'}, {r.status})"
             for r in rows.head(limit).itertuples()]
    more = f"; … {len(rows) - limit} more" if len(rows) > limit else ""
    return "; ".join(shown) + more


def find_run(store: ResultStore, run: str, *, dataset: str | None = None,
             seed: int | None = None, quick: bool | None = None) -> FoundRun:
    """The stored run ``run`` names: a key, a unique key prefix (at least
    :data:`MIN_PREFIX` characters), or a method label (case-insensitive where unambiguous)
    with ``dataset`` / ``seed`` to pick one (module docstring). ``quick``: only quick (True)
    or full (False) runs. Raises :class:`RunNotFoundError` naming the candidates."""
    from bayesbench.report.aggregate import latest_runs

    runs = store.runs_frame()
    if quick is not None:
        runs = runs[runs["quick"] == bool(quick)]
    if runs.empty:
        kind = "" if quick is None else ("quick " if quick else "full ")
        raise RunNotFoundError(f"no {kind}runs in {store.path}: run `bayesbench run` first")
    text = run.strip()
    looks_like_key = len(text) >= MIN_PREFIX and all(c in string.hexdigits for c in text)
    by_key = runs[runs["key"] == text]
    if by_key.empty and looks_like_key:
        by_key = runs[runs["key"].str.startswith(text.lower())]
    if len(by_key) > 1:
        raise RunNotFoundError(
            f"key prefix '{text}' matches {len(by_key)} runs in {store.path}: "
            f"{_describe_rows(by_key)}; give more characters of the key")
    if len(by_key) == 1:
        candidates = by_key
    else:
        labels = sorted(set(runs["label"]))
        label = match_name(text, labels)
        if label is None:
            close = close_names(text, labels, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RunNotFoundError(
                f"no run with key or label '{text[:80]}' in {store.path}.{hint} Labels: "
                f"{', '.join(labels)[:400]}; keys are printed by `bayesbench report` "
                "(results.csv)")
        candidates = runs[runs["label"] == label]
        if dataset is not None:
            names = sorted(set(candidates["dataset"]))
            name = match_name(dataset, names)
            if name is None:
                raise RunNotFoundError(
                    f"--dataset {dataset[:80]}: no run of '{label}' on it in {store.path}; "
                    f"'{label}' ran on {', '.join(names)[:400]}")
            candidates = candidates[candidates["dataset"] == name]
        if seed is not None:
            seeds = sorted(set(int(s) for s in candidates["seed"]))
            candidates = candidates[candidates["seed"] == seed]
            if candidates.empty:
                raise RunNotFoundError(
                    f"--seed {seed}: no run of '{label}' with that seed in {store.path}; "
                    f"seeds stored: {', '.join(map(str, seeds))[:200]}")
    identities = candidates[["label", "dataset", "seed"]].drop_duplicates()
    if len(identities) > 1:
        choices = latest_runs(candidates)
        raise RunNotFoundError(
            f"'{text[:80]}' matches runs of {len(identities)} (label, dataset, seed): "
            f"{_describe_rows(choices)}; narrow it with --dataset and --seed, or give a key")
    if quick is None and (~candidates["quick"]).any():
        preferred = candidates[~candidates["quick"]]  # full runs first, as reports do
    else:
        preferred = candidates
    chosen = latest_runs(preferred).iloc[0]["key"]
    result = store.get(chosen)
    if result is None:  # removed between the two reads
        raise RunNotFoundError(f"run {chosen} is no longer in {store.path}")
    others = [r._asdict() for r in candidates[candidates["key"] != chosen].itertuples(
        index=False)]
    return FoundRun(result, others)


def _seconds_between(start: str, end: str) -> float | None:
    try:
        return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
                ).total_seconds()
    except (TypeError, ValueError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 or value != value else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def run_record(found: FoundRun) -> dict[str, Any]:
    """The run's full stored record (``RunResult.to_dict``) plus the keys of the other runs
    of its (label, dataset, seed): what ``bayesbench show --json`` prints."""
    record = found.run.to_dict()
    record["other_runs"] = [{k: o[k] for k in ("key", "quick", "status", "finished_at")}
                            for o in found.others]
    return record


def print_run(console: Any, found: FoundRun) -> None:
    """``bayesbench show``: settings, versions, commit, timings, metrics and error (rich)."""
    from rich.markup import escape as e
    from rich.table import Table

    r = found.run

    def line(text: str, indent: int = 2) -> None:
        console.print(" " * indent + text, highlight=False, soft_wrap=True)

    status = "[green]complete[/green]" if r.status == "complete" else f"[red]{r.status}[/red]"
    line(f"[bold]run {e(r.key)}[/bold]: {e(r.label)} on {e(r.dataset)}, seed {r.seed}, "
         f"{'quick' if r.quick else 'full'} run, {status}", 0)
    spec = r.spec or {}
    line(f"method {e(r.method)}" + (f" (group {e(spec['group'])})" if spec.get("group")
                                     and spec.get("group") != r.label else "")
         + f"; dataset {e(spec.get('dataset', r.dataset))}; config hash {e(r.config_hash)}")
    took = _seconds_between(r.started_at, r.finished_at)
    line(f"started {e(r.started_at or '?')}, finished {e(r.finished_at or '?')}"
         + (f" ({took:.0f} s)" if took is not None else "") + f"; device {e(str(r.device))}")
    line(f"git commit {e(r.git_commit or 'unknown (not run from a git checkout)')}")
    line("versions: " + e(", ".join(f"{k} {v}" for k, v in (r.versions or {}).items())))
    if r.status != "complete":
        console.print("[red]error[/red] (as stored):", highlight=False)
        line(e(r.error or "(no error text stored)"))
    console.print("[bold]settings[/bold]", highlight=False)
    for name, title in (("method_params", "method parameters"),
                        ("dataset_params", "dataset parameters"), ("swept", "sweep values"),
                        ("model", "model"), ("training", "training"),
                        ("evaluation", "evaluation"), ("quick", "quick budget")):
        if name in spec and (spec[name] or name in ("method_params", "dataset_params")):
            line(f"{title}: {e(_fmt(spec[name]))}")
    ms = run_metric_spec(spec)
    if ms:
        stored = "" if spec.get("metric_spec") else " (implied: stored before specs were)"
        line(f"metrics: {e(describe_metric_spec(ms))}{stored}")
    extra = {k: spec[k] for k in ("threads", "device", "method_version", "dataset_version")
             if k in spec}
    if extra:
        line(f"execution: {e(_fmt(extra))}")
    values: dict[str, dict[str, float]] = {}
    for m in r.metrics:
        values.setdefault(m.split, {})[m.metric] = m.value
    cost = values.pop(COST_SPLIT, {})
    if cost:
        parts = []
        if "train_seconds" in cost:
            parts.append(f"train {cost['train_seconds']:.2f} s")
        if "predict_seconds_per_1000" in cost:
            parts.append(f"predict {cost['predict_seconds_per_1000']:.3f} s per 1000 inputs")
        if "num_parameters" in cost:
            parts.append(f"{cost['num_parameters']:,.0f} parameters")
        parts += [f"{k} {_fmt(v)}" for k, v in cost.items()
                  if k not in ("train_seconds", "predict_seconds_per_1000", "num_parameters")]
        console.print("[bold]timings[/bold]", highlight=False)
        line(e("; ".join(parts)))
    fit = values.pop(FIT_SPLIT, {})
    ood = {s: v for s, v in values.items() if s.startswith("ood/")}
    scored = {s: v for s, v in values.items() if s not in ood}
    if scored:
        order = sorted(scored, key=lambda s: (s != TEST_SPLIT, s))
        metrics = list(dict.fromkeys(m for s in order for m in scored[s]))
        t = Table(title="metrics (test and shifted test sets)", title_justify="left")
        t.add_column("split")
        for m in metrics:
            t.add_column(m, justify="right")
        for s in order:
            t.add_row(e(s), *[_number(scored[s].get(m)) for m in metrics])
        console.print(t)
    if ood:
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for s, v in ood.items():
            for name, value in v.items():
                stat, _, score = name.partition("_")
                rows.setdefault((s, score or "-"), {})[stat] = value
        stats = list(dict.fromkeys(k for v in rows.values() for k in v))
        t = Table(title="OOD detection (OOD = positive class)", title_justify="left")
        t.add_column("OOD set")
        t.add_column("score")
        for stat in stats:
            t.add_column(stat, justify="right")
        for (s, score), v in rows.items():
            t.add_row(e(s), e(score), *[_number(v.get(stat)) for stat in stats])
        console.print(t)
    if fit:
        line("[bold]fit diagnostics[/bold]: " + e(", ".join(f"{k} {_fmt(v)}"
                                                          for k, v in fit.items())), 0)
    if found.others:
        line(f"also stored for {e(r.label)} on {e(r.dataset)}, seed {r.seed} (not shown; "
             "`bayesbench show KEY` shows one):", 0)
        for o in found.others:
            line(f"{o['key']}: {'quick' if o['quick'] else 'full'}, {o['status']}, finished "
                 f"{o['finished_at'] or '?'}")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def record_json(found: FoundRun) -> str:
    """:func:`run_record` as JSON text (NaN written as null)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(run_record(found)), indent=2, default=str)


def complete_runs(store: str, incomplete: str) -> list[str]:
    """Shell completion of ``show RUN``: the labels and keys in ``store`` that start with
    ``incomplete``. Reads SQLite directly (no pandas: a tab press must be quick) and never
    raises: no store, no completions."""
    import sqlite3
    from pathlib import Path

    if not Path(store).is_file():
        return []
    try:
        conn = sqlite3.connect(f"file:{Path(store).resolve()}?mode=ro", uri=True, timeout=1)
        try:
            labels = [r[0] for r in conn.execute("SELECT DISTINCT label FROM runs")]
            keys = [r[0] for r in conn.execute("SELECT key FROM runs")] if incomplete else []
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return sorted(n for n in set(labels) | set(keys) if n.startswith(incomplete))
