"""benchmarks.yaml: load, validate, and expand into fully resolved :class:`RunSpec` s.

Every error names the file, the key path and the fix, and is raised before anything runs.

Layout (all sections but ``datasets`` and ``methods`` optional)::

    seeds: [0, 1, 2]                 # base seeds; a run's training seed is derived from
                                     # (base seed, method label, dataset label)
    model:      {d_model: 64, depth: 2, heads: 4, ...}      # ModelConfig
    training:   {epochs: 30, batch_size: 64, lr: 0.001, ...} # TrainingConfig
    evaluation: {ece_bins: 15, mc_samples: 16, batch_size: 512}
    quick:      {epochs: 2, max_train: 512, max_eval: 256, mc_samples: 4}
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
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bayesbench.errors import BayesbenchError, ConfigError, UnknownNameError
from bayesbench.methods.base import EvaluationConfig, TrainingConfig
from bayesbench.models import ModelConfig
from bayesbench.registry import DATASETS, METHODS


@dataclass
class QuickConfig:
    """The --quick budget: every method on every dataset, tiny data and training, and only the
    first ``seeds`` base seeds (a smoke run checks that everything runs, not seed variance)."""

    epochs: int = 4
    max_train: int = 384
    max_eval: int = 128
    mc_samples: int = 4
    seeds: int = 1


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


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: (method label, dataset label, base seed) plus all settings.

    ``key`` hashes everything; ``config_hash`` everything but the seed. The code versions
    (``Method.version``, ``Dataset.version``) enter both hashes only once a class raises its
    version above 1, so runs stored before versions existed keep their keys.
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _hashed(self) -> dict[str, Any]:
        d = self.to_dict()
        for name in ("method_version", "dataset_version"):
            if d[name] == 1:
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
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.fail(f"{where}.{key}" if where else str(key),
                          f"unknown key; {hint}allowed keys: {', '.join(allowed)}")

    def typed(self, value: Any, annotation: Any, where: str) -> Any:
        """Check ``value`` against a simple annotation (int, float, str, bool, list, Optional)."""
        ok, converted = _conforms(value, annotation)
        if not ok:
            self.fail(where, f"expected {_type_name(annotation)}, got {value!r}")
        return converted

    def dataclass_section(self, cls: type, value: Any, where: str, base: Any = None) -> Any:
        data = self.mapping(value, where)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.known_keys(data, list(fields), where)
        hints = typing.get_type_hints(cls)
        out = {k: self.typed(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        try:
            return dataclasses.replace(base, **out) if base is not None else cls(**out)
        except (TypeError, ValueError) as exc:
            self.fail(where, str(exc))

    def positive(self, obj: Any, names: list[str], where: str) -> None:
        for name in names:
            if getattr(obj, name) <= 0:
                self.fail(f"{where}.{name}", f"must be positive, got {getattr(obj, name)}")


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
            return True, float(value)
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
        v.fail(where, f"{exc}")
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
        allowed = ["name", "label", "params"] + (["model", "training"] if section == "datasets"
                                                 else ["sweep"])
        v.known_keys(item, allowed, where)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            v.fail(f"{where}.name", "required: the registry name or 'package.module:Class'")
        try:
            cls = registry.get(name)
        except UnknownNameError as exc:
            v.fail(f"{where}.name", str(exc))
        if not (isinstance(cls, type) and issubclass(cls, base_cls)):
            v.fail(f"{where}.name", f"'{name}' is not a {base_cls.__module__}.{base_cls.__name__}")
        version = cls.version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            v.fail(f"{where}.name", f"{cls.__name__}.version is {version!r}; a class's code "
                   "version must be a positive integer (1, then raised when results change)")
        label = item.get("label", name if ":" not in name else name.rsplit(":", 1)[1])
        if not isinstance(label, str) or not label or "/" in label:
            v.fail(f"{where}.label", "must be a non-empty string without '/'")
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


TOP_LEVEL_KEYS = ["seeds", "model", "training", "evaluation", "quick", "datasets", "methods"]


def parse_config(data: Any, path: str = "<config>") -> Config:
    """Validate a parsed YAML document (see the module docstring for the layout)."""
    from bayesbench.data.base import Dataset
    from bayesbench.methods.base import Method

    v = _Validator(path)
    data = v.mapping(data, "top level")
    v.known_keys(data, TOP_LEVEL_KEYS, "")
    seeds = v.typed(data.get("seeds", [0]), list[int], "seeds")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        v.fail("seeds", "expected distinct non-negative integers, e.g. [0, 1, 2]")
    model = v.dataclass_section(ModelConfig, data.get("model"), "model")
    training = v.dataclass_section(TrainingConfig, data.get("training"), "training")
    v.positive(training, ["epochs", "batch_size", "lr"], "training")
    evaluation = v.dataclass_section(EvaluationConfig, data.get("evaluation"), "evaluation")
    v.positive(evaluation, ["ece_bins", "mc_samples", "batch_size"], "evaluation")
    quick = v.dataclass_section(QuickConfig, data.get("quick"), "quick")
    v.positive(quick, ["epochs", "max_train", "max_eval", "mc_samples", "seeds"], "quick")
    if "datasets" not in data:
        v.fail("datasets", "required: list the datasets to benchmark, e.g. '- name: digits'")
    if "methods" not in data:
        v.fail("methods", "required: list the methods to benchmark, e.g. '- name: map'")
    datasets = _entries(v, data["datasets"], "datasets", DATASETS, Dataset)
    methods = _entries(v, data["methods"], "methods", METHODS, Method)
    for i, d in enumerate(datasets):  # per-dataset overrides must be valid too
        v.dataclass_section(ModelConfig, d.model, f"datasets[{i}].model", base=model)
        v.dataclass_section(TrainingConfig, d.training, f"datasets[{i}].training", base=training)
    return Config(path, seeds, model, training, evaluation, quick, datasets, methods)


def load_config(path: str | Path) -> Config:
    """Read and validate benchmarks.yaml."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file; pass --config PATH to a benchmarks.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p))


def _select(v: _Validator, wanted: list[str] | None, available: list[str], flag: str) -> set[str]:
    if not wanted:
        return set(available)
    for w in wanted:
        if w not in available:
            close = difflib.get_close_matches(w, available, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{flag} {w}: not in {v.path}.{hint} Choose from: {', '.join(available)}"
            )
    return set(wanted)


def expand(
    config: Config,
    *,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    quick: bool = False,
) -> list[RunSpec]:
    """The grid method × dataset × seed, filtered, in a stable order (dataset, seed, method)."""
    v = _Validator(config.path)
    groups = sorted({m.group for m in config.methods} - {m.label for m in config.methods})
    method_labels = _select(v, methods, [m.label for m in config.methods] + groups, "--methods")
    dataset_labels = _select(v, datasets, [d.label for d in config.datasets], "--datasets")
    if seeds and any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: seeds must be non-negative integers, got {seeds}")
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
                ))
    return specs
