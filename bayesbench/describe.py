"""What a config will run, resolved, before anything trains: the library behind
``bayesbench list --config FILE`` (and the dataset lookup of ``bayesbench priors --config``),
and behind ``bayesbench list``: a catalog of what is installed, kept as JSON in the dataset
cache folder under a fingerprint of the code and the packages, so a warm ``list`` imports
neither torch nor scikit-learn (:func:`catalog`), with shapes from the dataset cache.

Each dataset entry is built once (with the config's first base seed) so that its shapes,
classes and split sizes are the ones runs will see; a ``files`` dataset also reports where
each split comes from, the feature or text column used, and its shift and OOD files, so a
user can check their data before training.

>>> from bayesbench.config import parse_config
>>> cfg = parse_config({"datasets": [{"name": "markov", "params": {"num_classes": 3}}],
...                     "methods": [{"name": "mfvi", "sweep": {"prior_scale": [0.1, 1.0]}}]})
>>> [m.label for m in describe_methods(cfg)]
['mfvi@prior_scale=0.1', 'mfvi@prior_scale=1.0']
>>> d = describe_datasets(cfg)[0]
>>> d.label, d.input_kind, d.num_classes, d.class_names
('markov', 'tokens', 3, ['chain 0', 'chain 1', 'chain 2'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesbench.errors import BayesbenchError, ConfigError
from bayesbench.registry import DATASETS, resolve_names

if TYPE_CHECKING:  # bayesbench.config imports torch, scikit-learn and pandas: not for `list`
    from bayesbench.config import Config, Entry
    from bayesbench.models import ModelConfig


@dataclass
class MethodDescription:
    """One method entry of a config (one per sweep member), with its resolved parameters
    (the class's defaults merged with the config's ``params`` and sweep values)."""

    label: str
    name: str
    group: str
    params: dict[str, Any]
    swept: dict[str, Any]


@dataclass
class DatasetDescription:
    """One dataset entry of a config, built with ``seed``.

    ``sizes``: examples per split (``train``, ``val``, ``test``); ``shifts``: shift kind ->
    severity -> examples; ``ood``: OOD set -> examples; ``sources``: where each split, shifted
    set and OOD set is read from (``files`` datasets: file paths; ``val`` / ``test`` split from
    the training file say so); ``inputs``: the columns the inputs come from (``files``);
    ``model`` / ``training``: the settings its runs use (top-level merged with the entry's
    overrides). ``error``: the problem that stopped the build (then the shape fields are
    empty); the other entries are described all the same.
    """

    label: str
    name: str
    params: dict[str, Any]
    seed: int
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    input_kind: str = ""
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    class_names: list[str] | None = None
    vocab_size: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    shifts: dict[str, dict[int, int]] = field(default_factory=dict)
    ood: dict[str, int] = field(default_factory=dict)
    true_posterior: bool = False
    inputs: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe_methods(cfg: Config) -> list[MethodDescription]:
    """Every method entry of ``cfg`` (sweeps expanded), in config order."""
    return [MethodDescription(m.label, m.name, m.group, dict(m.params), dict(m.swept))
            for m in cfg.methods]


def dataset_entry(cfg: Config, label: str, flag: str = "--dataset") -> Entry:
    """The dataset entry of ``cfg`` labelled ``label`` (case-insensitive where unambiguous);
    an unknown label raises ConfigError naming ``flag`` and the config's labels."""
    labels = [d.label for d in cfg.datasets]
    (found,) = resolve_names([label], labels, flag, cfg.path)
    return next(d for d in cfg.datasets if d.label == found)


def dataset_model(cfg: Config, entry: Entry) -> ModelConfig:
    """The model settings runs on ``entry`` use: the config's ``model`` with its overrides."""
    return dataclasses.replace(cfg.model, **entry.model)


def build_dataset(entry: Entry) -> Any:
    """The :class:`~bayesbench.data.base.Dataset` of a config entry, its files checked."""
    dataset = DATASETS.get(entry.name)(**entry.params)
    dataset.check()
    return dataset


