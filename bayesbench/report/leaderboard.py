"""The report: leaderboard.md (summary across datasets first, then per dataset quality /
calibration / robustness / OOD / cost tables), report.html, results.csv, summary.csv,
comparisons.csv and the figures, all read from one selection of runs
(:mod:`bayesbench.report.selection`).

Every file is written to a temporary file in the output folder and moved into place with
``os.replace``, so a reader never sees a half-written report. Figures, CSVs and report.html
whose inputs are unchanged since the folder's last report are left as they are
(:mod:`bayesbench.report.render`); with a config, the header says how much of its grid the
report holds (:mod:`bayesbench.report.grid`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bayesbench.errors import BayesbenchError, StoreError
from bayesbench.metrics import METRICS
from bayesbench.report.aggregate import (
    OOD_MEAN,
    SHIFT_MEAN,
    add_summary_splits,
    aggregate,
    extract_unique,
)
from bayesbench.report.example_tests import (
    all_example_tests,
    example_tests_inputs,
    example_tests_markdown,
    read_example_tests,
)
from bayesbench.report.figures import cd_diagram_png, cost_quality_png, reliability_figure
from bayesbench.report.files import (  # noqa: F401  (re-exported: the names callers import)
    MAX_NAME_PART,
    _safe_name,
    atomic_write,
    check_output_file,
    check_output_folder,
    markdown_table,
    safe_file_name,
    unique_file_names,
)
from bayesbench.report.render import (
    FigureJob,
    frame_digest,
    input_hash,
    is_current,
    recorded_hashes,
    render_figures,
    write_unless_current,
)
from bayesbench.report.selection import select_store_runs
from bayesbench.report.summary import (
    DEGENERATE_MARGIN,
    chance_levels,
    cross_dataset_summary,
    degenerate_pairs,
    not_worse_than_best,
    per_seed_values,
)
from bayesbench.report.sweeps import sweep_figures
from bayesbench.report.tidy import tidy_summary
from bayesbench.results import COST_SPLIT, FIT_SPLIT, TEST_SPLIT, RunResult
from bayesbench.store import ResultStore

RESULTS_COLUMNS = ["label", "method", "dataset", "seed", "split", "shift_kind", "severity",
                   "metric", "value", "quick", "key", "config_hash", "git_commit", "finished_at"]

# (split, metric, header) per table of a dataset's section; columns without values are left out.
QUALITY_COLUMNS: list[tuple[str, str, str]] = [
    (TEST_SPLIT, "accuracy", "accuracy"),
    (TEST_SPLIT, "nll", "NLL"),
    (TEST_SPLIT, "brier", "Brier"),
    (TEST_SPLIT, "aurc", "AURC"),
    (TEST_SPLIT, "kl_true", "KL(true‖pred)"),
    (TEST_SPLIT, "prob_rmse_true", "prob RMSE vs true"),
]
CALIBRATION_COLUMNS: list[tuple[str, str, str]] = [
    (TEST_SPLIT, "ece", "ECE"),
    (TEST_SPLIT, "adaptive_ece", "adaptive ECE"),
    (TEST_SPLIT, "mce", "MCE"),
]
ROBUSTNESS_COLUMNS: list[tuple[str, str, str]] = [
    (SHIFT_MEAN, "accuracy", "shift accuracy"),
    (SHIFT_MEAN, "nll", "shift NLL"),
    (SHIFT_MEAN, "ece", "shift ECE"),
]
OOD_COLUMNS: list[tuple[str, str, str]] = [
    (OOD_MEAN, "auroc_max_prob", "OOD AUROC (max prob)"),
    (OOD_MEAN, "auroc_entropy", "OOD AUROC (entropy)"),
    (OOD_MEAN, "auroc_mutual_info", "OOD AUROC (mutual info)"),
    (OOD_MEAN, "fpr95_entropy", "OOD FPR95 (entropy)"),
]
TRAIN_RATIO = "train_time_ratio"  # derived per dataset: a run's train seconds / map's mean
COST_COLUMNS: list[tuple[str, str, str]] = [
    (COST_SPLIT, "train_seconds", "train s"),
    (COST_SPLIT, TRAIN_RATIO, "train × map"),
    (COST_SPLIT, "predict_seconds_per_1000", "predict s / 1000"),
    (COST_SPLIT, "num_parameters", "parameters"),
]
DATASET_TABLES: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("Quality", QUALITY_COLUMNS),
    ("Calibration", CALIBRATION_COLUMNS),
    ("Robustness (mean over shift kinds and severities)", ROBUSTNESS_COLUMNS),
    ("OOD detection (mean over OOD sets; OOD is the positive class)", OOD_COLUMNS),
    ("Cost", COST_COLUMNS),
]
MAIN_COLUMNS: list[tuple[str, str, str]] = [c for _, cols in DATASET_TABLES for c in cols]
_SECONDS = {"train_seconds", "predict_seconds_per_1000"}
_OOD_KINDS = [("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr95", "FPR95")]
_OOD_SCORES = [("entropy", "predictive entropy"), ("max_prob", "maximum probability")]
_MISSING = "–"


# -- formatting ------------------------------------------------------------------------------


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


# -- tables ----------------------------------------------------------------------------------


def metric_table(agg: pd.DataFrame, labels: Sequence[str],
                 columns: Sequence[tuple[str, str, str]], drop_empty: bool = True,
                 tied: set[tuple[str, str, str]] | frozenset = frozenset(),
                 exclude: set[str] | frozenset = frozenset(),
                 lookup: dict[tuple[str, str, str], tuple[float, float, int]] | None = None
                 ) -> str:
    """Markdown table: rows ``labels``, one column per (split, metric, header) of ``agg``
    (one dataset's aggregates). Cells are "mean ± std"; the best mean of each column is bold
    (direction from METRICS; ties at display precision all bold; no bold when all rows tie),
    and cells whose (label, split, metric) is in ``tied`` (not significantly worse than the
    best: :func:`not_worse_than_best`) are in italics. Labels in ``exclude`` (degenerate
    methods) are never marked and get a † after their name. When every row has a
    constant number of seeds n, one ``n`` column shows it; otherwise each cell says (n=k).
    ``lookup``: :func:`metric_lookup` of ``agg`` when already built (one per dataset serves
    all its tables)."""
    if lookup is None:
        lookup = metric_lookup(agg)
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
        candidates = {lab: text for lab, text in shown.items() if lab not in exclude}
        if len(set(shown.values())) > 1 and info is not None and candidates:
            # all tied: nothing to mark
            means = {lab: lookup[(lab, split, metric)][0] for lab in candidates}
            pick = max if info.higher_is_better else min
            best = candidates[pick(means, key=means.__getitem__)]
        for lab in labels:
            entry = lookup.get((lab, split, metric))
            if not _has(entry):
                cells[(lab, j)] = _MISSING
                continue
            mean, std, n = entry
            text = format_cell(mean, std, int(n), metric)
            if lab in exclude:
                pass
            elif shown[lab] == best:
                text = f"**{text}**"
            elif best is not None and (lab, split, metric) in tied:
                text = f"*{text}*"
            if per_cell_n:
                text += f" (n={int(n)})"
            cells[(lab, j)] = text
    headers = ["method"] + [f"{h} {METRICS[m].arrow}" if m in METRICS else h
                            for _, m, h in cols]
    if not per_cell_n:
        headers.append("n")
    rows = []
    for lab in labels:
        row = [f"{lab} †" if lab in exclude else lab] + [cells[(lab, j)]
                                                         for j in range(len(cols))]
        if not per_cell_n:
            row.append(str(next(iter(row_ns[lab]))) if row_ns[lab] else _MISSING)
        rows.append(row)
    return markdown_table(headers, rows)


def metric_lookup(agg: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(label, split, metric) -> (mean, std, n) of one dataset's aggregate rows ``agg``."""
    col = {c: agg[c].tolist() for c in ("label", "split", "metric", "mean", "std", "n")}
    return dict(zip(zip(col["label"], col["split"], col["metric"]),
                    zip(col["mean"], col["std"], col["n"])))


def _has(entry: tuple[float, float, int] | None) -> bool:
    return entry is not None and not (isinstance(entry[0], float) and math.isnan(entry[0]))


def _classes_line(runs: Sequence[RunResult]) -> str:
    """'Classes (2): benign, malignant.' from the runs' ``spec["task"]["class_names"]`` (the
    dataset's own class names, recorded by the run); empty when no run records them."""
    for run in runs:
        names = (((run.spec or {}).get("task") or {}).get("class_names"))
        if names:
            return f"Classes ({len(names)}): {', '.join(str(n) for n in names)}."
    return ""


def _shift_files_line(runs: Sequence[RunResult]) -> str:
    """For a ``files`` dataset: which of the user's files each shift kind's severities are
    (``dataset_params.shifted``: kind -> one file per severity, severity 1 first)."""
    for run in runs:
        shifted = ((run.spec or {}).get("dataset_params") or {}).get("shifted")
        if isinstance(shifted, dict) and shifted:
            parts = []
            for kind, files in sorted(shifted.items()):
                if isinstance(files, (list, tuple)):
                    named = ", ".join(f"severity {i} = `{Path(str(f)).name}`"
                                      for i, f in enumerate(files, 1))
                    parts.append(f"{kind}: {named}")
            if parts:
                return "Shift files: " + "; ".join(parts) + "."
    return ""


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
            f"equal-mass bins; confidence = the maximum predicted probability{mixed}.")


