"""The command line: thin Typer commands over the library (config, runner, store, report)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bayesbench.errors import BayesbenchError, ConfigError

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion (README: shell completion)
    no_args_is_help=True,
    # None: help text prints as written (markdown mode dropped "<dataset>" as HTML, and the
    # rich panels labelled every flag "<bool>" as if it took a value)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="Benchmark Bayesian and uncertainty-aware transformers: calibration, robustness, "
    "OOD detection and cost.",
)
console = Console(stderr=True)
out = Console()

DEFAULT_CONFIG = Path("benchmarks.yaml")
DEFAULT_STORE = Path("results/bayesbench.sqlite")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="benchmarks.yaml to read.")]
StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite results store.")]


def _csv(value: Optional[str], flag: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{flag}: give a comma-separated list, e.g. {flag} a,b")
    return items


def _seeds(value: Optional[str]) -> list[int] | None:
    items = _csv(value, "--seeds")
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ConfigError(
            f"--seeds {value[:80]}: give integers separated by commas, e.g. --seeds 0,1,2"
        ) from None


def _labels(cfg, section: str, wanted: list[str] | None) -> list[str] | None:
    """``--methods`` / ``--datasets`` values in the config's spelling ("MAP" -> "map")."""
    from bayesbench.api import config_labels

    return config_labels(cfg, section, wanted)


def version_text() -> str:
    """bayesbench's version, and torch's with the device ``--device auto`` would pick (the
    rule of :func:`bayesbench.runner.resolve_device`, without importing the runner)."""
    import platform

    import torch

    from bayesbench import __version__

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    return (f"bayesbench {__version__}\n"
            f"torch {torch.__version__} (device: {device})\n"
            f"python {platform.python_version()} ({platform.system()})")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True,
        help="Print the versions of bayesbench, torch and python, and the device, then exit."
    )] = False,
) -> None:
    pass


@app.command("list")
def list_cmd(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="Show this config's own datasets and methods, resolved, "
        "instead of everything installed.")] = None,
    shapes: Annotated[Optional[bool], typer.Option(
        "--shapes/--no-shapes", help="Build each dataset whose shapes are not cached yet "
        "(once: the dataset cache keeps them); --no-shapes: no shape columns. Default: the "
        "shapes already cached (with --config: build).", show_default=False)] = None,
) -> None:
    """List methods, datasets and metrics with one-line descriptions.

    Example: `bayesbench list --no-shapes`

    Shapes come from the dataset cache (`bayesbench cache info`): a dataset not built yet
    says so until `bayesbench list --shapes` (or a run) builds it.

    With `--config FILE`: that config's datasets (parameters, input kind and shape, classes,
    split sizes, shifted and OOD sets; for a `files` dataset the columns and files each split
    comes from) and methods with their resolved parameters, so you can check your data
    before training. Exit 2 when a dataset cannot be built.
    """
    if config is not None:
        from bayesbench.config import load_config
        from bayesbench.describe import (
            check_described,
            describe_datasets,
            describe_methods,
            print_config,
        )

        cfg = load_config(config)
        datasets = describe_datasets(cfg, shapes=shapes is not False)
        print_config(out, cfg, datasets, describe_methods(cfg))
        check_described(datasets, cfg.path)
        return
    from bayesbench.data.cache import cache_root
    from bayesbench.describe import catalog, dataset_shapes, print_catalog

    cat = catalog(cache_root())
    print_catalog(out, cat, None if shapes is False else dataset_shapes(cat, build=bool(shapes)))