def describe_datasets(cfg: Config, shapes: bool = True) -> list[DatasetDescription]:
    """Every dataset entry of ``cfg``, built with the config's first base seed;
    ``shapes=False`` skips the build (names and parameters only)."""
    return [describe_dataset(cfg, e, shapes=shapes) for e in cfg.datasets]


def describe_dataset(cfg: Config, entry: Entry, shapes: bool = True) -> DatasetDescription:
    """:class:`DatasetDescription` of one entry of ``cfg``; a failed build (a data file, a
    parameter, a plugin's exception) is caught into ``error``."""
    seed = cfg.seeds[0]
    d = DatasetDescription(
        entry.label, entry.name, dict(entry.params), seed,
        model=dataclasses.asdict(dataset_model(cfg, entry)),
        training=dataclasses.asdict(dataclasses.replace(cfg.training, **entry.training)))
    if not shapes:
        return d
    try:
        from bayesbench.data.cache import DatasetCache

        dataset = build_dataset(entry)
        task = DatasetCache.default().build(type(dataset), entry.name, entry.params, seed,
                                            make=lambda: dataset.build(seed))
    except BayesbenchError as exc:
        d.error = str(exc)
        return d
    except Exception as exc:  # a plugin's build that fails: reported like a data error
        d.error = f"building it failed: {type(exc).__name__}: {exc}"[:2000]
        return d
    d.input_kind = task.input_kind
    d.input_shape = list(task.train.x.shape[1:])
    d.num_classes = task.num_classes
    d.class_names = list(task.class_names) if task.class_names is not None else None
    d.vocab_size = task.vocab_size
    d.sizes = {"train": len(task.train), "val": len(task.val), "test": len(task.test)}
    d.shifts = {k: {s: len(split) for s, split in sorted(sev.items())}
                for k, sev in task.shifted.items()}
    d.ood = {k: len(x) for k, x in task.ood.items()}
    d.true_posterior = task.test.true_probs is not None
    if hasattr(dataset, "feature_names") and hasattr(dataset, "label_column"):
        d.inputs, d.sources = _file_sources(dataset, task.input_kind)
    return d


def _file_sources(ds: Any, input_kind: str) -> tuple[str, dict[str, str]]:
    """Where a ``files`` dataset's inputs and splits come from (its public attributes)."""
    if str(ds.train).lower().endswith(".npz"):
        inputs = f"array 'x' ({input_kind})"
    elif ds.text_column is not None:
        inputs = (f"text column '{ds.text_column}' (max_length {ds.max_length}, words seen "
                  f"{ds.min_count}+ times, at most {ds.max_vocab})")
    elif input_kind == "features":
        names = ds.feature_names
        shown = ", ".join(names[:20]) + (f", … ({len(names) - 20} more)" if len(names) > 20
                                         else "")
        chosen = "feature_columns" if ds.feature_columns is not None else "numeric columns"
        inputs = f"{len(names)} {chosen}: {shown}"
    else:
        inputs = input_kind
    npz = str(ds.train).lower().endswith(".npz")
    label = "array 'y'" if npz else f"label column '{ds.label_column}'"
    sources = {"train": f"{ds.train} ({label})"}
    for split, fraction in (("val", ds.val_fraction), ("test", ds.test_fraction)):
        path = getattr(ds, split)
        sources[split] = path if path else f"{fraction:g} of {ds.train}, stratified"
    for kind, paths in ds.shifted.items():
        for severity, path in enumerate(paths, 1):
            sources[f"shift/{kind}/{severity}"] = path
    for name, path in ds.ood.items():
        sources[f"ood/{name}"] = path
    return inputs, sources


def check_described(descriptions: list[DatasetDescription], path: str) -> None:
    """Raise the first dataset's error (ConfigError naming the config and the entry)."""
    for d in descriptions:
        if d.error:
            raise ConfigError(f"{path}: datasets '{d.label}': {d.error}")


