"""The method interface and the one training loop every method shares.

A method is configured by keyword arguments of its ``__init__`` (checked against the
signature when the config is loaded), fitted with :meth:`Method.fit`, and predicts
``[S, N, C]`` class-probability samples with :meth:`Method.predict` (S = 1 for deterministic
methods). Every method trains with :func:`train_classifier`, so every method on a dataset gets
the same optimizer, batch size and number of epochs.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bayesbench.backbones import Backbone, TransformerBackbone
from bayesbench.models import ModelConfig
from bayesbench.task import Inputs, Split, Task


class NonFiniteLossError(RuntimeError):
    """Training diverged; the run is recorded as failed with this message."""


@dataclass
class TrainingConfig:
    """The training budget, shared by every method on a dataset."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0


@dataclass
class EvaluationConfig:
    ece_bins: int = 15
    mc_samples: int = 16  # S for sampling methods that don't set their own
    batch_size: int = 512


EpochCallback = Callable[[str, int, int, float], None]
"""(phase, epoch 1-based, total epochs, mean training loss) -> None"""


@dataclass
class FitContext:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    on_epoch: EpochCallback | None = None
    backbone: Backbone = field(default_factory=TransformerBackbone)  # builds the model


LossFn = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with the configured learning rate and (decoupled) weight decay.

    ``foreach=True``: on CUDA it is torch's default anyway; on CPU the ``_foreach_*`` ops loop
    in C++ over the same per-tensor kernels with the same scalars as the per-parameter Python
    loop (so the same numbers, bit for bit), with less Python: 0.9 -> 0.64 ms a step here.
    """
    return torch.optim.AdamW(model.parameters(), lr=training.lr,
                             weight_decay=training.weight_decay, foreach=True)


def train_classifier(
    model: nn.Module,
    split: Split,
    ctx: FitContext,
    *,
    loss_fn: LossFn = cross_entropy_loss,
    optimizer: torch.optim.Optimizer | None = None,
    epochs: int | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step_end: Callable[[int], None] | None = None,
    phase: str = "train",
) -> list[float]:
    """Minibatch training; returns the mean loss of each epoch.

    Shuffling uses a generator seeded from ``ctx.seed``, so a run is reproducible. The whole
    split is moved to the device once (the datasets here are small); named inputs
    (:class:`~bayesbench.task.TensorBatch`) are indexed and moved like one tensor. Raises
    :class:`NonFiniteLossError` as soon as a loss is NaN or infinite.
    """
    model.to(ctx.device)
    optimizer = optimizer or make_optimizer(model, ctx.training)
    epochs = ctx.training.epochs if epochs is None else epochs
    x, y = split.x.to(ctx.device), split.y.to(ctx.device)
    n, bs = len(y), ctx.training.batch_size
    gen = torch.Generator().manual_seed(ctx.seed)
    history: list[float] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(bs):
            idx = idx.to(ctx.device)
            loss = loss_fn(model, x[idx], y[idx])
            value = loss.item()  # one read (one device sync) per step, for the check and the mean
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"{phase}: loss became {value} in epoch {epoch}; lower the learning "
                    "rate or check the method's parameters"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.training.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), ctx.training.grad_clip)
            optimizer.step()
            step += 1
            if on_step_end is not None:
                on_step_end(step)
            total += value * len(idx)
            count += len(idx)
        history.append(total / count)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if ctx.on_epoch is not None:
            ctx.on_epoch(phase, epoch, epochs, history[-1])
    model.eval()
    return history


@torch.no_grad()
def predict_batched(
    sample_fn: Callable[[Inputs], torch.Tensor],
    x: Inputs,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Apply ``sample_fn(x_batch) -> [S, B, C]`` over batches; returns ``[S, N, C]`` on CPU.
    ``x``: a tensor ``[N, ...]`` or named inputs (:class:`~bayesbench.task.TensorBatch`),
    cut into batches of ``batch_size`` rows alike."""
    parts = [sample_fn(xb.to(device)).float().cpu() for xb in x.split(batch_size)]
    return torch.cat(parts, dim=1)


def reusing_input_prefix(model: nn.Module) -> contextlib.AbstractContextManager:
    """``model.reusing_input_prefix()`` where the model has it (the built-in encoder: S sampled
    passes over a batch compute its deterministic start once, bit-identical), else nothing."""
    reuse = getattr(model, "reusing_input_prefix", None)
    return reuse() if callable(reuse) else contextlib.nullcontext()


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` for ``y > 0``, written ``y + log(-expm1(-y))`` so it
    neither overflows for large ``y`` nor loses digits for small ``y``."""
    if not y > 0:
        raise ValueError(f"softplus takes only positive values, got {y!r}")
    return y + math.log(-math.expm1(-y))


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


class Method(ABC):
    """An uncertainty method: ``fit`` on a task, then ``predict`` probability samples.

    ``version``: raise it (2, 3, ...) whenever a code change alters what the method computes
    for the same parameters. It is part of every run's key, so ``bayesbench run`` trains such
    runs again instead of reusing results stored under the old code.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line for `bayesbench list`
    version: ClassVar[int] = 1
    requires: ClassVar[frozenset[str]] = frozenset()
    """The backbone hooks (:data:`bayesbench.backbones.HOOKS`) this method needs."""

    def check_backbone(self, backbone: Backbone) -> str | None:
        """Why this method, with these parameters, cannot run on ``backbone`` (None: it
        can); checked before anything trains, the run is then skipped with this reason.
        Default: the hooks of :attr:`requires`."""
        return backbone.unsupported(self.requires)

    @abstractmethod
    def fit(self, task: Task, ctx: FitContext) -> None:
        """Train on ``task.train``; post-hoc steps may use ``task.val`` (never the test set)."""

    @abstractmethod
    def predict(self, x: Inputs) -> torch.Tensor:
        """Class probabilities ``[S, N, C]`` for inputs ``x [N, ...]`` (on CPU): a tensor, or
        named tensors (:class:`~bayesbench.task.TensorBatch`) for a task that has them."""

    @abstractmethod
    def num_parameters(self) -> int:
        """Trainable parameters, counted over everything the method keeps (all members)."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars that describe the fit itself, not scored against labels (e.g. the
        posterior's width); stored under the split ``fit`` and shown in the report's "Fit
        diagnostics" table. Names are the method's own. Default: none."""
        return {}