def _shift_tables(agg: pd.DataFrame, labels: Sequence[str],
                  lookup: dict | None = None) -> list[str]:
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
        table = metric_table(agg, labels, cols, lookup=lookup)
        if table:
            out += [f"**{title}** {METRICS[metric].arrow}", table]
    return out


def _ood_tables(agg: pd.DataFrame, labels: Sequence[str],
                lookup: dict | None = None) -> list[str]:
    sets = sorted({s.split("/", 1)[1] for s in set(agg["split"]) if s.startswith("ood/")})
    if not sets:
        return []
    out = ["### OOD detection", "OOD inputs are the positive class."]
    for score, text in _OOD_SCORES:
        cols = [(f"ood/{name}", f"{kind}_{score}", f"{name} {kname}")
                for name in sets for kind, kname in _OOD_KINDS]
        table = metric_table(agg, labels, cols, lookup=lookup)
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


def results_frame(tidy: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The results.csv layout: tidy rows plus the shift kind and severity parsed from split,
    and each run's provenance (config hash, git commit, finish time) from ``runs``."""
    parts = extract_unique(tidy["split"], r"^shift/(?P<kind>[^/]+)/(?P<severity>\d+)$")
    out = tidy.assign(shift_kind=parts["kind"],
                      severity=pd.to_numeric(parts["severity"]).astype("Int64"))
    prov = ["config_hash", "git_commit", "finished_at"]
    if runs is not None and len(out):
        out = out.drop(columns=[c for c in prov if c in out.columns]).merge(
            runs[["key", *prov]], on="key", how="left")
    for col in prov:
        if col not in out.columns:
            out[col] = None
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


def _train_ratio_rows(agg: pd.DataFrame, values: pd.DataFrame, reference: str | None
                      ) -> pd.DataFrame:
    """Aggregate rows of (cost, train_time_ratio): each run's train seconds divided by the
    reference label's mean train seconds on the same dataset, mean ± std over seeds."""
    if reference is None:
        return agg.iloc[0:0]
    train = values[(values["split"] == COST_SPLIT) & (values["metric"] == "train_seconds")]
    ref = train[train["label"] == reference].groupby("dataset")["value"].mean()
    ratio = train.assign(value=train["value"] / train["dataset"].map(ref))
    ratio = ratio[ratio["value"].notna()]
    if ratio.empty:
        return agg.iloc[0:0]
    quick = bool(agg["quick"].iloc[0])
    out = ratio.groupby(["label", "method", "dataset"], sort=True)["value"].agg(
        mean="mean", std="std", n="count").reset_index()
    return out.assign(quick=quick, split=COST_SPLIT, metric=TRAIN_RATIO)[list(agg.columns)]


def _details(title: str, blocks: Sequence[str]) -> list[str]:
    """A collapsed ``<details>`` section (GitHub renders it; so does report.html)."""
    if not blocks:
        return []
    return [f"<details><summary>{title}</summary>", "", *[b + "\n" for b in blocks],
            "</details>", ""]


_HEADER_RE = re.compile(r"^(\d+) complete (quick|full) runs")


def replacement_note(path: Path, runs: int, quick: bool) -> str | None:
    """A note when ``path`` (an existing leaderboard.md) reports other runs than the one about
    to replace it: another kind (quick / full) or another number of runs; None otherwise."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[:5]
    except OSError:
        return None
    found = next((m for line in lines if (m := _HEADER_RE.match(line))), None)
    if found is None:
        return None
    old_runs, old_kind = int(found.group(1)), found.group(2)
    kind = "quick" if quick else "full"
    if (old_runs, old_kind) == (runs, kind):
        return None
    return (f"replacing {path} ({old_runs} complete {old_kind} runs) with a report of {runs} "
            f"complete {kind} runs")


def _write_csv(out_dir: Path, name: str, frame: pd.DataFrame) -> Path:
    """``frame.to_csv(index=False)`` into ``out_dir / name``, skipped when the file already
    holds the CSV of an identical frame (formatting 50 000 rows is the slow part)."""
    inputs = input_hash(pd.DataFrame.to_csv, (frame_digest(frame),), packages=("pandas",))
    return write_unless_current(out_dir, name, inputs, lambda: frame.to_csv(index=False))[0]


def _example_tests_csv(out_dir: Path, runs: pd.DataFrame, blobs: dict[str, bytes],
                       reference: str | None, workers: int | None
                       ) -> tuple[pd.DataFrame, Path]:
    """The per-example tests and example_tests.csv: read back from the folder when it holds
    them for the same inputs (:func:`example_tests_inputs`), else computed (decompressing
    every run's predictions, the slow part of a report whose figures are current) and
    written."""
    name = "example_tests.csv"
    inputs = example_tests_inputs(runs, blobs, reference)
    if is_current(out_dir, name, inputs):
        with contextlib.suppress(OSError, ValueError):
            return read_example_tests(out_dir / name), out_dir / name
    frame = all_example_tests(runs, blobs, reference, workers)
    path, _ = write_unless_current(out_dir, name, inputs, lambda: frame.to_csv(index=False))
    return frame, path


def committed_note(path: Path, text: str, replacing: str | None = None) -> str | None:
    """A note when ``path`` is a leaderboard.md that git tracks and ``text`` would change it
    (``replacing``: the :func:`replacement_note`, said as part of it); None otherwise."""
    try:
        old = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if old == text or not _tracked_by_git(path):
        return None
    what = replacing or f"replacing {path}"
    return (f"{what}: the file is committed in git; `git diff -- {path}` shows what changed "
            f"and `git checkout -- {path}` restores the committed report")


def _tracked_by_git(path: Path) -> bool:
    import subprocess

    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", path.name],
                              cwd=path.parent, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False  # no git, or not a folder git can look at
    return done.returncode == 0


def write_report(store: ResultStore | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 quick: bool | None = None, html: bool = True,
                 notes: list[str] | None = None, workers: int | None = None,
                 rendered: list[str] | None = None,
                 config: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write leaderboard.md (summary across datasets first), results.csv, summary.csv,
    comparisons.csv, example_tests.csv (per-example tests against map from the stored
    predictions: :mod:`bayesbench.report.example_tests`), cd_diagram.png, cost_quality.png,
    reliability_<dataset>.png, for swept method groups sweep_<dataset>_<group>.png
    (:mod:`bayesbench.report.sweeps`), and, with ``html``, a self-contained report.html.
    When ``notes`` is a list, a note is appended to it if the folder held a leaderboard of
    other runs (:func:`replacement_note`).

    With ``config`` (a benchmarks.yaml), the header says how many runs of the grid it
    configures for this kind the report holds ("15 of 228 runs": :mod:`bayesbench.report.
    grid`), and a partial grid gets a note too. Replacing a leaderboard.md that git tracks
    with other content always gets a note.

    A figure whose inputs are unchanged since it was last written to the folder is not
    redrawn (:mod:`bayesbench.report.render`); the others are drawn in up to ``workers``
    processes (None: the usable cores). When ``rendered`` is a list, the names of the figures
    drawn are appended to it. example_tests.csv is likewise read back when its inputs (the
    runs' predictions, the code) are unchanged, else computed in up to ``workers`` processes.

    Every file reads one selection of runs (:func:`bayesbench.report.selection.
    select_store_runs`): one kind (``quick=None``: full runs when the store has any, else
    quick), the latest complete run per (label, dataset, seed). Returns the written paths.
    Raises :class:`StoreError` when the store holds no complete run of that mode.
    """
    out_dir = check_output_folder(out_dir, "report folder")
    if not isinstance(store, ResultStore):
        store = ResultStore.open_existing(store)
    sel = select_store_runs(store, quick)
    quick, tidy, complete, failed = sel.quick, sel.tidy, sel.complete, sel.failed
    if tidy.empty or not complete:
        raise _no_runs_error(store, failed, quick)

    full = add_summary_splits(tidy)  # once: the aggregates and the paired tests share it
    agg = aggregate(tidy, full)
    note = replacement_note(out_dir / "leaderboard.md", len(sel.runs), quick)
    coverage = None
    if config is not None:
        from bayesbench.report.grid import grid_coverage

        try:
            coverage = grid_coverage(config, quick, store.path, out_dir, set(sel.runs["key"]))
        except BayesbenchError as exc:  # the report stands without the count: say why
            if notes is not None:
                notes.append(f"no count of the configured grid: {exc}")
        else:
            if coverage.partial and notes is not None:
                notes.append(coverage.line().replace("**", ""))
    values = per_seed_values(tidy, full)
    degenerate = degenerate_pairs(agg, chance_levels(complete))
    summary = cross_dataset_summary(values, degenerate=degenerate)
    agg_shown = pd.concat([agg, _train_ratio_rows(agg, values, summary.reference)],
                          ignore_index=True)
    tied = not_worse_than_best(agg_shown, values, MAIN_COLUMNS, exclude=set(degenerate))
    comparisons = summary.comparisons
    blobs = store.predictions_of(list(sel.runs["key"])) if summary.reference else {}
    per_example, example_csv = _example_tests_csv(out_dir, sel.runs, blobs, summary.reference,
                                                  workers)
    written = [_write_csv(out_dir, "results.csv", results_frame(tidy, sel.runs)),
               _write_csv(out_dir, "summary.csv", tidy_summary(agg, complete)),
               _write_csv(out_dir, "comparisons.csv", comparisons),
               example_csv]
    jobs = [FigureJob("cd_diagram.png", cd_diagram_png, (summary.rankings,))]
    if summary.reference is not None:
        ratio = agg_shown[agg_shown["metric"] == TRAIN_RATIO][["dataset", "label", "mean"]]
        test = agg[agg["split"] == TEST_SPLIT].pivot_table(
            index=["dataset", "label"], columns="metric", values="mean", aggfunc="first")
        points = ratio.rename(columns={"mean": "ratio"}).merge(
            test.reindex(columns=["nll", "ece"]).reset_index(), on=["dataset", "label"],
            how="left")
        jobs.append(FigureJob("cost_quality.png", cost_quality_png,
                              (points, summary.reference)))

    datasets = sel.datasets
    stems = unique_file_names([(d,) for d in datasets])
    md = ["# bayesbench leaderboard", "",
          sel.header_line(),
          f"Store `{store.path}`. Full provenance (run key, config hash, git commit, finish "
          "time of every run) is in results.csv; paired tests against map in comparisons.csv.",
          ""]
    if coverage is not None:
        md += [coverage.line(), ""]
    md += summary.markdown()
    md += ["![Critical-difference diagrams](cd_diagram.png)", ""]
    if any(job.name == "cost_quality.png" for job in jobs):
        md += ["![Cost against quality](cost_quality.png)", ""]
    md += example_tests_markdown(per_example, summary.reference or "map", set(degenerate))
    md += ["## Per dataset", "",
           "Cells are mean ± std over seeds (sample std, ddof = 1); n is the number of seeds. "
           "**Bold**: the best mean in its column; *italics*: not significantly worse than "
           "the best (two-sided paired t-test over shared seeds, p ≥ 0.05; no mark without "
           "2 shared seeds). ↑ higher is better, ↓ lower is better.",
           ""]
    agg_by_dataset = dict(tuple(agg_shown.groupby("dataset", sort=False)))
    tied_by_dataset: dict[str, set[tuple[str, str, str]]] = {}
    for d, lab, s_, m in tied:
        tied_by_dataset.setdefault(d, set()).add((lab, s_, m))
    runs_by_dataset: dict[str, list[RunResult]] = {}
    for r in complete:
        runs_by_dataset.setdefault(r.dataset, []).append(r)
    for dataset in datasets:
        agg_ds = agg_by_dataset.get(dataset, agg_shown.iloc[0:0])
        lookup = metric_lookup(agg_ds)
        labels = sorted(agg_ds["label"].unique())
        tied_ds = tied_by_dataset.get(dataset, set())
        runs_ds = runs_by_dataset.get(dataset, [])
        by_label = {lab: [r for r in runs_ds if r.label == lab] for lab in labels}
        png = out_dir / f"reliability_{stems[(dataset,)]}.png"
        jobs.append(reliability_figure(png.name, dataset, by_label))
        md += [f"## {dataset}", ""]
        for line in (_classes_line(runs_ds), _shift_files_line(runs_ds), _binning_line(runs_ds)):
            md += [line, ""] if line else []
        excluded = {lab for d, lab in degenerate if d == dataset}
        for title, columns in DATASET_TABLES:
            table = metric_table(agg_ds, labels, columns, tied=tied_ds, exclude=excluded,
                                 lookup=lookup)
            if table:
                md += [f"**{title}**", "", table, ""]
        if excluded:
            md += [f"† not above chance on {dataset} (test accuracy below chance + "
                   f"{DEGENERATE_MARGIN:g} of the way to 1): never marked best, left out of "
                   "the rankings.", ""]
        shift_files = _shift_files_line(runs_ds)
        md += _details(f"Shift and OOD details on {dataset}",
                       [*_shift_tables(agg_ds, labels, lookup),
                        *([shift_files] if shift_files else []),
                        *_ood_tables(agg_ds, labels, lookup)])
        md += _details(f"Fit diagnostics on {dataset}", _fit_tables(agg_ds))
        md += [f"![Reliability diagrams on {dataset}]({png.name})", ""]
    sweep_jobs, sweep_md = sweep_figures(complete)
    jobs += sweep_jobs
    md += sweep_md
    figure_paths = render_figures(jobs, out_dir, workers=workers, rendered=rendered)
    written += figure_paths
    md += [*(p + "\n" for p in _failed_section(failed))]
    text = "\n".join(md).rstrip() + "\n"
    committed = committed_note(out_dir / "leaderboard.md", text, note)
    if notes is not None and (committed or note):
        notes.append(committed or note)
    written.insert(0, atomic_write(out_dir / "leaderboard.md", text))
    if html:
        from bayesbench.report.html import report_html

        # report.html embeds the figures: it is current when the Markdown and every PNG are
        pngs = recorded_hashes(out_dir)
        inputs = input_hash(report_html, (text, [(p.name, pngs.get(p.name)) for p in figure_paths]),
                            packages=("markdown-it-py",))
        path, _ = write_unless_current(out_dir, "report.html", inputs,
                                       lambda: report_html(text, out_dir))
        written.append(path)
    return written
