"""The backbone interface: the network a method is Bayesian about.

A backbone builds, for a task, a classifier ``model`` with

- ``model(x) -> logits [B, C]`` for a batch of the task's inputs ``x`` (a tensor, or named
  tensors, a :class:`~bayesbench.task.TensorBatch`, where the task has them: ``input_ids``,
  ``attention_mask``, ...; a backbone gets the batch as it is),
- ``model.features(x) -> [B, D]``: the pooled representation the head reads,
- ``model.head``: the module mapping features to logits (``head(features(x)) == model(x)``),

and offers the *hooks* methods use to change what is random, as arguments of :meth:`build`:

- ``rows_factory(layer_index, heads) -> nn.Module``: attention rows (scores -> simplex),
- ``linear_factory(in_features, out_features, role) -> nn.Module``: linear layers by role
  (:data:`bayesbench.models.LINEAR_ROLES`),
- ``head_factory(features, num_classes) -> nn.Module``: the head,

plus :meth:`enable_dropout` (MC dropout), :meth:`disable_dropout` (training without dropout
when the backbone takes no rate of the method's) and :meth:`dimensions` (depth, heads, widths).
A backbone of pretrained weights offers ``linear_init`` instead of ``linear``: a replacement
layer must take the pretrained weights (``load_linear``), so none is discarded.

A backbone declares the hooks it supports in :meth:`hooks` (names in :data:`HOOKS`); a method
declares those it needs (``Method.requires`` / ``Method.check_backbone``). A run whose method
needs a hook its backbone lacks is skipped, with the reason, before anything trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from bayesbench.models import ModelConfig
from bayesbench.task import Task

HOOKS: dict[str, str] = {
    "features": "pooled features and a separate head (model.features, model.head)",
    "head": "a replacement head (head_factory)",
    "linear": "replacement linear layers by role (linear_factory)",
    "linear_init": "replacement linear layers initialised from the backbone's own (pretrained) "
                   "ones: each replacement's load_linear(layer) receives the layer it replaces",
    "rows": "replacement attention rows (rows_factory)",
    "dropout": "dropout kept on at test time (enable_dropout)",
    "dropout_rate": "a dropout rate set by the method (ModelConfig.dropout)",
    "dropout_off": "the model's own dropout switched off after building (disable_dropout)",
    "functional": "torch.func.functional_call over named parameters (weight samples)",
    "vmap": "torch.func.vmap over stacked weights (vectorized ensembles)",
}
"""Every hook a backbone may offer, with what it means."""

RowsFactory = Callable[[int, int], nn.Module]
LinearFactory = Callable[[int, int, str], nn.Module]
HeadFactory = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class Dimensions:
    """Sizes of a backbone's encoder: ``depth`` layers of ``heads`` heads of width
    ``d_head``; ``d_model`` the hidden width; ``features`` the width of ``model.features``."""

    depth: int
    heads: int
    d_model: int
    d_head: int
    features: int


class Backbone(ABC):
    """A network family methods build on (module docstring). Configured by keyword
    arguments of ``__init__`` (the ``backbone.params`` of benchmarks.yaml)."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line for `bayesbench list`
    version: ClassVar[int] = 1
    """Raise it whenever a code change alters the numbers of runs on this backbone; above 1
    it enters the run key (as ``backbone.version``), so such runs are retrained."""

    @classmethod
    def examples(cls) -> dict[str, Backbone]:
        """Instances that show what this backbone supports in ``bayesbench list``, by label
        (default: one, built without parameters)."""
        return {cls.name: cls()}

    def prepare(self) -> None:  # noqa: B027 (an optional hook: doing nothing is the default)
        """One-time set-up before a run's clock starts (imports, registrations), so that a
        run's ``train_seconds`` counts training only. Default: nothing."""

    def hooks(self) -> frozenset[str]:
        """The hooks (keys of :data:`HOOKS`) this backbone supports."""
        return frozenset()

    def unsupported(self, needs: frozenset[str] | set[str]) -> str | None:
        """Why a method needing the hooks ``needs`` cannot run here; None when it can."""
        missing = sorted(set(needs) - self.hooks())
        if not missing:
            return None
        return (f"the '{self.name}' backbone has no {', '.join(missing)} "
                f"hook{'s' if len(missing) > 1 else ''}")

    def check_task(self, task: Task) -> None:  # noqa: B027 (optional: every task is readable)
        """Raise a :class:`~bayesbench.errors.BayesbenchError` when this backbone cannot read
        ``task``'s inputs (default: every task)."""

    @abstractmethod
    def dimensions(self, task: Task, cfg: ModelConfig) -> Dimensions:
        """The encoder's sizes for ``task`` (``cfg``: the built-in encoder's config)."""

    @abstractmethod
    def build(
        self,
        task: Task,
        cfg: ModelConfig,
        *,
        rows_factory: RowsFactory | None = None,
        linear_factory: LinearFactory | None = None,
        head_factory: HeadFactory | None = None,
    ) -> nn.Module:
        """A fresh classifier for ``task`` (module docstring for its contract)."""

    def enable_dropout(self, model: nn.Module) -> None:
        """Eval mode except the model's dropout (MC dropout); default: every nn.Dropout."""
        from bayesbench.models import enable_dropout

        enable_dropout(model)

    def disable_dropout(self, model: nn.Module) -> None:
        """Switch the model's dropout off for good (``dropout_off``); default: the rate of
        every nn.Dropout to 0."""
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