# --------------------------------------------------------------------------- printing


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items()) or "-"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def print_config(console: Any, cfg: Config, datasets: list[DatasetDescription],
                 methods: list[MethodDescription]) -> None:
    """``bayesbench list --config``: the config's settings, datasets and methods (rich)."""
    from rich.markup import escape as e
    from rich.table import Table

    def line(text: str, indent: int = 2) -> None:
        console.print(" " * indent + text, highlight=False, soft_wrap=True)

    runs = len(methods) * len(datasets) * len(cfg.seeds)
    line(f"[bold]{e(cfg.path)}[/bold]: {_plural(len(methods), 'method')} × "
         f"{_plural(len(datasets), 'dataset')} × {_plural(len(cfg.seeds), 'seed')} "
         f"{cfg.seeds} = {_plural(runs, 'run')}", 0)
    for name in ("model", "training", "evaluation", "quick"):
        line(f"{name}: {e(_params(dataclasses.asdict(getattr(cfg, name))))}")
    built = any(d.input_kind or d.error for d in datasets)
    t = Table(title="Datasets", title_justify="left")
    for col in ["label", "name"] + (["input", "classes", "train/val/test", "shifts", "ood"]
                                    if built else []):
        t.add_column(col, style="bold" if col == "label" else None)
    for d in datasets:
        row = [e(d.label), e(d.name)]
        if built and d.error:
            row += ["[red]cannot be built (below)[/red]", "", "", "", ""]
        elif built:
            shape = f"{d.input_kind} {d.input_shape}" + (
                f", vocab {d.vocab_size}" if d.vocab_size else "")
            names = d.class_names or []
            classes = str(d.num_classes) + (": " + ", ".join(names[:8])
                                            + (", …" if len(names) > 8 else "") if names else "")
            row += [e(shape), e(classes), "/".join(str(d.sizes[s]) for s in ("train", "val",
                                                                              "test")),
                    e(", ".join(f"{k} ({_plural(len(v), 'severity')})".replace("severitys",
                                                                               "severities")
                                for k, v in d.shifts.items()) or "-"),
                    e(", ".join(f"{k} ({n})" for k, n in d.ood.items()) or "-")]
        t.add_row(*row)
    console.print(t)
    for d in datasets:
        built_with = f", built with seed {d.seed}" if d.input_kind else ""
        line(f"[bold]{e(d.label)}[/bold] ({e(d.name)}{built_with})", 0)
        line(f"parameters: {e(_params(d.params))}")
        for k in ("model", "training"):
            if getattr(d, k) != dataclasses.asdict(getattr(cfg, k)):
                line(f"{k} (overridden): {e(_params(getattr(d, k)))}")
        if d.error:
            line(f"[red]error[/red]: {e(d.error)}")
        if d.inputs:
            line(f"inputs: {e(d.inputs)}")
        for split, source in d.sources.items():
            kind, _, rest = split.partition("/")
            size = (d.sizes.get(split) if not rest else d.ood.get(rest) if kind == "ood"
                    else d.shifts.get(rest.split("/")[0], {}).get(int(rest.split("/")[1])))
            rows = f" ({_plural(size, 'example')})" if size is not None else ""
            line(f"{e(split)}: {e(source)}{rows}")
    t = Table(title="Methods", title_justify="left")
    for col in ["label", "name", "parameters (resolved)"]:
        t.add_column(col, style="bold" if col == "label" else None)
    for m in methods:
        t.add_row(e(m.label), e(m.name), e(_params(m.params)))
    console.print(t)


# --------------------------------------------------------------------------- `bayesbench list`

CATALOG_FILE = "list-catalog.json"


def catalog_fingerprint() -> str:
    """What the listing depends on: bayesbench's source, the registered plugins (entry
    points) and the installed packages (each import folder's mtime changes when a package is
    installed, upgraded or removed). Cheap: no package is imported."""
    from importlib.metadata import entry_points

    from bayesbench.run_plan import package_source_digest

    digest = hashlib.sha256(sys.version.encode())
    digest.update(package_source_digest().encode())
    for group in ("bayesbench.methods", "bayesbench.datasets", "bayesbench.backbones"):
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            digest.update(f"{group}:{ep.name}={ep.value}\0".encode())
    here = os.getcwd()
    for entry in sys.path:
        if entry and os.path.abspath(entry) != here:
            try:
                digest.update(f"{entry}:{os.stat(entry).st_mtime_ns}\0".encode())
            except OSError:
                continue
    return digest.hexdigest()