@app.command("cache")
def cache_cmd(
    action: Annotated[str, typer.Argument(help="info (the folder, its size) or clear.")
                      ] = "info",
) -> None:
    """Show or clear the dataset cache: built datasets kept on disk so that each (dataset,
    parameters, seed, code) is built once.

    Example: `bayesbench cache clear`

    The folder is $BAYESBENCH_CACHE, else $XDG_CACHE_HOME/bayesbench, else
    ~/.cache/bayesbench; BAYESBENCH_CACHE=off turns the cache off. `clear` deletes only the
    files the cache wrote.
    """
    from bayesbench.data.cache import DatasetCache

    cache = DatasetCache.default()
    if action not in ("info", "clear"):
        raise ConfigError(f"bayesbench cache {action[:40]}: choose info or clear, e.g. "
                          "bayesbench cache info")
    if not cache.enabled:
        out.print("the dataset cache is off (BAYESBENCH_CACHE=off): every run builds its "
                  "dataset", highlight=False)
        return
    if action == "clear":
        freed = cache.clear()
        out.print(f"cleared {escape(str(cache.root))}: {freed / 1e6:.1f} MB freed",
                  highlight=False)
        return
    info = cache.info()
    out.print(f"dataset cache: {escape(str(info.root))} ({info.tasks} task(s), "
              f"{info.bytes / 1e6:.1f} MB); move it with BAYESBENCH_CACHE=DIR, turn it off with "
              "BAYESBENCH_CACHE=off, empty it with `bayesbench cache clear`",
              highlight=False, soft_wrap=True)
    for name, (tasks, size) in info.datasets.items():
        out.print(f"  {escape(name)}: {tasks} task(s), {size / 1e6:.1f} MB", highlight=False)


@app.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    methods: Annotated[Optional[str], typer.Option(help="Method labels, comma-separated.")] = None,
    datasets: Annotated[Optional[str], typer.Option(help="Dataset labels, comma-separated.")
                        ] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Base seeds, e.g. 0,1,2.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Same grid, tiny budget.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Worker processes (default: the config's executor.workers, else 1); on "
        "cuda, concurrent runs sharing the GPU(s).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker "
                                                   "(default 1).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    store: StoreOpt = DEFAULT_STORE,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also write the report "
                                                    "here when the grid is done.")] = None,
    executor: Annotated[Optional[str], typer.Option(
        "--executor", help="local, dask or slurm (default: the config's executor.kind, "
        "else local).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(
        help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies "
        "--executor dask).")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        min=1, help="Slurm jobs to submit (--executor slurm; default: executor.slurm.jobs)."
    )] = None,
) -> None:
    """Train and evaluate every (method, dataset, seed) of the config not already stored.

    Example: `bayesbench run --methods map,mc_dropout --seeds 0,1,2 --workers 2`

    Runs already complete in the store are skipped, so a rerun resumes where a crash or
    Ctrl-C stopped. `--executor dask` runs on a Dask cluster (`--scheduler`, or a local one
    of `--workers`), `--executor slurm` on Slurm jobs; only this process writes the store.
    Exit 1 when any run failed (its error is stored), 2 on bad input or an unreachable
    cluster.
    """
    from bayesbench import run_plan
    from bayesbench.execution.limits import check_parallelism

    check_parallelism(workers, threads)
    # a grid this store holds complete already is answered without importing torch
    plan_fp = run_plan.fingerprint(config, run_plan.GridFlags(
        methods, datasets, seeds, quick, threads, device)) if out_dir is None else None
    known = run_plan.lookup(store, plan_fp) if plan_fp is not None else None
    if known is not None and known.nothing_to_run:
        _print_nothing_to_run(known.complete, known.unsupported, reasons_above=False)
        return

    from bayesbench.config import expand, load_config
    from bayesbench.execution.base import with_overrides
    from bayesbench.runner import check_inputs, resolve_device, run_grid
    from bayesbench.store import ResultStore

    if out_dir is not None:  # found now, not after the whole grid ran
        from bayesbench.report.leaderboard import check_output_folder  # 1 s: only with --out

        check_output_folder(out_dir, "--out")
    cfg = load_config(config)
    plan = with_overrides(cfg.executor, kind=executor, scheduler=scheduler, workers=workers,
                          jobs=jobs)
    if plan.kind == "local" or (plan.kind == "dask" and not plan.scheduler):
        check_parallelism(plan.workers, threads)  # processes on this machine
    dev = resolve_device(device)
    specs = expand(cfg, methods=_labels(cfg, "methods", _csv(methods, "--methods")),
                   datasets=_labels(cfg, "datasets", _csv(datasets, "--datasets")),
                   seeds=_seeds(seeds), quick=quick, threads=threads or 1, device=dev.type)
    check_inputs(cfg, specs)
    result_store = ResultStore(store)
    from bayesbench.progress import GridProgress

    with GridProgress(specs, result_store.completed_keys(), console) as progress:
        outcome = run_grid(specs, result_store, device=dev, threads=threads, executor=plan,
                           on_event=progress.on_event, on_result=progress.on_result)
    if plan_fp is not None and run_plan.can_remember(specs):
        unsupported = {spec.key for spec, _ in outcome.unsupported}
        run_plan.remember(result_store.path, plan_fp,
                          [s.key for s in specs if s.key not in unsupported], len(unsupported))
    if outcome.results:
        _print_summary(outcome.results, len(outcome.skipped))
        _print_unsupported(len(outcome.unsupported), reasons_above=True)
    else:
        _print_nothing_to_run(len(outcome.skipped), len(outcome.unsupported),
                              reasons_above=True)
    if outcome.interrupted:
        stopped = len(outcome.stopped)
        console.print(
            f"[yellow]interrupted[/yellow]: {len(outcome.results)} run(s) finished and were "
            f"stored in {result_store.path}; {stopped} run(s) in flight were stopped and not "
            "stored. Rerun the same command to resume.", highlight=False)
        raise typer.Exit(130)
    if out_dir is not None:
        _write_report(result_store, out_dir, quick=quick, baseline=None, config=config)
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} run(s) failed[/red]; errors are stored and "
                      "shown by `bayesbench report`.")
        raise typer.Exit(1)


