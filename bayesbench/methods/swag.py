"""SWAG: a Gaussian fitted to the SGD iterates of the tail of training (Maddox et al., 2019).

Training has the same number of epochs as ``map``: the first ``floor(start_fraction · E)``
epochs are map's (AdamW at the training config's lr, same initialisation and data order), the
remaining ones run the tail optimizer at the constant learning rate ``swa_lr`` (SGD with
momentum 0.9 and the training's weight decay as L2, or AdamW) and collect ``collect_per_epoch``
snapshots θ_i per epoch at evenly spaced steps, the last at the epoch's end.

Moments over the flattened parameters (float64), after n snapshots::

    θ_SWA = (1/n) Σ_i θ_i,   σ² = max((1/n) Σ_i θ_i² − θ_SWA², 0)
    D = [θ_i − θ̄_i]  over the last K ≤ rank snapshots, θ̄_i the running mean *after* adding θ_i
        (as in the authors' code), a P×K matrix

Samples, as the authors' code writes them (``scale`` = 0.5 by default)::

    θ = θ_SWA + √scale · (σ ⊙ z₁ + D z₂ / √(K − 1)),   z₁ ~ N(0, I_P), z₂ ~ N(0, I_K)

so their covariance is ``scale · (diag(σ²) + D Dᵀ / (K − 1))``; at ``scale = 0.5`` that is the
paper's ``½ (Σ_diag + D Dᵀ / (K − 1))``, i.e. Algorithm 1's
``θ_SWA + Σ_diag^½ z₁ / √2 + D z₂ / √(2(K − 1))``. (Version 1 applied both the 1/√2 factors
and ``scale``: half the paper's covariance.) With ``rank = 0`` or fewer than 2 snapshots this is
SWAG-diagonal, ``θ = θ_SWA + √scale · σ ⊙ z₁``.
The model uses LayerNorm, not BatchNorm, so no normalisation statistics need recomputing for
θ_SWA or the samples. ``samples`` (S) weight draws are made once at the end of ``fit`` (seeded),
so every evaluation split sees the same S networks. ``logits`` gives the SWA mean's logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import torch
from torch.func import functional_call

from bayesbench.methods.base import FitContext, make_optimizer, predict_batched, train_classifier
from bayesbench.methods.map import MAP
from bayesbench.task import Inputs, Task

TAIL_OPTIMIZERS = ("sgd", "adamw")


class SWAGMoments:
    """Running SWAG moments of a flat parameter vector ``[P]`` (module docstring)."""

    def __init__(self, num_params: int, rank: int) -> None:
        self.rank = rank
        self.count = 0
        self.mean = torch.zeros(num_params, dtype=torch.float64)
        self.sq_mean = torch.zeros(num_params, dtype=torch.float64)
        self.deviations: deque[torch.Tensor] = deque(maxlen=max(rank, 1))

    def collect(self, theta: torch.Tensor) -> None:
        theta = theta.detach().double().cpu()
        n = self.count
        self.mean = self.mean * (n / (n + 1)) + theta / (n + 1)
        self.sq_mean = self.sq_mean * (n / (n + 1)) + theta.square() / (n + 1)
        if self.rank > 0:
            self.deviations.append(theta - self.mean)
        self.count += 1

    def variance(self) -> torch.Tensor:
        """Diagonal variance σ² ``[P]``, clamped at 0."""
        return (self.sq_mean - self.mean.square()).clamp_min(0.0)

    def deviation_matrix(self) -> torch.Tensor:
        """D ``[P, K]`` (K = 0 for SWAG-diagonal)."""
        if self.rank == 0 or not self.deviations:
            return torch.zeros(len(self.mean), 0, dtype=torch.float64)
        return torch.stack(list(self.deviations), dim=1)

    @property
    def low_rank(self) -> bool:
        return self.rank > 0 and len(self.deviations) >= 2

    def covariance(self, scale: float = 1.0) -> torch.Tensor:
        """The dense sampling covariance ``[P, P]`` (for tests; P must be small)."""
        var = self.variance()
        if not self.low_rank:
            return scale * torch.diag(var)
        dev = self.deviation_matrix()
        return scale * (torch.diag(var) + dev @ dev.T / (dev.shape[1] - 1))

    def sample(self, num: int, scale: float, generator: torch.Generator) -> torch.Tensor:
        """``num`` draws ``[num, P]`` (float64)."""
        sd = self.variance().sqrt()
        z1 = torch.randn(num, len(self.mean), generator=generator, dtype=torch.float64)
        if not self.low_rank:
            return self.mean + math.sqrt(scale) * sd * z1
        dev = self.deviation_matrix()
        k = dev.shape[1]
        z2 = torch.randn(num, k, generator=generator, dtype=torch.float64)
        return self.mean + math.sqrt(scale) * (sd * z1 + z2 @ dev.T / math.sqrt(k - 1))


def collection_positions(steps_per_epoch: int, per_epoch: int) -> set[int]:
    """1-based steps within an epoch at which to snapshot: ``per_epoch`` evenly spaced ones,
    the last at the epoch's end (at most one per step)."""
    per_epoch = min(per_epoch, steps_per_epoch)
    return {math.ceil((k + 1) * steps_per_epoch / per_epoch) for k in range(per_epoch)}


