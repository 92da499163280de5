"""Sweep curves: test metrics of a method group's members against each swept parameter.

A config entry with ``sweep:`` expands into members labelled e.g.
``mfvi@prior_scale=0.1+temperature=1.0``; each run stores its group (``spec["group"]``) and its
swept values (``spec["swept"]``). For every (dataset, group) with swept members, the report
draws ``sweep_<dataset>_<group>.png``: one row of panels per swept parameter (x axis; log scale
when its positive values span more than 10×; categories for non-numeric values), one column
per metric (test NLL, ECE, accuracy), one line per combination of the other swept parameters,
points at the mean over seeds with ± std bars, and ``map``'s mean as a dashed reference line
when the dataset has map runs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bayesbench.report.files import unique_file_names
from bayesbench.report.render import FigureJob, render_figures
from bayesbench.results import TEST_SPLIT, RunResult

SWEEP_METRICS: list[tuple[str, str]] = [("nll", "test NLL"), ("ece", "test ECE"),
                                        ("accuracy", "test accuracy")]
REFERENCE_METHOD = "map"


def _swept(run: RunResult) -> dict:
    return dict((run.spec or {}).get("swept") or {})


def _group(run: RunResult) -> str:
    return (run.spec or {}).get("group") or run.label.split("@", 1)[0]


def sweep_summary(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Per (dataset, group, member label): the swept values (``swept``, a dict), and mean, std
    (ddof = 1, 0 for one seed) and n over seeds of each metric in :data:`SWEEP_METRICS`.
    Only complete runs with a non-empty ``spec["swept"]`` count."""
    rows = []
    for run in runs:
        swept = _swept(run)
        if run.status != "complete" or not swept:
            continue
        row = {"dataset": run.dataset, "group": _group(run), "label": run.label,
               "seed": run.seed, "swept": swept}
        for metric, _ in SWEEP_METRICS:
            value = run.metric(TEST_SPLIT, metric)
            row[metric] = math.nan if value is None else value
        rows.append(row)
    columns = ["dataset", "group", "label", "swept"] + [
        f"{m}_{s}" for m, _ in SWEEP_METRICS for s in ("mean", "std", "n")]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    out = []
    for (dataset, group, label), part in frame.groupby(["dataset", "group", "label"], sort=True):
        row = {"dataset": dataset, "group": group, "label": label, "swept": part["swept"].iloc[0]}
        for metric, _ in SWEEP_METRICS:
            values = part[metric].dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else math.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else 0.0
            row[f"{metric}_n"] = len(values)
        out.append(row)
    return pd.DataFrame(out, columns=columns)


def reference_means(runs: Sequence[RunResult], dataset: str) -> dict[str, float]:
    """Mean test metrics over seeds of the ``map`` runs on ``dataset`` (the label ``map`` if
    several map labels exist); empty when there are none."""
    refs = [r for r in runs if r.status == "complete" and r.dataset == dataset
            and r.method == REFERENCE_METHOD and not _swept(r)]
    labels = sorted({r.label for r in refs})
    if not labels:
        return {}
    label = REFERENCE_METHOD if REFERENCE_METHOD in labels else labels[0]
    out = {}
    for metric, _ in SWEEP_METRICS:
        values = [v for r in refs if r.label == label
                  if (v := r.metric(TEST_SPLIT, metric)) is not None and not math.isnan(v)]
        if values:
            out[metric] = float(np.mean(values))
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def use_log_axis(values: Sequence[object]) -> bool:
    """Log x axis when every value is a positive number and they span more than 10×."""
    if not values or not all(_is_number(v) and v > 0 for v in values):
        return False
    return max(values) > 10 * min(values)  # type: ignore[type-var,operator]