def _print_nothing_to_run(stored: int, unsupported: int, reasons_above: bool) -> None:
    out.print(f"0 run(s) done, {stored} already stored (skipped)", highlight=False)
    _print_unsupported(unsupported, reasons_above)


def _print_unsupported(count: int, reasons_above: bool) -> None:
    if count:
        where = "reasons above" if reasons_above else "`bayesbench list` says which " \
            "methods each backbone runs"
        console.print(f"[yellow]{count} run(s) skipped[/yellow]: their method cannot work on "
                      f"their backbone ({where}; nothing stored for them).", highlight=False)


def _print_summary(results: list, skipped: int) -> None:
    t = Table(title=f"{len(results)} run(s) done, {skipped} already stored (skipped)",
              title_justify="left")
    for col in ["method", "dataset", "seed", "status", "accuracy ↑", "nll ↓", "ece ↓",
                "train s"]:
        t.add_column(col)
    for r in sorted(results, key=lambda r: (r.dataset, r.label, r.seed)):
        if r.status == "complete":
            vals = [r.metric("test", m) for m in ("accuracy", "nll", "ece")]
            cells = [f"{v:.4f}" for v in vals] + [f"{r.metric('cost', 'train_seconds'):.1f}"]
            t.add_row(r.label, r.dataset, str(r.seed), "[green]complete[/green]", *cells)
        else:
            t.add_row(r.label, r.dataset, str(r.seed), "[red]failed[/red]", "", "", "", "")
    out.print(t)


def _write_report(store, out_dir: Path, quick: bool | None, baseline: Path | None,
                  config: Path | None = None, plan=None) -> None:
    """Write the report; with ``plan`` (its inputs' fingerprint, taken before the store was
    read: :mod:`bayesbench.report_plan`), remember it for the next report into ``out_dir``."""
    from bayesbench.report import write_baseline, write_report

    notes: list[str] = []
    paths = write_report(store, out_dir, quick=quick, notes=notes, config=config)
    if plan is not None:
        from bayesbench import report_plan

        report_plan.remember(out_dir, plan, paths, notes)
    _print_report(notes, [])
    if baseline is not None:
        write_baseline(store, baseline, quick=quick)
        paths.append(baseline)
    _print_report([], paths)


