"""The report: leaderboard.md, results.csv, summary.csv and reliability diagrams.

Every file is written to a temporary file in the output folder and moved into place with
``os.replace``, so a reader never sees a half-written report.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path

import pandas as pd

from bayesbench.errors import OutputPathError, StoreError
from bayesbench.metrics import METRICS
from bayesbench.report.aggregate import OOD_MEAN, SHIFT_MEAN, aggregate, select_runs
from bayesbench.report.figures import reliability_png
from bayesbench.report.sweeps import write_sweeps
from bayesbench.results import COST_SPLIT, FIT_SPLIT, TEST_SPLIT, RunResult
from bayesbench.store import ResultStore

RESULTS_COLUMNS = ["label", "method", "dataset", "seed", "split", "shift_kind", "severity",
                   "metric", "value", "quick", "key"]

# (split, metric, header) of the main table; columns without any value are left out.
MAIN_COLUMNS: list[tuple[str, str, str]] = [
    (TEST_SPLIT, "accuracy", "accuracy"),
    (TEST_SPLIT, "nll", "NLL"),
    (TEST_SPLIT, "brier", "Brier"),
    (TEST_SPLIT, "ece", "ECE"),
    (TEST_SPLIT, "adaptive_ece", "adaptive ECE"),
    (TEST_SPLIT, "mce", "MCE"),
    (TEST_SPLIT, "aurc", "AURC"),
    (TEST_SPLIT, "kl_true", "KL(true‖pred)"),
    (TEST_SPLIT, "prob_rmse_true", "prob RMSE vs true"),
    (SHIFT_MEAN, "accuracy", "shift accuracy"),
    (SHIFT_MEAN, "ece", "shift ECE"),
    (OOD_MEAN, "auroc_max_prob", "OOD AUROC (max prob)"),
    (OOD_MEAN, "auroc_entropy", "OOD AUROC (entropy)"),
    (COST_SPLIT, "train_seconds", "train s"),
    (COST_SPLIT, "predict_seconds_per_1000", "predict s / 1000"),
    (COST_SPLIT, "num_parameters", "parameters"),
]
_SECONDS = {"train_seconds", "predict_seconds_per_1000"}
_OOD_KINDS = [("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr95", "FPR95")]
_OOD_SCORES = [("entropy", "predictive entropy"), ("max_prob", "maximum probability")]
_MISSING = "–"


# -- small writers -------------------------------------------------------------------------


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` per column is "l" or "r" (default: first
    column left, the rest right). Pipes inside cells are escaped."""
    def esc(cell: object) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    align = align or ["l"] + ["r"] * (len(headers) - 1)
    rule = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(value: float, metric: str) -> str:
    """Display precision: 3 decimals for quality metrics, 3 significant digits for seconds,
    integers with thousands separators for parameter counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if metric == "num_parameters" or (metric in _SECONDS and abs(value) >= 1000):
        return f"{value:,.0f}"
    if metric in _SECONDS or metric not in METRICS:  # diagnostics: 3 significant digits
        return f"{value:.3g}"
    return f"{value:.3f}"


def format_cell(mean: float, std: float, n: int, metric: str) -> str:
    """``"mean ± std"``; the std is left out for a single seed and for constant counts."""
    text = format_value(mean, metric)
    if text == _MISSING or n <= 1 or (metric == "num_parameters" and std == 0):
        return text
    return f"{text} ± {format_value(std, metric)}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME_PART = 80
"""Longest label or dataset name used as is in a file name (file systems allow 255 bytes)."""


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_file_name(name: str) -> str:
    """A file-name part for ``name``: ``name`` itself when it is made of ``A-Za-z0-9_.-``
    only and at most :data:`MAX_NAME_PART` characters (so existing report names stay), else
    its slug (other characters as ``_``, cut to 60) + ``-`` + 8 hex digits of its SHA-256, so
    ``a b`` and ``a_b`` never share a file."""
    slug = _UNSAFE.sub("_", name)
    if slug == name and 0 < len(name) <= MAX_NAME_PART:
        return name
    return f"{slug[:60]}-{_short_hash(name)}"


_safe_name = safe_file_name  # the name other modules import


def unique_file_names(keys: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """One file-name stem per key (e.g. ``(dataset,)`` or ``(dataset, group)``): the parts'
    :func:`safe_file_name` joined by ``_``, plus a hash of the key where two keys would
    otherwise share a stem, also ignoring case (``("a_b", "c")`` vs ``("a", "b_c")``, or
    ``Digits`` vs ``digits`` on macOS and Windows)."""
    stems = {key: "_".join(safe_file_name(part) for part in key) for key in dict.fromkeys(keys)}
    by_stem: dict[str, list[Hashable]] = defaultdict(list)
    for key, stem in stems.items():
        by_stem[stem.lower()].append(key)
    return {key: stem if len(by_stem[stem.lower()]) == 1 else f"{stem}-{_short_hash(*key)}"
            for key, stem in stems.items()}


def check_output_folder(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Raise :class:`OutputPathError` (naming ``what``) unless ``path`` is a folder, or can be
    made one, that this process may write; call it before writing anything."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {p}: is an existing file, not a folder; give a folder "
                              "path (it is created if missing)")
    _check_writable_parent(p, what)
    return p


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be written as a file."""
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{what} {p}: is a folder; give a file path, e.g. "
                              f"{p / 'baseline.csv'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what} {p}: the file is not writable; check its permissions")
    _check_writable_parent(p.parent, what, shown=p)
    return p