def sweep_png(dataset: str, group: str, summary: pd.DataFrame,
              reference: dict[str, float] | None = None) -> bytes:
    """PNG bytes of one group's sweep (module docstring); ``summary`` holds that group's rows
    of :func:`sweep_summary`."""
    from matplotlib.figure import Figure  # lazy import; Agg canvas

    params = sorted({k for swept in summary["swept"] for k in swept})
    width, height = 4.0 * len(SWEEP_METRICS), 3.2 * len(params)
    fig = Figure(figsize=(width, height))
    # explicit margins in inches (constrained layout was half of the drawing time): tick
    # labels and a y label left of every panel, tick labels and an x label below every
    # row, the suptitle above
    cell = (height - 0.55 - 0.4) / len(params)
    axes = fig.subplots(len(params), len(SWEEP_METRICS), squeeze=False, gridspec_kw={
        "left": 0.75 / width, "right": 1 - 0.15 / width, "bottom": 0.55 / height,
        "top": 1 - 0.4 / height, "wspace": 0.9 / (width / len(SWEEP_METRICS) - 0.9),
        "hspace": 0.65 / (cell - 0.65)})
    for i, param in enumerate(params):
        others = [p for p in params if p != param]
        rows = summary[summary["swept"].map(lambda s, p=param: p in s)]
        values = [s[param] for s in rows["swept"]]
        numeric = all(_is_number(v) for v in values)
        # numbers sit at their value; anything else (strings, lists) at evenly spaced categories
        xs_all = sorted(set(values)) if numeric else sorted({str(v) for v in values})
        position = {v: (float(v) if numeric else j) for j, v in enumerate(xs_all)}
        lines: dict[str, list[tuple[float, pd.Series]]] = {}
        for _, row in rows.iterrows():
            key = ", ".join(f"{p}={row['swept'].get(p)}" for p in others) or group
            x = row["swept"][param]
            lines.setdefault(key, []).append((position[x if numeric else str(x)], row))
        for j, (metric, title) in enumerate(SWEEP_METRICS):
            ax = axes[i, j]
            for k, (key, points) in enumerate(sorted(lines.items())):
                points.sort(key=lambda t: t[0])
                x = [p for p, _ in points]
                y = [r[f"{metric}_mean"] for _, r in points]
                err = [r[f"{metric}_std"] for _, r in points]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{k}", label=key)
            if reference and metric in reference:
                ax.axhline(reference[metric], color="grey", linestyle="--", linewidth=1,
                           label=REFERENCE_METHOD)
            if numeric and use_log_axis(xs_all):
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(xs_all)), xs_all)
            ax.set_xlabel(param)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=7)
    fig.suptitle(f"{group} on {dataset}: test metrics over the sweep (mean ± std over seeds)",
                 fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def sweep_figures(runs: Sequence[RunResult]) -> tuple[list[FigureJob], list[str]]:
    """The figure jobs of ``sweep_<dataset>_<group>.png`` for every swept group of ``runs``
    (complete runs of one mode) and the "Sweeps" Markdown lines (both empty without sweeps)."""
    summary = sweep_summary(runs)
    if summary.empty:
        return [], []
    jobs: list[FigureJob] = []
    md = ["## Sweeps", "",
          "Test metrics of each swept method group against its swept parameters "
          f"(mean ± std over seeds; dashed line: {REFERENCE_METHOD}).", ""]
    parts = list(summary.groupby(["dataset", "group"], sort=True))
    stems = unique_file_names([(str(d), str(g)) for (d, g), _ in parts])
    references: dict[str, dict[str, float]] = {}
    for (dataset, group), part in parts:
        name = f"sweep_{stems[(str(dataset), str(group))]}.png"
        if dataset not in references:
            references[dataset] = reference_means(runs, dataset)
        jobs.append(FigureJob(name, sweep_png, (dataset, group, part, references[dataset])))
        md += [f"### {group} on {dataset}", ""]
        finite = part.dropna(subset=["nll_mean"])
        if not finite.empty:
            best = finite.loc[finite["nll_mean"].idxmin()]
            md += [f"Lowest test NLL: `{best['label']}` ({best['nll_mean']:.3f}; "
                   f"accuracy {best['accuracy_mean']:.3f}, ECE {best['ece_mean']:.3f}), "
                   f"{len(part)} members.", ""]
        md += [f"![Sweep of {group} on {dataset}]({name})", ""]
    return jobs, md


def write_sweeps(runs: Sequence[RunResult], out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Write ``sweep_<dataset>_<group>.png`` for every swept group of ``runs`` (complete runs
    of one mode; a figure whose inputs are unchanged is not redrawn:
    :func:`~bayesbench.report.render.render_figures`); returns (the paths, the "Sweeps"
    Markdown lines, empty without sweeps)."""
    jobs, md = sweep_figures(runs)
    return (render_figures(jobs, out_dir) if jobs else []), md