def make_catalog() -> dict[str, Any]:
    """Methods, backbones, datasets and metrics with their descriptions (JSON-ready).

    Imports every registered object (torch, scikit-learn, ...); a dataset's ``key`` is its
    dataset-cache key at default parameters and seed 0 (None: not cached). ``broken``: some
    entry could not be loaded (such a catalog is not stored)."""
    from bayesbench.backbones import support_matrix
    from bayesbench.data.cache import digest, key_material
    from bayesbench.metrics import METRICS
    from bayesbench.registry import METHODS

    broken = False

    def description(registry: Any, name: str) -> tuple[str, str]:
        nonlocal broken
        try:
            return str(registry.get(name).description), ""
        except Exception as exc:  # a broken plugin should not break `list`
            broken = True
            return "", f"cannot load: {exc}"

    methods = [[n, *description(METHODS, n)] for n in METHODS.names()]
    datasets = []
    for name in DATASETS.names():
        text, error = description(DATASETS, name)
        key = None
        if not error:
            try:
                material = key_material(DATASETS.get(name), name, {}, 0)
                key = None if material is None else digest(material)
            except Exception:  # noqa: S110 - no key: shapes are built, never cached
                pass
        datasets.append([name, text, error, key])
    backbones = [[label, text, reasons] for label, text, reasons in support_matrix()]
    metrics = [[m.name, m.arrow, f"{m.tolerance:g}" if m.gated else "not gated", m.description]
               for m in METRICS.values()]
    return {"methods": methods, "backbones": backbones, "datasets": datasets,
            "metrics": metrics, "broken": broken}


def catalog(root: Path | None) -> dict[str, Any]:
    """:func:`make_catalog`, read from ``root/list-catalog.json`` when it was made from
    this code and these packages (then nothing heavy is imported), else made and stored
    there (``root`` None: the cache is off, made every time)."""
    from bayesbench.data.cache import read_json, write_json

    fingerprint = catalog_fingerprint()
    path = None if root is None else root / CATALOG_FILE
    if path is not None:
        stored = read_json(path)
        if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint:
            return stored["catalog"]
    made = make_catalog()
    if path is not None and not made["broken"]:
        try:
            write_json(path, {"fingerprint": fingerprint, "catalog": made})
        except OSError:
            pass
    return made


def dataset_shapes(cat: dict[str, Any], build: bool) -> dict[str, dict[str, Any] | str | None]:
    """Dataset name -> its ``Task.summary()`` at default parameters and seed 0 when the
    dataset cache holds it (or ``build``: built now, through the cache), else None; a
    dataset that cannot be built with no parameters gets the reason (a string)."""
    from bayesbench.data.cache import DatasetCache

    cache = DatasetCache.default()
    out: dict[str, dict[str, Any] | str | None] = {}
    for name, _, error, key in cat["datasets"]:
        known = cache.summary(name, key) if key and cache.enabled else None
        if known is None and build and not error:
            from bayesbench.data.cache import task_summary

            try:
                known = task_summary(cache.build(DATASETS.get(name), name, {}, 0))
            except Exception as exc:  # e.g. a dataset that needs parameters (files)
                known = f"needs parameters: {' '.join(str(exc).split())}"
                if key and cache.enabled:
                    cache.remember_failure(name, key, known)
        out[name] = known
    return out


def _fits(console: Any, table: Any, cells: list[list[str]]) -> bool:
    """Whether ``table`` renders at the console's width with every word of every cell
    whole (rich folds or cuts a word wider than its column, or squeezes a column away)."""
    import io
    from collections import Counter

    from rich.console import Console

    probe = Console(file=io.StringIO(), width=console.width, color_system=None,
                    legacy_windows=False)
    probe.print(table)
    text = probe.file.getvalue()
    words = Counter(w for row in cells for c in row for w in console.render_str(c).plain.split())
    return all(text.count(w) >= n for w, n in words.items())