class SWAG(MAP):
    """SWA-Gaussian over all weights (module docstring for the schedule and the maths).

    ``start_fraction``: fraction of the epochs before collection starts. ``collect_per_epoch``:
    snapshots per tail epoch. ``rank``: columns K of the deviation matrix (0 = diagonal only).
    ``scale``: covariance scale when sampling (0.5 as in the paper). ``swa_lr``: the tail's
    constant learning rate; ``tail_optimizer``: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
    ``samples``: S (None = the evaluation's ``mc_samples``).
    """

    name = "swag"
    version = 2  # 2: samples with the paper's covariance (1 had half of it)
    description = "SWA-Gaussian: diagonal + low-rank Gaussian over the tail of SGD iterates"
    requires = frozenset({"functional"})  # predicts with functional_call per weight sample

    def __init__(
        self,
        start_fraction: float = 0.5,
        collect_per_epoch: int = 1,
        rank: int = 10,
        scale: float = 0.5,
        swa_lr: float = 0.05,
        tail_optimizer: str = "sgd",
        samples: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= start_fraction < 1.0:
            raise ValueError("start_fraction must be in [0, 1)")
        if collect_per_epoch < 1:
            raise ValueError("collect_per_epoch must be at least 1")
        if rank < 0:
            raise ValueError("rank must be >= 0 (0 = SWAG-diagonal)")
        if not scale > 0:
            raise ValueError("scale must be positive")
        if not swa_lr > 0:
            raise ValueError("swa_lr must be positive")
        if tail_optimizer not in TAIL_OPTIMIZERS:
            raise ValueError(f"tail_optimizer must be one of {', '.join(TAIL_OPTIMIZERS)}, "
                             f"not {tail_optimizer!r}")
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        self.start_fraction = start_fraction
        self.collect_per_epoch = collect_per_epoch
        self.rank = rank
        self.scale = scale
        self.swa_lr = swa_lr
        self.tail_optimizer = tail_optimizer
        self.samples = samples
        self.moments: SWAGMoments | None = None
        self.weight_samples: torch.Tensor | None = None  # [S, P] float32

    def _tail_optimizer(self, ctx: FitContext) -> torch.optim.Optimizer:
        assert self.model is not None
        if self.tail_optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.swa_lr, momentum=0.9,
                                   weight_decay=ctx.training.weight_decay)
        tail = dataclasses.replace(ctx.training, lr=self.swa_lr)
        return make_optimizer(self.model, tail)

    def fit(self, task: Task, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        self.model = ctx.backbone.build(task, ctx.model)
        epochs = ctx.training.epochs
        head_epochs = min(int(self.start_fraction * epochs), epochs - 1)
        if head_epochs:
            train_classifier(self.model, task.train, ctx, epochs=head_epochs)
        self.moments = SWAGMoments(sum(p.numel() for p in self._trainable()), self.rank)
        steps_per_epoch = math.ceil(len(task.train) / ctx.training.batch_size)
        positions = collection_positions(steps_per_epoch, self.collect_per_epoch)

        def collect(step: int) -> None:
            if (step - 1) % steps_per_epoch + 1 in positions:
                self.moments.collect(  # type: ignore[union-attr]
                    torch.nn.utils.parameters_to_vector(self._trainable()))

        # a different data order from the head phase's (which replays map's first epochs)
        tail_ctx = dataclasses.replace(ctx, seed=ctx.seed + 1)
        train_classifier(self.model, task.train, tail_ctx, epochs=epochs - head_epochs,
                         optimizer=self._tail_optimizer(ctx), on_step_end=collect,
                         phase="swag")
        torch.nn.utils.vector_to_parameters(self.moments.mean.float().to(ctx.device),
                                            self._trainable())
        gen = torch.Generator().manual_seed(ctx.seed)
        s = self.samples or ctx.evaluation.mc_samples
        self.weight_samples = self.moments.sample(s, self.scale, gen).float()

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The parameters SWAG is over: the trainable ones (all, on the built-in encoder)."""
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def _as_parameters(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.model is not None
        out, offset = {}, 0
        for name, p in self.model.named_parameters():
            if not p.requires_grad:  # frozen (e.g. a backbone's train: head): stays put
                continue
            out[name] = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return out

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None and \
            self.weight_samples is not None, "call fit() first"
        self.model.eval()
        params = [self._as_parameters(w.to(self.ctx.device)) for w in self.weight_samples]
        return predict_batched(
            lambda xb: torch.stack([functional_call(self.model, p, (xb,)).softmax(-1)
                                    for p in params]),
            x, self.ctx.evaluation.batch_size, self.ctx.device)

    def num_parameters(self) -> int:
        # mean, diagonal variance and the K deviation columns
        assert self.moments is not None, "call fit() first"
        k = self.moments.deviation_matrix().shape[1]
        return super().num_parameters() * (2 + k)
