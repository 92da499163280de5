"""benchmarks.yaml: load, validate, and expand into fully resolved :class:`RunSpec` s.

Every error names the file, the key path and the fix, and is raised before anything runs.
Numeric settings follow :data:`FIELD_RULES` (finite, in range, below sane upper bounds),
in the top-level sections and in per-dataset overrides alike.

Layout (all sections but ``datasets`` and ``methods`` optional)::

    seeds: [0, 1, 2]                 # base seeds; a run's training seed is derived from
                                     # (base seed, method label, dataset label)
    model:      {d_model: 64, depth: 2, heads: 4, ...}      # ModelConfig
    training:   {epochs: 30, batch_size: 64, lr: 0.001, ...} # TrainingConfig
    evaluation: {ece_bins: 15, mc_samples: 16, batch_size: 512}
    quick:      {epochs: 2, max_train: 384, max_eval: 128, mc_samples: 4, severities: 2}
    datasets:
      - name: digits                 # registry name or 'package.module:Class'
        label: digits                # optional; defaults to name
        params: {}                   # keyword arguments of the dataset class
        training: {epochs: 40}       # optional per-dataset overrides of model/training
    methods:
      - name: mc_dropout
        label: mc_dropout            # optional; lets one method appear with several settings
        params: {samples: 16}
      - name: mfvi
        params: {prior: gaussian}
        sweep:                       # optional: one entry per combination (cartesian product),
          prior_scale: [0.1, 1.0]    # labelled 'mfvi@prior_scale=0.1+temperature=1.0' etc.,
          temperature: [1.0, 0.1]    # grouped under 'mfvi' in reports (curves over the sweep)
    executor:                        # optional: where runs execute (never part of a run key)
      kind: local                    # local (serial / --workers processes), dask or slurm
      workers: 2                     # local processes, or the LocalCluster's workers
      scheduler: tcp://10.0.0.5:8786 # dask: an existing scheduler (none: a LocalCluster)
      slurm: {queue: gpu, account: lab, cores: 4, memory: 16GB, walltime: "04:00:00",
              gpus: 1, jobs: 8}      # see ExecutorConfig / SlurmConfig
    backbone:                        # optional (also per dataset): the network methods build
      name: hf                       # on; registry name, 'package.module:Class' or entry point
      params: {model: ./my-bert, pretrained: true, train: all}   # the backbone's arguments
                                     # default: transformer (the model: section; no run key)
    keep_predictions: true           # store each evaluation split's predictions (default), so
                                     # `bayesbench rescore` recomputes metrics (no run key)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import re
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bayesbench.backbones import UNHASHED_BACKBONE, backbone_spec, default_backbone
from bayesbench.errors import BayesbenchError, ConfigError, UnknownNameError, shorten
from bayesbench.execution.limits import check_parallelism  # noqa: F401 - re-exported
from bayesbench.methods.base import EvaluationConfig, TrainingConfig
from bayesbench.models import ModelConfig
from bayesbench.registry import DATASETS, METHODS
from bayesbench.scoring import MAX_ECE_BINS


@dataclass
class QuickConfig:
    """The --quick budget: every method on every dataset, tiny data and training, and only the
    first ``seeds`` base seeds (a smoke run checks that everything runs, not seed variance)."""

    epochs: int = 2
    max_train: int = 384
    max_eval: int = 128
    mc_samples: int = 4
    seeds: int = 1
    severities: int = 2  # of each shift kind: the mildest and the strongest


EXECUTOR_KINDS = ("local", "dask", "slurm")


@dataclass(frozen=True)
class SlurmConfig:
    """``executor.slurm``: one Slurm job (dask-jobqueue's ``SLURMCluster``) hosts ``processes``
    Dask worker processes, each running one run at a time. ``processes`` 0 means one per
    ``gpus`` × ``runs_per_gpu`` with GPUs, else one per core. ``gpus`` asks ``--gres=gpu:N``."""

    queue: str | None = None  # partition (#SBATCH -p)
    account: str | None = None  # #SBATCH -A
    cores: int = 1  # cores per job
    processes: int = 0  # Dask worker processes (concurrent runs) per job; 0: see above
    memory: str = "4GB"  # per job
    walltime: str | int = "01:00:00"  # per job (unquoted 04:00:00 is YAML's 14400 s: fine)
    gpus: int = 0  # GPUs per job
    jobs: int = 1  # jobs submitted for the grid
    job_extra: list[str] = ()  # more #SBATCH directives, e.g. ["--qos=high"] (a tuple)
    prologue: list[str] = ()  # shell lines before the worker starts (module load ...)
    python: str | None = None  # the workers' python (default: the driver's)
    interface: str | None = None  # network interface of scheduler and workers, e.g. ib0
    log_directory: str | None = None  # Slurm's job output files
    local_directory: str | None = None  # workers' scratch space
    squeue_interval: float = 30.0  # s between squeue checks for jobs that died at start


@dataclass(frozen=True)
class ExecutorConfig:
    """``executor``: where the runs execute. Never part of a run key: the same run gives the
    same numbers wherever it runs (on the same device type and threads), so stored results
    and resume are shared between executors. Flags of ``bayesbench run`` override it."""

    kind: str = "local"  # local | dask | slurm
    workers: int = 1  # local worker processes, or the LocalCluster's workers (dask)
    scheduler: str | None = None  # dask: address of an existing scheduler
    connect_timeout: float = 30.0  # seconds to reach the scheduler before giving up (exit 2)
    max_tries: int = 3  # a run whose worker dies this many times is stored failed
    runs_per_gpu: int = 1  # concurrent runs sharing one GPU (Dask resource GPU=1/N each)
    slurm: SlurmConfig = SlurmConfig()


# --------------------------------------------------------------------------- value rules


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric setting: finite, ``low <= value <= high`` (``low_open``
    / ``high_open`` make an end exclusive; ``high=None``: no upper bound). ``note`` is added
    to the error message (e.g. what 0 means)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):  # (an int of 400 digits
            return False                                            # has no float)
        if value < self.low or (self.low_open and value == self.low):
            return False
        return self.high is None or value < self.high or (value == self.high
                                                            and not self.high_open)

    def describe(self, integer: bool) -> str:
        low, high = _number(self.low), _number(self.high)
        if integer and self.high is not None and not self.low_open and not self.high_open:
            return f"an integer from {low} to {high}"
        if self.high is None:
            return f"a finite number {'>' if self.low_open else '>='} {low}"
        return (f"a number in {'(' if self.low_open else '['}{low}, {high}"
                f"{')' if self.high_open else ']'}")


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


MAX_D_MODEL = 4096
MAX_DEPTH = 64
MAX_HEADS = 64
MAX_MODEL_PARAMETERS = 10**9  # encoder weights, about depth * (4 + 2 * mlp_ratio) * d_model^2
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_MC_SAMPLES = 1000
MAX_EXAMPLES = 10_000_000
MAX_SEED = 2**31 - 1
MAX_LABEL_LENGTH = 100
MAX_YAML_NODES = 100_000  # values in the document once YAML aliases are expanded

FIELD_RULES: dict[type, dict[str, Range]] = {
    ModelConfig: {
        "d_model": Range(1, MAX_D_MODEL),
        "depth": Range(1, MAX_DEPTH),
        "heads": Range(1, MAX_HEADS),
        "mlp_ratio": Range(0, 64, low_open=True),
        "dropout": Range(0, 1, high_open=True),
        "attention_dropout": Range(0, 1, high_open=True),
    },
    TrainingConfig: {
        "epochs": Range(1, MAX_EPOCHS),
        "batch_size": Range(1, MAX_BATCH_SIZE),
        "lr": Range(0, low_open=True),
        "weight_decay": Range(0),
        "grad_clip": Range(0, note="0 turns clipping off"),
    },
    EvaluationConfig: {
        "ece_bins": Range(1, MAX_ECE_BINS),
        "mc_samples": Range(1, MAX_MC_SAMPLES),
        "batch_size": Range(1, MAX_BATCH_SIZE),
    },
    QuickConfig: {
        "epochs": Range(1, MAX_EPOCHS),
        "max_train": Range(1, MAX_EXAMPLES),
        "max_eval": Range(1, MAX_EXAMPLES),
        "mc_samples": Range(1, MAX_MC_SAMPLES),
        "seeds": Range(1, 1000),
        "severities": Range(1, 1000, note="of each shift kind, evenly spaced; 1 keeps the "
                                           "strongest"),
    },
    ExecutorConfig: {
        "workers": Range(1, 4096),
        "connect_timeout": Range(0, 3600, low_open=True),
        "max_tries": Range(1, 100),
        "runs_per_gpu": Range(1, 64),
    },
    SlurmConfig: {
        "cores": Range(1, 4096),
        "processes": Range(0, 4096, note="0: gpus × runs_per_gpu, or one per core"),
        "gpus": Range(0, 64),
        "jobs": Range(1, 100_000),
        "squeue_interval": Range(0, 86_400, low_open=True),
    },
}
"""The rule of every numeric setting of each config section; the same rules apply to the
top-level sections and to every dataset's ``model:`` / ``training:`` overrides."""


def section_errors(cls: type, values: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, problem)`` for every value of a ``cls`` section (``values``: all its fields,
    already type-checked) that breaks :data:`FIELD_RULES` or a cross-field rule; ``field``
    is "" for a problem of the combination."""
    errors: list[tuple[str, str]] = []
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, rule in FIELD_RULES.get(cls, {}).items():
        value = values[name]
        if not rule.admits(value):
            note = f" ({rule.note})" if rule.note else ""
            errors.append((name, f"must be {rule.describe(hints[name] is int)}{note}, got "
                                 f"{shorten(value)}; e.g. {defaults[name]!r} (the default)"))
    if not errors and cls in (ExecutorConfig, SlurmConfig):
        return _executor_errors(values)
    if errors or cls is not ModelConfig:
        return errors
    d_model, heads, depth, ratio = (values[k] for k in ("d_model", "heads", "depth",
                                                        "mlp_ratio"))
    if d_model % heads:
        errors.append(("", f"d_model={d_model} must be divisible by heads={heads}, e.g. "
                           f"heads={math.gcd(d_model, 4) or 1}"))
    if int(d_model * ratio) < 1:
        errors.append(("mlp_ratio", f"d_model * mlp_ratio = {d_model * ratio:g} leaves the MLP "
                                    "no hidden unit; raise mlp_ratio, e.g. 2.0"))
    weights = depth * (4 + 2 * ratio) * d_model**2
    if weights > MAX_MODEL_PARAMETERS:
        errors.append(("", f"d_model={d_model}, depth={depth}, mlp_ratio={ratio:g} is about "
                           f"{weights / 1e9:.1f} billion weights, over the limit of "
                           f"{MAX_MODEL_PARAMETERS / 1e9:g} billion; make the model smaller"))
    return errors


_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([kKMGTP]i?)?B?$")


def _executor_errors(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules of ``executor`` / ``executor.slurm`` beyond the numeric ranges."""
    errors: list[tuple[str, str]] = []
    if "kind" in values and values["kind"] not in EXECUTOR_KINDS:
        close = difflib.get_close_matches(str(values["kind"]), EXECUTOR_KINDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        errors.append(("kind", f"{hint}choose one of {', '.join(EXECUTOR_KINDS)}, got "
                               f"{shorten(values['kind'])}"))
    if values.get("scheduler") is not None and not values["scheduler"].strip():
        errors.append(("scheduler", "is empty; give an address like tcp://10.0.0.5:8786, or "
                                    "leave it out to start a local Dask cluster"))
    if isinstance(values.get("walltime"), int) and values["walltime"] < 1:
        errors.append(("walltime", f"must be positive, got {values['walltime']}"))
    elif isinstance(values.get("walltime"), str) and not _WALLTIME.match(values["walltime"]):
        errors.append(("walltime", f"must be Slurm's [D-]HH:MM:SS, e.g. \"04:00:00\" (quote it), "
                                   f"got {shorten(values['walltime'])}"))
    if "memory" in values and not _MEMORY.match(values["memory"].strip()):
        errors.append(("memory", f"must be an amount like 16GB or 4000MB, got "
                                 f"{shorten(values['memory'])}"))
    return errors


@dataclass
class Entry:
    """A dataset or method entry of the config, resolved."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    group: str = ""  # the entry's label before sweep expansion (= label without a sweep)
    swept: dict[str, Any] = field(default_factory=dict)  # this member's sweep values
    version: int = 1  # the class's code version (Method.version / Dataset.version)
    backbone: dict[str, Any] | None = None  # datasets: this dataset's backbone section

    def __post_init__(self) -> None:
        self.group = self.group or self.label


@dataclass
class Config:
    path: str
    seeds: list[int]
    model: ModelConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    quick: QuickConfig
    datasets: list[Entry]
    methods: list[Entry]
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # not in any run key
    backbone: dict[str, Any] = field(default_factory=default_backbone)
    keep_predictions: bool = True  # not in any run key


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: (method label, dataset label, base seed) plus all settings.

    ``key`` hashes everything; ``config_hash`` everything but the seed. The code versions
    (``Method.version``, ``Dataset.version``) enter both hashes only once a class raises its
    version above 1, so runs stored before versions existed keep their keys. Likewise the
    execution settings that change numbers (``threads``: torch threads, about 1e-8 apart;
    ``device``: the device type) enter them only when they differ from the defaults (1 thread,
    ``cpu``): such runs never mix with the default's, and stored runs keep their keys.
    """

    label: str
    method: str
    method_params: dict[str, Any]
    group: str  # the method entry's label before sweep expansion
    swept: dict[str, Any]  # sweep values of this member ({} outside sweeps)
    dataset_label: str
    dataset: str
    dataset_params: dict[str, Any]
    seed: int
    model: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    quick: dict[str, Any] | None  # the QuickConfig applied, or None for a full run
    method_version: int = 1
    dataset_version: int = 1
    threads: int = 1
    device: str = "cpu"
    backbone: dict[str, Any] = field(default_factory=default_backbone)
    keep_predictions: bool = True  # store the evaluation splits' predictions; never hashed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _hashed(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["keep_predictions"]  # what is kept, not what is computed
        for name, default in _UNHASHED_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    @property
    def key(self) -> str:
        return _digest(self._hashed())[:16]

    @property
    def config_hash(self) -> str:
        d = self._hashed()
        d.pop("seed")
        return _digest(d)[:12]

    @property
    def training_seed(self) -> int:
        return derive_seed(self.seed, self.label, self.dataset_label)


_UNHASHED_DEFAULTS = {"method_version": 1, "dataset_version": 1, "threads": 1, "device": "cpu",
                      "backbone": UNHASHED_BACKBONE}
"""RunSpec fields left out of the hashes while they hold these values (see RunSpec)."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def derive_seed(base_seed: int, method_label: str, dataset_label: str) -> int:
    """A stable 31-bit seed from (base seed, method label, dataset label)."""
    h = hashlib.sha256(f"{base_seed}|{method_label}|{dataset_label}".encode()).hexdigest()
    return int(h[:8], 16) & 0x7FFFFFFF


# --------------------------------------------------------------------------- validation


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.path}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping (key: value), got {type(value).__name__}")
        return value

    def known_keys(self, value: dict[str, Any], allowed: list[str], where: str) -> None:
        for key in value:
            if key not in allowed:
                name = key if isinstance(key, str) and len(key) <= 60 else shorten(key, 60)
                close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.fail(f"{where}.{name}" if where else str(name),
                          f"unknown key; {hint}allowed keys: {', '.join(allowed)}")

    def typed(self, value: Any, annotation: Any, where: str) -> Any:
        """Check ``value`` against a simple annotation (int, float, str, bool, list, Optional)."""
        ok, converted = _conforms(value, annotation)
        if not ok:
            self.fail(where, f"expected {_type_name(annotation)}, got {shorten(value)}")
        return converted

    def dataclass_section(self, cls: type, value: Any, where: str, base: Any = None) -> Any:
        """The ``cls`` section at ``where``: known keys, types, then :func:`section_errors` on
        the values it ends up with (``base``'s where ``value`` sets nothing), so overrides get
        exactly the checks of a top-level section."""
        data = self.mapping(value, where)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.known_keys(data, list(fields), where)
        hints = typing.get_type_hints(cls)
        out = {k: self.typed(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        start = dataclasses.asdict(base) if base is not None else {
            n: f.default for n, f in fields.items()}
        for name, problem in section_errors(cls, {**start, **out}):
            self.fail(f"{where}.{name}" if name else where, problem)
        try:
            return cls(**{**start, **out})
        except (TypeError, ValueError) as exc:
            self.fail(where, shorten_text(str(exc)))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _conforms(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        for arg in typing.get_args(annotation):
            ok, conv = _conforms(value, arg)
            if ok:
                return True, conv
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return True, float(value)
            except OverflowError:  # an integer beyond any float
                return False, value
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        converted = []
        for v in value:
            ok, conv = _conforms(v, inner)
            if not ok:
                return False, value
            converted.append(conv)
        return True, converted
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    return True, value  # annotations we don't check (custom types)


def check_parameters(cls: type, params: dict[str, Any], v: _Validator, where: str) -> dict:
    """Check ``params`` against ``cls.__init__``'s signature; instantiate once so the class's
    own checks (ValueError) surface now, not in the middle of a run."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations in a user's class: skip type checks
        hints = {}
    accepted = [n for n, p in sig.parameters.items()
                if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    if not takes_any:
        if not accepted and params:
            v.fail(where, f"{cls.__name__} takes no parameters; remove 'params'")
        v.known_keys(params, accepted, where)
    out = {k: v.typed(val, hints.get(k, Any), f"{where}.{k}") for k, val in params.items()}
    try:
        cls(**out)
    except (TypeError, ValueError, BayesbenchError) as exc:
        v.fail(where, shorten_text(" ".join(str(exc).split()), 600))
    # the resolved parameters include the defaults, so a changed default makes new runs
    defaults = {n: p.default for n, p in sig.parameters.items()
                if n in accepted and p.default is not p.empty}
    return {**defaults, **out}


def _entries(v: _Validator, raw: Any, section: str, registry: Any, base_cls: type) -> list[Entry]:
    if not isinstance(raw, list) or not raw:
        v.fail(section, "expected a non-empty list of entries like '- name: ...'")
    out: list[Entry] = []
    labels: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{section}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = v.mapping(item, where)
        allowed = ["name", "label", "params"] + (["model", "training", "backbone"]
                                                 if section == "datasets"
                                                 else ["sweep"])
        v.known_keys(item, allowed, where)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            v.fail(f"{where}.name", "required: the registry name or 'package.module:Class'")
        try:
            cls = registry.get(name)
        except UnknownNameError as exc:
            v.fail(f"{where}.name", str(exc))
        # "MAP" means "map": the registered spelling names the entry, so its label and run
        # key are those of "map" (a rerun with either spelling finds the same stored runs)
        name = registry.canonical(name)
        if not (isinstance(cls, type) and issubclass(cls, base_cls)):
            v.fail(f"{where}.name", f"'{name}' is not a {base_cls.__module__}.{base_cls.__name__}")
        version = cls.version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            v.fail(f"{where}.name", f"{cls.__name__}.version is {version!r}; a class's code "
                   "version must be a positive integer (1, then raised when results change)")
        label = item.get("label", name if ":" not in name else name.rsplit(":", 1)[1])
        if not isinstance(label, str) or not label or "/" in label or not label.isprintable():
            v.fail(f"{where}.label", "must be a non-empty string without '/' or control "
                   f"characters, got {shorten(label, 80)}")
        if len(label) > MAX_LABEL_LENGTH:
            v.fail(f"{where}.label", f"is {len(label)} characters long, over the limit of "
                   f"{MAX_LABEL_LENGTH} (labels name report files); give a shorter label than "
                   f"'{label[:40]}…'")
        if label in labels:
            v.fail(f"{where}.label", f"'{label}' is used twice; give each entry its own label")
        labels.add(label)
        params = v.mapping(item.get("params"), f"{where}.params")
        model = v.mapping(item.get("model"), f"{where}.model")
        training = v.mapping(item.get("training"), f"{where}.training")
        for swept in _sweep_members(v, item.get("sweep"), params, f"{where}.sweep"):
            member = label + ("@" + "+".join(f"{k}={val}" for k, val in swept.items())
                              if swept else "")
            checked = check_parameters(cls, {**params, **swept}, v,
                                       f"{where}.sweep" if swept else f"{where}.params")
            out.append(Entry(name, member, checked, model, training, label, swept, version))
    return out


def _sweep_members(v: _Validator, sweep: Any, params: dict, where: str) -> list[dict]:
    """The cartesian product of a ``sweep`` mapping (parameter -> list of values)."""
    if sweep is None:
        return [{}]
    sweep = v.mapping(sweep, where)
    if not sweep:
        v.fail(where, "empty; list parameter values to sweep, e.g. prior_scale: [0.1, 1.0]")
    members: list[dict] = [{}]
    for key, values in sweep.items():
        if key in params:
            v.fail(f"{where}.{key}", "is also set in params; set it in one place only")
        if not isinstance(values, list) or not values:
            v.fail(f"{where}.{key}", "expected a non-empty list of values")
        members = [{**m, key: val} for m in members for val in values]
    return members


TOP_LEVEL_KEYS = ["seeds", "model", "training", "evaluation", "quick", "datasets", "methods",
                  "executor", "backbone", "keep_predictions"]


def parse_config(data: Any, path: str = "<config>") -> Config:
    """Validate a parsed YAML document (see the module docstring for the layout)."""
    from bayesbench.data.base import Dataset
    from bayesbench.methods.base import Method

    v = _Validator(path)
    data = v.mapping(data, "top level")
    v.known_keys(data, TOP_LEVEL_KEYS, "")
    seeds = v.typed(data.get("seeds", [0]), list[int], "seeds")
    if not seeds:
        v.fail("seeds", "empty; list base seeds, e.g. [0, 1, 2]")
    problem = seed_problem(seeds)
    if problem:
        v.fail("seeds", f"{problem}, e.g. [0, 1, 2]")
    model = v.dataclass_section(ModelConfig, data.get("model"), "model")
    training = v.dataclass_section(TrainingConfig, data.get("training"), "training")
    evaluation = v.dataclass_section(EvaluationConfig, data.get("evaluation"), "evaluation")
    quick = v.dataclass_section(QuickConfig, data.get("quick"), "quick")
    if "datasets" not in data:
        v.fail("datasets", "required: list the datasets to benchmark, e.g. '- name: digits'")
    if "methods" not in data:
        v.fail("methods", "required: list the methods to benchmark, e.g. '- name: map'")
    datasets = _entries(v, data["datasets"], "datasets", DATASETS, Dataset)
    methods = _entries(v, data["methods"], "methods", METHODS, Method)
    for i, d in enumerate(datasets):  # per-dataset overrides must be valid too
        v.dataclass_section(ModelConfig, d.model, f"datasets[{i}].model", base=model)
        v.dataclass_section(TrainingConfig, d.training, f"datasets[{i}].training", base=training)
    executor = executor_section(v, data.get("executor"))
    backbone = backbone_section(v, data.get("backbone"), "backbone")
    for i, (d, item) in enumerate(zip(datasets, data["datasets"])):
        if isinstance(item, dict) and "backbone" in item:
            d.backbone = backbone_section(v, item["backbone"], f"datasets[{i}].backbone")
    keep = v.typed(data.get("keep_predictions", True), bool, "keep_predictions")
    return Config(path, seeds, model, training, evaluation, quick, datasets, methods, executor,
                  backbone, keep)


def backbone_section(v: _Validator, raw: Any, where: str) -> dict[str, Any]:
    """A ``backbone`` section resolved to ``{"name", "params"}`` (params with the class's
    defaults, checked against its signature; ``"version"`` too when the class's is above 1;
    the class is instantiated once, so e.g. the hf backbone's missing ``transformers`` is
    reported now, exit 2). None: the default."""
    from bayesbench.backbones import Backbone
    from bayesbench.registry import BACKBONES

    if raw is None:
        return default_backbone()
    if isinstance(raw, str):
        raw = {"name": raw}
    data = v.mapping(raw, where)
    v.known_keys(data, ["name", "params"], where)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        v.fail(f"{where}.name", "required: a backbone name (transformer, hf) or "
               "'package.module:Class'")
    try:
        cls = BACKBONES.get(name)
    except UnknownNameError as exc:
        v.fail(f"{where}.name", str(exc))
    name = BACKBONES.canonical(name)
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        v.fail(f"{where}.name", f"'{name}' is not a bayesbench.backbones.Backbone")
    params = check_parameters(cls, v.mapping(data.get("params"), f"{where}.params"), v,
                              f"{where}.params")
    return backbone_spec(name, params, cls)


def executor_section(v: _Validator, raw: Any) -> ExecutorConfig:
    """The ``executor`` section with its nested ``slurm`` mapping, checked like the others."""
    data = dict(v.mapping(raw, "executor"))
    slurm = v.dataclass_section(SlurmConfig, data.pop("slurm", None), "executor.slurm")
    executor = v.dataclass_section(ExecutorConfig, data, "executor")
    walltime = slurm.walltime
    if isinstance(walltime, int):  # seconds (YAML reads an unquoted 04:00:00 as 14400)
        walltime = f"{walltime // 3600:02d}:{walltime % 3600 // 60:02d}:{walltime % 60:02d}"
    return dataclasses.replace(executor, slurm=dataclasses.replace(
        slurm, walltime=walltime, job_extra=tuple(slurm.job_extra),
        prologue=tuple(slurm.prologue)))


def seed_problem(seeds: list[int]) -> str:
    """What is wrong with a list of base seeds ("" when nothing): each must be an integer in
    [0, MAX_SEED] (the data splits take 32-bit seeds), given once."""
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            return (f"seed {shorten(s, 40)} is outside 0..{MAX_SEED}; base seeds are "
                    "non-negative 31-bit integers")
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if repeated:
        return (f"seed {', '.join(map(str, repeated[:5]))} is given more than once; give "
                "distinct seeds")
    return ""


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses documents whose aliases expand to more than
    :data:`MAX_YAML_NODES` values or refer to themselves (an alias "bomb" of a few hundred
    bytes can stand for billions of values)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with every alias expanded, without expanding
    (each shared node is counted once per reference, memoised; iterative, so deep nesting
    does not recurse)."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = ([n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            active.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_YAML_NODES:
                raise yaml.YAMLError(
                    f"its anchors and aliases (&name / *name) expand to more than "
                    f"{MAX_YAML_NODES} values (near line {node.start_mark.line + 1}); write "
                    "the values out or nest aliases less deeply")
            continue
        if key in size:
            continue
        if key in active:
            raise yaml.YAMLError(f"an alias refers to a value that contains it (near line "
                                 f"{node.start_mark.line + 1}); remove the recursive alias")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def load_config(path: str | Path) -> Config:
    """Read and validate benchmarks.yaml (UTF-8 YAML)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a config file; pass --config PATH to a "
                          "benchmarks.yaml")
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file; pass --config PATH to a benchmarks.yaml")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror}); check its permissions"
                          ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save "
            "the config as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML{_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not a usable YAML document: nested too deeply; flatten "
                          "it") from None
    except (ValueError, TypeError) as exc:  # e.g. a date like 2024-13-45
        raise ConfigError(f"{p}: not a usable YAML document: {shorten_text(str(exc))}; "
                          "quote values that are meant as text") from None
    return parse_config(data, str(p))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where and what (PyYAML's own text spans several lines and
    quotes the document)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{at}: {shorten_text(exc.problem, 200)}{shorten_text(context, 100)}"
    return f": {shorten_text(' '.join(str(exc).split()))}"


def shorten_text(text: str, limit: int = 300) -> str:
    """``text`` cut at ``limit`` characters (messages of parsers can quote a whole line)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _select(v: _Validator, wanted: list[str] | None, available: list[str], flag: str) -> set[str]:
    if not wanted:
        return set(available)
    for w in wanted:
        if w not in available:
            close = difflib.get_close_matches(w, available, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{flag} {shorten_text(w, 80)}: not in {v.path}.{hint} Choose from: "
                f"{shorten_text(', '.join(available), 600)}"
            )
    return set(wanted)


def expand(
    config: Config,
    *,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    quick: bool = False,
    threads: int = 1,
    device: str = "cpu",
) -> list[RunSpec]:
    """The grid method × dataset × seed, filtered, in a stable order (dataset, seed, method).
    ``threads`` and ``device`` (a device type) are the execution settings the runs record."""
    v = _Validator(config.path)
    groups = sorted({m.group for m in config.methods} - {m.label for m in config.methods})
    method_labels = _select(v, methods, [m.label for m in config.methods] + groups, "--methods")
    dataset_labels = _select(v, datasets, [d.label for d in config.datasets], "--datasets")
    problem = seed_problem(seeds) if seeds else ""
    if problem:
        raise ConfigError(f"--seeds {','.join(map(str, seeds))[:80]}: {problem}, e.g. "
                          "--seeds 0,1,2")
    seed_list = seeds or (config.seeds[: config.quick.seeds] if quick else config.seeds)
    specs: list[RunSpec] = []
    for d in config.datasets:
        if d.label not in dataset_labels:
            continue
        model = dataclasses.replace(config.model, **d.model)
        training = dataclasses.replace(config.training, **d.training)
        evaluation = config.evaluation
        if quick:
            training = dataclasses.replace(training, epochs=min(training.epochs,
                                                                config.quick.epochs))
            evaluation = dataclasses.replace(evaluation, mc_samples=min(evaluation.mc_samples,
                                                                        config.quick.mc_samples))
        for seed in seed_list:
            for m in config.methods:
                if m.label not in method_labels and m.group not in method_labels:
                    continue
                specs.append(RunSpec(
                    label=m.label, method=m.name, method_params=m.params,
                    group=m.group, swept=m.swept,
                    dataset_label=d.label, dataset=d.name, dataset_params=d.params,
                    seed=seed, model=dataclasses.asdict(model),
                    training=dataclasses.asdict(training),
                    evaluation=dataclasses.asdict(evaluation),
                    quick=dataclasses.asdict(config.quick) if quick else None,
                    method_version=m.version, dataset_version=d.version,
                    threads=threads, device=device,
                    backbone=d.backbone or config.backbone,
                    keep_predictions=config.keep_predictions,
                ))
    return specs