def print_section(console: Any, title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table of ``rows`` (rich markup; the first column holds names) when it fits the
    terminal with every word whole, else one block per row: the name, then each other
    column indented, wrapped between words and never inside one."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, style="bold" if i == 0 else None, no_wrap=i == 0,
                         overflow="fold")  # a long word folds rather than loses its end
    for row in rows:
        table.add_row(*row)
    if _fits(console, table, rows):
        console.print(table)
        return
    import textwrap

    from rich.text import Text

    def wrapped(text: str, indent: int, style: str = "") -> None:
        width = max(console.width - indent, 20)
        for line in textwrap.wrap(text, width, break_long_words=False,
                                  break_on_hyphens=False) or [""]:
            console.print(Text(" " * indent + line, style=style), soft_wrap=True)

    console.print(Text(title, style="italic"), soft_wrap=True)
    for row in rows:
        wrapped(console.render_str(row[0]).plain, 2, "bold")
        for col, cell in zip(columns[1:], row[1:]):
            if cell and cell != "-":
                label = "" if col == "description" else f"{col}: "
                wrapped(label + console.render_str(cell).plain, 4)


def print_catalog(console: Any, cat: dict[str, Any],
                  shapes: dict[str, dict[str, Any] | str | None] | None) -> None:
    """``bayesbench list``: methods, backbones, datasets (with ``shapes`` unless None) and
    metrics; names are never cut, whatever the terminal width."""
    from rich.markup import escape as e

    def text(description: str, error: str) -> str:
        return f"[red]{e(error)}[/red]" if error else e(description)

    print_section(console, "Methods", ["name", "description"],
                  [[e(n), text(d, err)] for n, d, err in cat["methods"]])
    rows = []
    for label, description, reasons in cat["backbones"]:
        runs = ", ".join(m for m, why in reasons.items() if why is None)
        skips = "; ".join(f"{m}: {why.split(' backbone ', 1)[-1]}" if m else why
                          for m, why in reasons.items() if why)
        rows.append([e(label), e(description), e(runs) or "-", e(skips) or "-"])
    print_section(console, "Backbones (backbone: in the config) and the methods each runs",
                  ["name", "description", "runs", "skips (why)"], rows)
    columns = ["name", "description"]
    if shapes is not None and not any(shapes.values()):
        unknown = len(shapes)  # nothing built yet: no empty shape columns, the hint below
        shapes = None
    else:
        unknown = 0
    if shapes is not None:
        columns += ["input", "classes", "train/val/test", "shifts", "ood"]
    rows = []
    for name, description, error, _ in cat["datasets"]:
        row = [e(name), text(description, error)]
        s = None if shapes is None else shapes.get(name)
        if shapes is not None and isinstance(s, dict):
            row += [e(str(s["input"])), str(s["classes"]), str(s["train/val/test"]),
                    e(", ".join(f"{k} ({len(v)})" for k, v in s["shifts"].items())),
                    e(", ".join(f"{k} ({n})" for k, n in s["ood"].items()))]
        elif shapes is not None and isinstance(s, str):
            row += [e(s[:60]), "", "", "", ""]
        elif shapes is not None:
            row += ["not built yet", "", "", "", ""]
        rows.append(row)
    unknown += sum(1 for row in rows if "not built yet" in row[2:3])
    print_section(console, "Datasets", columns, rows)
    if unknown:
        console.print(f"[dim]{unknown} dataset(s) not built yet: `bayesbench list --shapes` "
                      "builds them once (seconds each) and caches them; `bayesbench cache "
                      "info` says where.[/dim]", highlight=False)
    print_section(console, "Metrics", ["name", "better", "gate tolerance", "description"],
                  [[e(n), e(a), t, e(d)] for n, a, t, d in cat["metrics"]])