def _check_writable_parent(folder: Path, what: str, shown: Path | None = None) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder."""
    shown = shown if shown is not None else folder
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {shown}: '{existing}' is a file, so no folder can be "
                              "made there; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {shown}: the folder '{existing}' is not writable; "
                              "choose another path or fix its permissions")


# -- tables ----------------------------------------------------------------------------------


def metric_table(agg: pd.DataFrame, labels: Sequence[str],
                 columns: Sequence[tuple[str, str, str]], drop_empty: bool = True) -> str:
    """Markdown table: rows ``labels``, one column per (split, metric, header) of ``agg``
    (one dataset's aggregates). Cells are "mean ± std"; the best mean of each column is bold
    (direction from METRICS; ties at display precision all bold; no bold when all rows tie).
    When every row has a
    constant number of seeds n, one ``n`` column shows it; otherwise each cell says (n=k)."""
    index = agg.set_index(["label", "split", "metric"])[["mean", "std", "n"]]
    lookup = {k: tuple(v) for k, v in zip(index.index, index.itertuples(index=False))}
    cols = [c for c in columns
            if not drop_empty or any(_has(lookup.get((lab, c[0], c[1]))) for lab in labels)]
    if not cols:
        return ""
    # which n per row?
    row_ns = {lab: {int(lookup[(lab, s, m)][2]) for s, m, _ in cols
                    if _has(lookup.get((lab, s, m)))} for lab in labels}
    per_cell_n = any(len(ns) > 1 for ns in row_ns.values())
    cells: dict[tuple[str, int], str] = {}
    for j, (split, metric, _) in enumerate(cols):
        info = METRICS.get(metric)
        shown = {lab: format_value(lookup[(lab, split, metric)][0], metric) for lab in labels
                 if _has(lookup.get((lab, split, metric)))}
        best = None
        if len(set(shown.values())) > 1 and info is not None:  # all tied: nothing to mark
            means = {lab: lookup[(lab, split, metric)][0] for lab in shown}
            pick = max if info.higher_is_better else min
            best = shown[pick(means, key=means.__getitem__)]
        for lab in labels:
            entry = lookup.get((lab, split, metric))
            if not _has(entry):
                cells[(lab, j)] = _MISSING
                continue
            mean, std, n = entry
            text = format_cell(mean, std, int(n), metric)
            if shown[lab] == best:
                text = f"**{text}**"
            if per_cell_n:
                text += f" (n={int(n)})"
            cells[(lab, j)] = text
    headers = ["method"] + [f"{h} {METRICS[m].arrow}" if m in METRICS else h
                            for _, m, h in cols]
    if not per_cell_n:
        headers.append("n")
    rows = []
    for lab in labels:
        row = [lab] + [cells[(lab, j)] for j in range(len(cols))]
        if not per_cell_n:
            row.append(str(next(iter(row_ns[lab]))) if row_ns[lab] else _MISSING)
        rows.append(row)
    return markdown_table(headers, rows)


def _has(entry: tuple[float, float, int] | None) -> bool:
    return entry is not None and not (isinstance(entry[0], float) and math.isnan(entry[0]))


def _binning_line(runs: Sequence[RunResult]) -> str:
    ece_bins, adaptive_bins = set(), set()
    for run in runs:
        ev = (run.spec or {}).get("evaluation") or {}
        if "ece_bins" in ev:
            ece_bins.add(ev["ece_bins"])
            adaptive_bins.add(ev.get("adaptive_ece_bins", ev["ece_bins"]))
    if not ece_bins:
        return "ECE binning: not recorded in the runs' spec."

    def join(values: set) -> str:
        return " / ".join(str(v) for v in sorted(values, key=str))

    mixed = " (runs differ in binning: compare with care)" if len(ece_bins) > 1 else ""
    return (f"ECE: {join(ece_bins)} equal-width bins; adaptive ECE: {join(adaptive_bins)} "
            f"equal-mass bins{mixed}.")


def _shift_tables(agg: pd.DataFrame, labels: Sequence[str]) -> list[str]:
    splits = set(agg["split"])
    severities = sorted({int(s.split("/")[1]) for s in splits if s.startswith("severity/")})
    kinds = sorted({s.split("/")[1] for s in splits if re.fullmatch(r"shift/[^/]+", s)})
    if not severities:
        return []
    out = ["### Under distribution shift",
           "Severity columns average over shift kinds; kind columns average over severities."]
    for metric, title in [("accuracy", "Accuracy"), ("ece", "ECE")]:
        cols = ([(f"severity/{s}", metric, f"severity {s}") for s in severities]
                + [(f"shift/{k}", metric, k) for k in kinds]
                + [(SHIFT_MEAN, metric, "mean")])
        table = metric_table(agg, labels, cols)
        if table:
            out += [f"**{title}** {METRICS[metric].arrow}", table]
    return out


def _ood_tables(agg: pd.DataFrame, labels: Sequence[str]) -> list[str]:
    sets = sorted({s.split("/", 1)[1] for s in set(agg["split"]) if s.startswith("ood/")})
    if not sets:
        return []
    out = ["### OOD detection", "OOD inputs are the positive class."]
    for score, text in _OOD_SCORES:
        cols = [(f"ood/{name}", f"{kind}_{score}", f"{name} {kname}")
                for name in sets for kind, kname in _OOD_KINDS]
        table = metric_table(agg, labels, cols)
        if table:
            out += [f"**Scored by {text}**", table]
    return out


def _fit_tables(agg: pd.DataFrame) -> list[str]:
    """One table per method that reports diagnostics (:meth:`Method.diagnostics`), its
    settings as rows: the names are each method's own."""
    fit = agg[agg["split"] == FIT_SPLIT]
    if fit.empty:
        return []
    out = ["### Fit diagnostics",
           "What each method reports about its own fit (not scored against labels)."]
    for method in sorted(fit["method"].unique()):
        rows = fit[fit["method"] == method]
        cols = [(FIT_SPLIT, m, m) for m in dict.fromkeys(rows["metric"])]
        out += [f"**{method}**", metric_table(rows, sorted(rows["label"].unique()), cols)]
    return out


def _failed_section(failed: Sequence[RunResult]) -> list[str]:
    if not failed:
        return []
    out = [f"## Failed runs ({len(failed)})"]
    for run in failed:
        error = (run.error or "no error text recorded").strip()
        if len(error) > 4000:
            error = error[:4000] + "\n… (truncated)"
        out.append(f"- `{run.label}` on `{run.dataset}`, seed {run.seed} (key `{run.key}`):\n\n"
                   + "\n".join("      " + line for line in error.splitlines()))
    return out


# -- the report --------------------------------------------------------------------------------


def results_frame(tidy: pd.DataFrame) -> pd.DataFrame:
    """The results.csv layout: tidy rows plus the shift kind and severity parsed from split."""
    parts = tidy["split"].str.extract(r"^shift/(?P<kind>[^/]+)/(?P<severity>\d+)$")
    out = tidy.assign(shift_kind=parts["kind"],
                      severity=pd.to_numeric(parts["severity"]).astype("Int64"))
    return out[RESULTS_COLUMNS].reset_index(drop=True)


def _no_runs_error(store: ResultStore, failed: Sequence[RunResult], quick: bool) -> StoreError:
    mode = "quick" if quick else "full"
    if failed:
        first = (failed[0].error or "").strip().splitlines()
        return StoreError(
            f"no complete {mode} runs in {store.path}; {len(failed)} failed "
            f"(first: {failed[0].label} on {failed[0].dataset}: "
            f"{first[-1] if first else 'no error text'}): fix the failure and rerun "
            "`bayesbench run`"
        )
    return StoreError(f"no complete {mode} runs in {store.path}: run `bayesbench run` first")


def write_report(store: ResultStore | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 quick: bool | None = None) -> list[Path]:
    """Write leaderboard.md, results.csv, summary.csv, reliability_<dataset>.png and, for
    swept method groups, sweep_<dataset>_<group>.png (:mod:`bayesbench.report.sweeps`).

    ``quick=None`` reports full runs when the store has any, else quick runs; quick and full
    runs are never mixed. Returns the written paths. Raises :class:`StoreError` when the store
    holds no complete run of that mode.
    """
    out_dir = check_output_folder(out_dir, "report folder")
    if not isinstance(store, ResultStore):
        store = ResultStore.open_existing(store)
    tidy, quick = select_runs(store.metrics_frame(), quick)
    all_runs = [r for r in store.results() if r.quick == quick]
    complete = [r for r in all_runs if r.status == "complete"]
    failed = [r for r in all_runs if r.status == "failed"]
    if tidy.empty or not complete:
        raise _no_runs_error(store, failed, quick)

    agg = aggregate(tidy)
    written = [
        atomic_write(out_dir / "results.csv", results_frame(tidy).to_csv(index=False)),
        atomic_write(out_dir / "summary.csv", agg.to_csv(index=False)),
    ]

    datasets = sorted(agg["dataset"].unique())
    stems = unique_file_names([(d,) for d in datasets])
    mode = ("quick runs (smoke-test settings: not comparable with full runs)" if quick
            else "full runs")
    commits = sorted({r.git_commit for r in complete if r.git_commit})
    configs = sorted({r.config_hash for r in complete})
    md = ["# bayesbench leaderboard", "",
          f"{len(complete)} complete {mode}, {len(failed)} failed, from `{store.path}`.",
          f"Config hash: {', '.join(f'`{c}`' for c in configs)}"
          + (f"; git commit: {', '.join(f'`{c}`' for c in commits)}." if commits else "."),
          "",
          "Cells are mean ± std over seeds (sample std, ddof = 1); n is the number of seeds. "
          "**Bold** is the best value in its column; ↑ higher is better, ↓ lower is better.",
          ""]
    for dataset in datasets:
        agg_ds = agg[agg["dataset"] == dataset]
        labels = sorted(agg_ds["label"].unique())
        runs_ds = [r for r in complete if r.dataset == dataset]
        by_label = {lab: [r for r in runs_ds if r.label == lab] for lab in labels}
        png = out_dir / f"reliability_{stems[(dataset,)]}.png"
        written.append(atomic_write(png, reliability_png(dataset, by_label)))
        md += [f"## {dataset}", "", _binning_line(runs_ds), "",
               metric_table(agg_ds, labels, MAIN_COLUMNS), ""]
        for block in (_shift_tables(agg_ds, labels), _ood_tables(agg_ds, labels),
                      _fit_tables(agg_ds)):
            for part in block:
                md += [part, ""]
        md += [f"![Reliability diagrams on {dataset}]({png.name})", ""]
    sweep_paths, sweep_md = write_sweeps(complete, out_dir)
    written += sweep_paths
    md += sweep_md
    md += [*(p + "\n" for p in _failed_section(failed))]
    written.insert(0, atomic_write(out_dir / "leaderboard.md", "\n".join(md).rstrip() + "\n"))
    return written
