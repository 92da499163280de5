"""Backbones: the networks methods build on (one file each; see :mod:`.base`).

``transformer`` (the default, bayesbench's own encoder) and ``hf`` (a Hugging Face
``transformers`` encoder classifier); a user's own by ``package.module:Class`` or the
entry-point group ``bayesbench.backbones`` (:data:`bayesbench.registry.BACKBONES`).

A run's backbone is ``{"name": ..., "params": {...}}`` (the ``backbone:`` section of
benchmarks.yaml, top level or per dataset; ``"version"`` too once the class's is above 1);
:data:`UNHASHED_BACKBONE` never enters a run key.
"""

from __future__ import annotations

from typing import Any

from bayesbench.backbones.base import HOOKS, Backbone, Dimensions
from bayesbench.backbones.transformer import TransformerBackbone

UNHASHED_BACKBONE: dict[str, Any] = {"name": "transformer", "params": {}}
"""The built-in encoder at version 1, left out of run keys: runs stored before backbones
existed kept their keys. From version 2 on, the default backbone enters every key."""


def backbone_spec(name: str, params: dict[str, Any], cls: type[Backbone]) -> dict[str, Any]:
    """A run's ``{"name", "params"}``, with ``"version"`` once ``cls.version`` is above 1."""
    version = int(getattr(cls, "version", 1))
    return {"name": name, "params": params} | ({"version": version} if version > 1 else {})


def default_backbone() -> dict[str, Any]:
    """The backbone of a run that names none: the built-in encoder at its current version."""
    return backbone_spec("transformer", {}, TransformerBackbone)



def make_backbone(spec: dict[str, Any] | None) -> Backbone:
    """The backbone instance for a run's ``{"name", "params"}`` (None: the default),
    prepared (:meth:`~.base.Backbone.prepare`)."""
    from bayesbench.registry import BACKBONES

    spec = spec or default_backbone()
    if spec["name"] == "transformer" and not spec.get("params"):
        return TransformerBackbone()
    backbone = BACKBONES.get(spec["name"])(**spec.get("params", {}))
    backbone.prepare()
    return backbone


def unsupported_reason(method: Any, backbone: Backbone) -> str | None:
    """Why ``method`` (a Method instance) cannot run on ``backbone``; None when it can."""
    check = getattr(method, "check_backbone", None)
    if check is not None:
        return check(backbone)
    return backbone.unsupported(frozenset(getattr(method, "requires", frozenset())))


def unsupported_runs(specs: list[Any]) -> list[tuple[Any, str]]:
    """``(spec, reason)`` for each RunSpec whose method cannot run on its backbone (checked
    once per method, parameters and backbone; nothing is built or trained)."""
    import json

    from bayesbench.registry import METHODS

    reasons: dict[str, str | None] = {}
    out = []
    for spec in specs:
        key = json.dumps([spec.method, spec.method_params, spec.backbone], sort_keys=True,
                         default=str)
        if key not in reasons:
            method = METHODS.get(spec.method)(**spec.method_params)
            reasons[key] = unsupported_reason(method, make_backbone(spec.backbone))
        if reasons[key]:
            out.append((spec, f"{spec.method} on {spec.backbone['name']}: {reasons[key]}"))
    return out


def support_matrix() -> list[tuple[str, str, dict[str, str | None]]]:
    """For ``bayesbench list``: ``(backbone label, description, {method: reason or None})``
    for every registered backbone (in its :meth:`~.base.Backbone.examples`) and every
    registered method at its default parameters. A backbone that cannot be instantiated
    here (e.g. ``hf`` without ``transformers``) gets ``{"": why}``."""
    from bayesbench.registry import BACKBONES, METHODS

    methods = {}
    for name in METHODS.names():
        try:
            methods[name] = METHODS.get(name)()
        except Exception:  # noqa: S112 - a plugin needing parameters: not listed here
            continue
    out = []
    for name in BACKBONES.names():
        try:
            cls = BACKBONES.get(name)
            description = str(cls.description)
            examples = cls.examples()
        except Exception as exc:  # a broken plugin, or a missing optional dependency
            out.append((name, "", {"": " ".join(str(exc).split())}))
            continue
        for label, backbone in examples.items():
            out.append((label, description,
                        {m: unsupported_reason(method, backbone) for m, method in
                         methods.items()}))
    return out


__all__ = ["UNHASHED_BACKBONE", "backbone_spec", "default_backbone", "HOOKS", "Backbone",
           "Dimensions", "TransformerBackbone", "make_backbone", "unsupported_reason",
           "support_matrix", "unsupported_runs"]