def _print_report(notes, paths) -> None:
    for note in notes:
        out.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for p in paths:
        out.print(f"wrote {p}")


RunsOpt = Annotated[Optional[bool], typer.Option(
    "--quick/--full", help="Use quick-budget or full runs (default: full runs if any).")]


@app.command()
def report(
    store: StoreOpt = DEFAULT_STORE,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the report files.")] = Path(
        "reports"),
    write_baseline: Annotated[Optional[Path], typer.Option(
        "--write-baseline", help="Also write a regression-gate baseline CSV here.")] = None,
    quick: RunsOpt = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="benchmarks.yaml whose grid the report is checked against "
        f"(default: {DEFAULT_CONFIG} when it exists).")] = None,
) -> None:
    """Write leaderboard.md (summary across datasets first), report.html (self-contained),
    results.csv, summary.csv, comparisons.csv and the figures.

    Example: `bayesbench report --out reports/ --write-baseline reports/baseline.csv`

    The report says at the top how many runs of the configured grid (quick or full) it
    holds, e.g. "15 of 228 runs", and a note says so when it replaces a committed report.
    Figures, CSVs and report.html whose inputs are unchanged are not rewritten; when nothing
    it reads changed since the folder's last report, nothing is (set
    BAYESBENCH_REPORT_FAST=0 to write it all the same).
    """
    from bayesbench import report_plan

    if config is None:
        config = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    elif not config.is_file():
        raise ConfigError(f"--config {config}: no such file; give the benchmarks.yaml the "
                          "runs were made from, or leave --config out")
    # a folder holding the report of exactly these inputs is answered without pandas
    plan = None
    if write_baseline is None and (out_dir / report_plan.MANIFEST).is_file():
        plan = report_plan.lookup(store, out_dir, quick, config)
        if plan.remembered is not None:
            _print_report(plan.remembered.notes, plan.remembered.paths)
            return

    from bayesbench.report.leaderboard import check_output_file, check_output_folder
    from bayesbench.store import ResultStore

    check_output_folder(out_dir, "--out")  # both before any report file is written
    if write_baseline is not None:
        check_output_file(write_baseline, "--write-baseline")
    if plan is None:  # the inputs' fingerprint is taken before the report reads the store
        plan = report_plan.lookup(store, out_dir, quick, config)
    _write_report(ResultStore.open_existing(store), out_dir, quick, write_baseline, config,
                  plan=plan)


