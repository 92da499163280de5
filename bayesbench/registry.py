"""Registries of methods, datasets and metrics by name.

An entry is a lazy ``"package.module:Object"`` string, imported on first use, so listing
names costs nothing and a broken plugin only fails when it is used. Names resolve in order:
built-ins, installed plugins (entry-point groups ``bayesbench.methods`` /
``bayesbench.datasets``), then a literal ``"package.module:Object"`` reference, which lets a
config name a user's own class without any registration.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bayesbench.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def match_name(name: str, choices: Iterable[str]) -> str | None:
    """The choice ``name`` means: itself, or else the one choice equal to it but for case;
    None when there is none or several differ from it only in case.

    >>> match_name("MAP", ["map", "mfvi"]), match_name("x", ["X", "x"])
    ('map', 'x')
    >>> match_name("ab", ["AB", "Ab"]) is None  # ambiguous: no guess
    True
    """
    choices = list(choices)
    if name in choices:
        return name
    same = [c for c in choices if c.casefold() == name.casefold()]
    return same[0] if len(same) == 1 else None


def close_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` choices to suggest for an unknown ``name`` ("did you mean"), in their own
    spelling: those equal to it but for case first, then close matches compared without case.

    >>> close_names("MAP", ["map", "mfvi", "swag"]), close_names("Mc_Dropot", ["mc_dropout"])
    (['map'], ['mc_dropout'])
    >>> close_names("mc", ["map", "mc_dropout"])  # a prefix
    ['mc_dropout']
    """
    choices = list(choices)
    by_folded: dict[str, list[str]] = {}
    for c in choices:
        by_folded.setdefault(c.casefold(), []).append(c)
    folded = name.casefold()
    starts = [f for f in by_folded if len(folded) >= 2 and f.startswith(folded)]
    close = difflib.get_close_matches(folded, list(by_folded), n=n, cutoff=0.5)
    ordered = ([folded] if folded in by_folded else []) + sorted(starts, key=len) + close
    return list(dict.fromkeys(c for f in ordered for c in by_folded[f]))[:n]


def resolve_names(wanted: Iterable[str], available: Iterable[str], flag: str,
                  where: str) -> list[str]:
    """Each name of ``wanted`` (a flag's values, e.g. ``--methods``) in the spelling of
    ``available`` (see :func:`match_name`); one that names nothing raises
    :class:`~bayesbench.errors.ConfigError` with a "did you mean" in the right case.

    >>> resolve_names(["MAP", "mfvi"], ["map", "mfvi"], "--methods", "bench.yaml")
    ['map', 'mfvi']
    """
    available = list(dict.fromkeys(available))
    out = []
    for name in wanted:
        match = match_name(name, available)
        if match is None:
            close = close_names(name, available, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            shown = ", ".join(available)
            raise ConfigError(
                f"{flag} {name[:80]}: not in {where}.{hint} Choose from: "
                f"{shown if len(shown) <= 600 else shown[:599] + '…'}")
        out.append(match)
    return out


def import_object(reference: str) -> Any:
    """Import ``"package.module:Object"`` (``Object`` may be dotted)."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise UnknownNameError(
            f"'{reference}' is not an import reference: write it as 'package.module:Object'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownNameError(
            f"cannot import module '{module_name}' for '{reference}': {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownNameError(f"module '{module_name}' has no attribute '{attr}'") from None
    return obj


class Registry(Generic[T]):
    """Name -> object, with lazy imports, entry-point plugins and "did you mean" errors."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, str | T] = {}
        self._plugins_loaded = False

    def register(self, name: str, obj: str | T) -> None:
        """Register an object, or a lazy ``"module:attr"`` reference, under ``name``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = obj

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return self.canonical(name) in self._entries or ":" in name

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` ("MAP" -> "map" when unambiguous), else
        ``name`` itself (an import reference, or an unknown name)."""
        self._load_plugins()
        if name in self._entries or ":" in name:
            return name
        return match_name(name, self._entries) or name

    def get(self, name: str) -> T:
        """The object for ``name``; unknown names raise :class:`UnknownNameError`."""
        self._load_plugins()
        name = self.canonical(name)  # "MAP" -> "map" (unambiguous)
        if name in self._entries:
            entry = self._entries[name]
            if isinstance(entry, str):
                entry = import_object(entry)
                self._entries[name] = entry
            return entry  # type: ignore[return-value]
        if ":" in name:
            return import_object(name)
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        close = close_names(name, self.names())
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(self.names())}; "
            f"or name your own as 'package.module:Object'."
        )


METHODS: Registry[Any] = Registry("method", "bayesbench.methods")
DATASETS: Registry[Any] = Registry("dataset", "bayesbench.datasets")
BACKBONES: Registry[Any] = Registry("backbone", "bayesbench.backbones")

# Built-in methods: one file each under bayesbench/methods/.
for _name, _ref in {
    "map": "bayesbench.methods.map:MAP",
    "temperature_scaling": "bayesbench.methods.temperature_scaling:TemperatureScaling",
    "mc_dropout": "bayesbench.methods.mc_dropout:MCDropout",
    "deep_ensemble": "bayesbench.methods.deep_ensemble:DeepEnsemble",
    "laplace": "bayesbench.methods.laplace:Laplace",
    "swag": "bayesbench.methods.swag:SWAG",
    "sghmc": "bayesbench.methods.sghmc:SGHMC",
    "sngp": "bayesbench.methods.sngp:SNGP",
    "mfvi": "bayesbench.methods.mfvi:MFVI",
    "dirichlet_attention": "bayesbench.methods.dirichlet_attention:DirichletAttention",
    "bam_attention": "bayesbench.methods.bam_attention:BAMAttention",
}.items():
    METHODS.register(_name, _ref)

# Built-in datasets: one file each under bayesbench/data/.
for _name, _ref in {
    "digits": "bayesbench.data.digits:Digits",
    "mnist1d": "bayesbench.data.mnist1d:MNIST1D",
    "markov": "bayesbench.data.markov:MarkovChains",
    "breast_cancer": "bayesbench.data.breast_cancer:BreastCancer",
    "bbc_news": "bayesbench.data.bbc_news:BBCNews",
    "actg175": "bayesbench.data.actg175:ACTG175",
    "italy_power_demand": "bayesbench.data.italy_power:ItalyPowerDemand",
    "files": "bayesbench.data.files:FileDataset",
}.items():
    DATASETS.register(_name, _ref)

# Built-in backbones: one file each under bayesbench/backbones/.
for _name, _ref in {
    "transformer": "bayesbench.backbones.transformer:TransformerBackbone",
    "hf": "bayesbench.backbones.hf:HFBackbone",
}.items():
    BACKBONES.register(_name, _ref)