@app.command()
def check(
    baseline: Annotated[Path, typer.Option(help="Baseline CSV written by `report "
                                           "--write-baseline`.")],
    store: StoreOpt = DEFAULT_STORE,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        help="Override a metric's tolerance, e.g. --tolerance ece=0.01 (repeatable).")] = None,
    quick: RunsOpt = None,
) -> None:
    """Gate CI: compare the store's aggregates with a baseline, direction-aware.

    Example: `bayesbench check --baseline reports/baseline.csv --tolerance ece=0.01`

    Checks the kind of runs (quick or full) and the seeds the baseline was written from;
    `--quick/--full` must agree with it. Exit 0 when nothing regressed, 1 when a metric
    regressed, a baseline row has no result or the latest run of its method, dataset and a
    seed failed; 2 when the baseline is missing, malformed or of another kind or other seeds
    than the store's runs.

    A change beyond the tolerance fails only if it is also significant (a paired t-test over
    the shared seeds, p < 0.05) when both sides have 3 or more seeds; otherwise it is marked
    `~` (within seed noise) and passes, as `asv compare` does.
    """
    import math

    from bayesbench.report import check_against_baseline, load_baseline
    from bayesbench.store import ResultStore

    overrides: dict[str, float] = {}
    for item in tolerance or []:
        name, _, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--tolerance {item}: write METRIC=VALUE, e.g. --tolerance ece=0.01"
            ) from None
    base = load_baseline(baseline)  # a bad baseline is reported before a missing store
    result = check_against_baseline(ResultStore.open_existing(store), base,
                                    tolerance_overrides=overrides, quick=quick)
    for note in result.notes:
        out.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    kind = "quick" if result.quick else "full"
    t = Table(title=f"regression gate against {escape(str(baseline))} ({kind} runs)",
              title_justify="left")
    for col in ["method", "dataset", "split", "metric", "baseline", "current", "difference",
                "tolerance", "p", "status"]:
        t.add_column(col)
    bad_status = ("regressed", "missing", "failed")
    colour = {"ok": "green", "improved": "green", "regressed": "red", "missing": "red",
              "failed": "red"}
    def num(value: float, fmt: str) -> str:
        return "" if math.isnan(value) else format(value, fmt)

    for row in result.rows:
        if row.status in bad_status or row.mark or len(result.rows) <= 40:
            status = f"[{colour[row.status]}]{row.status}[/]" + (f" {row.mark}" if row.mark
                                                                  else "")
            t.add_row(escape(row.method), escape(row.dataset), row.split, row.metric,
                      f"{row.baseline:.4f}", num(row.current, ".4f"), num(row.delta, "+.4f"),
                      f"{row.tolerance:g}", num(row.p_value, ".2g"), status)
    out.print(t)
    for row in result.rows:
        if row.status == "regressed" or row.mark:
            what = "regressed" if row.status == "regressed" else "~ within seed noise"
            p = ("no significance test (fewer than 3 seeds on a side, or no per-seed "
                 "baseline values)" if math.isnan(row.p_value) else f"p = {row.p_value:.2g}")
            out.print(f"{what}: {escape(row.method)} on {escape(row.dataset)}, {row.split} "
                      f"{row.metric}: baseline {row.baseline:.4f}, current {row.current:.4f}, "
                      f"difference {row.delta:+.4f} (tolerance {row.tolerance:g}), {p}",
                      highlight=False, soft_wrap=True)
    # once per (method, dataset) and reason, not per row: a failed run fails all its rows
    shown = set()
    for row in result.rows:
        if row.status in ("failed", "missing") and (row.method, row.dataset, row.detail) \
                not in shown:
            shown.add((row.method, row.dataset, row.detail))
            out.print(f"{row.status}: {escape(row.method)} on {escape(row.dataset)}: "
                      f"{escape(row.detail)}", highlight=False, soft_wrap=True)
    counts = {s: sum(r.status == s for r in result.rows) for s in bad_status}
    noise = sum(r.mark == "~" for r in result.rows)
    out.print(f"{len(result.rows)} checked, "
              + ", ".join(f"{n} {s}" for s, n in counts.items())
              + f", {noise} beyond tolerance but within seed noise (~)", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def score(
    probs: Annotated[Path, typer.Option(help="Probabilities N×C or samples S×N×C "
                                        "(.npy, .npz, .csv).")],
    labels: Annotated[Path, typer.Option(help="Integer labels, N (.npy, .npz, .csv).")],
    ood_probs: Annotated[Optional[Path], typer.Option(help="Predictions on OOD inputs.")] = None,
    bins: Annotated[int, typer.Option(min=1, help="ECE bins.")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score any model's saved predictions with bayesbench's metrics.

    Example: `bayesbench score --probs p.npy --labels y.npy --ood-probs ood.npy --json`
    """
    from bayesbench.metrics import METRICS
    from bayesbench.scoring import score_predictions

    scores = score_predictions(probs, labels, ood_probs, n_bins=bins)
    if as_json:
        out.print_json(json.dumps(scores))
        return
    for group, values in scores.items():
        t = Table(title=group, title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in values.items():
            arrow = METRICS[k].arrow if k in METRICS else ""
            t.add_row(f"{k} {arrow}", f"{v:.4f}")
        out.print(t)


@app.command()
def rescore(
    store: StoreOpt = DEFAULT_STORE,
    ece_bins: Annotated[Optional[int], typer.Option(
        "--ece-bins", min=1, max=1000, help="Score with this many calibration bins, stored as "
        "the runs of a config with evaluation.ece_bins set so (default: each run's own, in "
        "place).")] = None,
    quick: RunsOpt = None,
) -> None:
    """Recompute every metric from the predictions stored with each run, without retraining.

    Example: `bayesbench rescore --ece-bins 10` (then `report` a config with ece_bins: 10)

    In place, with the metric code of this bayesbench (a fixed or a new metric); cost and fit
    diagnostics are kept. Runs stored without predictions are counted and left as they are.
    """
    from bayesbench.rescore import rescore_store
    from bayesbench.store import ResultStore

    result_store = ResultStore.open_existing(store)
    outcome = rescore_store(result_store, ece_bins=ece_bins, quick=quick)
    if ece_bins is None:
        out.print(f"rescored {outcome.rescored} run(s) from their stored predictions: "
                  f"{outcome.values_changed} value(s) changed in {outcome.changed} run(s)",
                  highlight=False)
    else:
        out.print(f"scored {outcome.derived} run(s) with {ece_bins} ECE bins, stored as new "
                  f"runs (evaluation.ece_bins: {ece_bins}); {outcome.already} were stored "
                  "already", highlight=False)
    if outcome.without_predictions:
        console.print(f"{outcome.without_predictions} run(s) have no stored predictions "
                      "(stored before they were kept, or with keep_predictions: false): left "
                      "as they are", highlight=False)
    for problem in outcome.problems:
        console.print(f"note: {escape(problem)}", highlight=False)


@app.command()
def priors(
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset whose test inputs the prior functions see: a dataset label of --config "
        "(default: its first), else a registry name (default: digits).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="Take the dataset (with its params, e.g. a files dataset) and "
        "the model settings from this config.")] = None,
    family: Annotated[str, typer.Option(help="Prior families, comma-separated: gaussian, "
                                        "laplace, student_t, gaussian_mixture.")
                      ] = "gaussian,laplace,student_t",
    scales: Annotated[str, typer.Option(help="Prior scales, comma-separated.")] = "0.1,1,10",
    functions: Annotated[int, typer.Option(max=4096, help="Prior functions "
                                           "(networks) per prior.")] = 32,
    subset: Annotated[str, typer.Option(help="Linear layers drawn from the prior: all, "
                                        "attention, mlp or last_layer.")] = "all",
    max_inputs: Annotated[int, typer.Option(min=1, max=100_000, help="Test inputs "
                                            "evaluated.")] = 256,
    df: Annotated[float, typer.Option(help="Student-t degrees of freedom.")] = 3.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the data, init and draws.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for priors_<dataset>.csv "
                                          "and .png.")] = Path("reports"),
) -> None:
    """Prior predictive check: what do functions drawn from a weight prior predict?

    Example: `bayesbench priors --dataset digits --family gaussian,laplace --scales 0.1,1,10`

    With `--config FILE`, `--dataset` names one of its datasets (any kind, `files` included)
    and the networks have the config's model settings for it; without, a registry dataset
    with its default parameters and the default model.

    Draws `--functions` networks with every linear weight in `--subset` from each prior
    (biases, LayerNorms and embeddings as initialised) and reports, on the test inputs, the
    entropy of single functions and of the prior predictive, the fraction of near-one-hot
    predictions (max p > 0.99), disagreement between functions, and how often a function's
    argmax changes across inputs (near 0: the function ignores its input).
    """
    from bayesbench.data.base import Dataset
    from bayesbench.models import LINEAR_SUBSETS, ModelConfig
    from bayesbench.prior_predictive import (
        prior_predictive_table,
        resolve_priors,
        write_prior_predictive,
    )
    from bayesbench.priors import PRIOR_FAMILIES
    from bayesbench.registry import DATASETS, match_name
    from bayesbench.report.leaderboard import check_output_folder

    check_output_folder(out_dir, "--out")
    families = [match_name(f, PRIOR_FAMILIES) or f for f in _csv(family, "--family") or []]
    subset = match_name(subset, LINEAR_SUBSETS) or subset
    grid = resolve_priors(families, _csv(scales, "--scales") or [], df=df)
    if config is not None:
        from bayesbench.config import load_config
        from bayesbench.describe import build_dataset, dataset_entry, dataset_model

        cfg = load_config(config)
        entry = dataset_entry(cfg, dataset) if dataset else cfg.datasets[0]
        try:
            source = build_dataset(entry)
        except BayesbenchError as exc:
            raise type(exc)(f"{cfg.path}: datasets '{entry.label}': {exc}") from None
        dataset, model = entry.label, dataset_model(cfg, entry)
    else:
        dataset = DATASETS.canonical(dataset or "digits")
        cls = DATASETS.get(dataset)
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise ConfigError(f"--dataset {dataset}: not a bayesbench dataset")
        try:
            source = cls()
            source.check()
        except BayesbenchError as exc:
            raise ConfigError(f"--dataset {dataset}: needs parameters ({exc}); give it in a "
                              "config and pass --config FILE --dataset LABEL") from None
        model = ModelConfig()
    task = source.build(seed)
    frame = prior_predictive_table(task, model, grid, dataset=dataset, subset=subset,
                                   num_functions=functions, max_inputs=max_inputs, seed=seed)
    t = Table(title=f"prior predictive on {dataset} ({functions} functions × "
              f"{int(frame['num_inputs'].iloc[0])} test inputs, subset {subset}; "
              f"log C = {frame['max_entropy'].iloc[0]:.3f})", title_justify="left")
    for col in ["family", "scale", "entropy (1 fn)", "entropy (predictive)", "max p > 0.99",
                "disagreement", "input variation"]:
        t.add_column(col, justify="left" if col == "family" else "right")
    for row in frame.itertuples():
        t.add_row(row.family, f"{row.scale:g}", f"{row.mean_entropy:.3f}",
                  f"{row.predictive_entropy:.3f}", f"{row.confident_fraction:.3f}",
                  f"{row.disagreement:.3f}", f"{row.input_variation:.3f}")
    out.print(t)
    for p in write_prior_predictive(frame, out_dir, dataset):
        out.print(f"wrote {p}")


def _complete_run(ctx: typer.Context, incomplete: str) -> list[str]:
    from bayesbench.show import complete_runs

    return complete_runs(str(ctx.params.get("store") or DEFAULT_STORE), incomplete)


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="A run key (or a unique prefix of one, as "
                                       "results.csv prints it), or a method label.",
                                       metavar="RUN", autocompletion=_complete_run)],
    dataset: Annotated[Optional[str], typer.Option(help="The dataset label, when RUN is a "
                                                   "method label.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="The base seed, when RUN is a "
                                                "method label.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    quick: RunsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full stored record as "
                                          "JSON.")] = False,
) -> None:
    """Print one stored run in full: settings, versions, commit, timings, metrics, error.

    Example: `bayesbench show map --dataset digits --seed 0` or `bayesbench show 3f2a9c`

    Of several stored runs of one label, dataset and seed (quick and full runs, or runs
    under changed settings) it shows the one reports use (full first, then the latest)
    and lists the others' keys. Exit 2 when nothing, or more than one run, matches.
    """
    from bayesbench.show import find_run, print_run, record_json
    from bayesbench.store import ResultStore

    found = find_run(ResultStore.open_existing(store), run, dataset=dataset, seed=seed,
                     quick=quick)
    if as_json:
        typer.echo(record_json(found))
        return
    print_run(out, found)


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, no traceback.

    Typer handles usage errors (exit 2) and ``typer.Exit``; our own input errors
    (:class:`BayesbenchError`) pass through it and are printed here.
    """
    try:
        app()
    except BayesbenchError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a path the checks could not foresee (disk full, a race)
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[red]error:[/red] {escape(where)}{escape(exc.strerror or str(exc))}; "
                      "check the path, its permissions and the free space", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: finished runs are stored; rerun to resume.")
        sys.exit(130)
