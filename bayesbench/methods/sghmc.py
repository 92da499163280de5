"""Cyclical SGHMC over all weights (Chen et al., 2014; Zhang et al., 2020, cSG-MCMC).

Target: the (tempered) posterior ``p(θ | D)^{1/T} ∝ exp(−U(θ) / T)`` with
``U(θ) = Σ_n −log p(y_n | x_n, θ) − log p(θ)``. Training minimises the minibatch *mean*
NLL L̄(θ) through the shared :func:`train_classifier`; the optimizer works with U / N
(N = training examples). Step k, with step size ``lr_k``, friction α = ``momentum_decay``
and a diagonal preconditioner P (elementwise products)::

    g = ∇L̄(θ) − ∇ log p(θ) / N                         (minibatch estimate of ∇U / N)
    v ← (1 − α) v − lr_k P g + [sampling] · sqrt(2 α lr_k T P / N) · ε,   ε ~ N(0, I)
    θ ← θ + v

This is SGHMC with step size η_k = lr_k / N on U, mass matrix P⁻¹, friction α, noise
variance 2 α η_k T P (the minibatch gradient noise not corrected for, β̂ = 0), written as
SGD with momentum 1 − α plus noise, as in the cSG-MCMC code; its stationary distribution as
lr → 0 is ∝ exp(−U / T) for any fixed P. ``preconditioner="none"``: P = I (plain SGHMC).
``"rmsprop"`` (default; Li et al., 2016, as used by Fortuin et al., 2021 for BNN priors):
``P = 1 / (sqrt(V̂) + 1e-8)``, V̂ the bias-corrected moving average (decay 0.99) of g²,
updated during exploration steps only and frozen while sampling, so P is constant whenever
noise is injected. (Plain SGHMC barely trains this transformer in the map budget: the
training loss stays near log C, as plain SGD with momentum does; Adam-like preconditioning
fixes that.)

Schedule over the K = epochs · steps_per_epoch steps, ``cycles`` = M cycles of K / M steps:
``r_k = frac((k − 1) M / K)``, ``lr_k = lr / 2 · (cos(π r_k) + 1)``. Steps with
``r_k < exploration_fraction`` explore (no noise: SGD with momentum); the rest sample (noise
on). ``samples_per_cycle`` weight samples are taken per cycle at evenly spaced sampling
steps, the last at the cycle's end, and kept as state dicts: S = cycles · samples_per_cycle.

Same epochs, batch size and data order as ``map``; the training config's lr and weight
decay don't apply (``lr`` and the prior replace them) and gradients are *not* clipped, since
clipping would change the stationary distribution. Prior: ``gaussian`` N(0, prior_scale²)
on every weight in closed form, or another family of :mod:`bayesbench.priors` (gradient by
autograd).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
from torch.func import functional_call

from bayesbench.methods.base import (
    FitContext,
    Method,
    count_parameters,
    predict_batched,
    train_classifier,
)
from bayesbench.models import TransformerClassifier
from bayesbench.task import Inputs, Task

PriorGrad = Callable[[torch.Tensor], torch.Tensor]
"""θ -> −∇ log p(θ), elementwise (same shape)."""


def gaussian_prior_grad(scale: float) -> PriorGrad:
    """``−∇ log N(θ; 0, scale²) = θ / scale²``."""
    precision = 1.0 / scale**2
    return lambda p: p * precision


def prior_grad_from_family(name: str, scale: float) -> PriorGrad:
    """``−∇ log p(θ)`` for a :mod:`bayesbench.priors` family (autograd of its log density)."""
    if name == "gaussian":
        return gaussian_prior_grad(scale)
    from bayesbench.priors import make_prior

    prior = make_prior(name, scale)

    def grad(p: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            w = p.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(prior.log_prob(w).sum(), w)
        return -g

    return grad


PRECONDITIONERS = ("rmsprop", "none")


class SGHMCOptimizer(torch.optim.Optimizer):
    """The SGHMC update of the module docstring; ``param_groups[i]["lr"]`` is lr_k and
    ``param_groups[i]["noise"]`` switches the injected noise (and freezes the preconditioner).

    ``num_data``: N, the gradients are of the *mean* loss over a minibatch.
    ``prior_grad``: θ -> −∇ log p(θ) (None: a flat prior). ``generator``: the noise RNG.
    ``preconditioner``: ``"rmsprop"`` or ``"none"``; ``rms_decay``, ``eps``: its constants.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        num_data: int,
        momentum_decay: float = 0.1,
        temperature: float = 1.0,
        prior_grad: PriorGrad | None = None,
        generator: torch.Generator | None = None,
        preconditioner: str = "none",
        rms_decay: float = 0.99,
        eps: float = 1e-8,
    ) -> None:
        if not lr > 0 or not 0 < momentum_decay <= 1 or temperature < 0 or num_data < 1:
            raise ValueError("need lr > 0, 0 < momentum_decay <= 1, temperature >= 0, "
                             "num_data >= 1")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}")
        self.preconditioner = preconditioner
        self.rms_decay = rms_decay
        self.eps = eps
        defaults = dict(lr=lr, momentum_decay=momentum_decay, temperature=temperature,
                        noise=True)
        super().__init__(params, defaults)
        self.num_data = num_data
        self.prior_grad = prior_grad
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore
        assert closure is None, "SGHMC takes no closure"
        for group in self.param_groups:
            lr, alpha, temp = group["lr"], group["momentum_decay"], group["temperature"]
            noise_sd = math.sqrt(2 * alpha * lr * temp / self.num_data) if group["noise"] \
                else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if self.prior_grad is not None:
                    g = g + self.prior_grad(p) / self.num_data
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                    state["sq_avg"], state["updates"] = torch.zeros_like(p), 0
                    state["precond"] = torch.ones_like(p)
                v, precond = state["momentum"], state["precond"]
                if self.preconditioner == "rmsprop" and not group["noise"]:
                    state["sq_avg"].mul_(self.rms_decay).addcmul_(g, g, value=1 - self.rms_decay)
                    state["updates"] += 1
                    bias = 1 - self.rms_decay ** state["updates"]
                    precond = state["precond"] = torch.div(
                        1.0, (state["sq_avg"] / bias).sqrt_().add_(self.eps))
                v.mul_(1 - alpha).addcmul_(precond, g, value=-lr)
                if noise_sd:
                    eps = torch.randn(p.shape, generator=self.generator, device=p.device,
                                      dtype=p.dtype)
                    v.addcmul_(precond.sqrt(), eps, value=noise_sd)
                p.add_(v)


def cyclical_schedule(step: int, total_steps: int, cycles: int) -> tuple[int, float]:
    """(cycle index, r_k ∈ [0, 1)) of 1-based ``step``: ``r = frac((k − 1) M / K)``."""
    pos = (step - 1) * cycles / total_steps
    cycle = min(int(pos), cycles - 1)
    return cycle, pos - cycle


def collection_steps(total_steps: int, cycles: int, exploration_fraction: float,
                     samples_per_cycle: int) -> list[int]:
    """The 1-based steps after which a sample is kept: per cycle, ``samples_per_cycle`` evenly
    spaced sampling-phase steps ending at the cycle's last step (fewer if the phase is
    shorter)."""
    phases: dict[int, list[int]] = {}
    for k in range(1, total_steps + 1):
        cycle, r = cyclical_schedule(k, total_steps, cycles)
        if r >= exploration_fraction:
            phases.setdefault(cycle, []).append(k)
    out: list[int] = []
    for steps in phases.values():
        m = min(samples_per_cycle, len(steps))
        out += sorted({steps[math.ceil((j + 1) * len(steps) / m) - 1] for j in range(m)})
    return out


class SGHMC(Method):
    """Cyclical SGHMC over all weights; S = collected samples (module docstring).

    ``lr``: peak step size on the mean loss (lr_k above). ``momentum_decay``: friction α.
    ``temperature``: T (< 1 is a cold posterior). ``prior``/``prior_scale``: the weight prior.
    ``cycles``, ``exploration_fraction``, ``samples_per_cycle``: the cyclical schedule.
    ``preconditioner``: ``"rmsprop"`` or ``"none"`` (plain SGHMC).
    """

    name = "sghmc"
    description = "cyclical SGHMC over all weights (Gaussian or other prior, temperature)"
    requires = frozenset({"functional"})  # predicts with functional_call per weight sample

    def __init__(
        self,
        lr: float = 3e-4,
        momentum_decay: float = 0.1,
        temperature: float = 1.0,
        prior: str = "gaussian",
        prior_scale: float = 1.0,
        cycles: int = 3,
        exploration_fraction: float = 0.7,
        samples_per_cycle: int = 3,
        preconditioner: str = "rmsprop",
    ) -> None:
        if not lr > 0:
            raise ValueError("lr must be positive")
        if not 0 < momentum_decay <= 1:
            raise ValueError("momentum_decay must be in (0, 1]")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = no noise: SGD with momentum)")
        if not prior_scale > 0:
            raise ValueError("prior_scale must be positive")
        if cycles < 1:
            raise ValueError("cycles must be at least 1")
        if not 0 <= exploration_fraction < 1:
            raise ValueError("exploration_fraction must be in [0, 1)")
        if samples_per_cycle < 1:
            raise ValueError("samples_per_cycle must be at least 1")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}, "
                             f"not {preconditioner!r}")
        prior_grad_from_family(prior, prior_scale)  # unknown family: ValueError now
        self.lr = lr
        self.momentum_decay = momentum_decay
        self.temperature = temperature
        self.prior = prior
        self.prior_scale = prior_scale
        self.cycles = cycles
        self.exploration_fraction = exploration_fraction
        self.samples_per_cycle = samples_per_cycle
        self.preconditioner = preconditioner
        self.model: TransformerClassifier | None = None
        self.ctx: FitContext | None = None
        self.weight_samples: list[dict[str, torch.Tensor]] = []

    def fit(self, task: Task, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        self.model = ctx.backbone.build(task, ctx.model)
        self.model.to(ctx.device)
        n = len(task.train)
        total = ctx.training.epochs * math.ceil(n / ctx.training.batch_size)
        if total < self.cycles:
            raise ValueError(f"sghmc: {total} training steps are fewer than cycles="
                             f"{self.cycles}; lower cycles or raise epochs")
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1)
        opt = SGHMCOptimizer(self.model.parameters(), self.lr, n, self.momentum_decay,
                             self.temperature,
                             prior_grad_from_family(self.prior, self.prior_scale), gen,
                             preconditioner=self.preconditioner)
        keep = set(collection_steps(total, self.cycles, self.exploration_fraction,
                                    self.samples_per_cycle))
        self.weight_samples = []

        def set_schedule(step: int) -> None:  # lr and noise of 1-based ``step``
            _, r = cyclical_schedule(step, total, self.cycles)
            for group in opt.param_groups:
                group["lr"] = self.lr / 2 * (math.cos(math.pi * r) + 1)
                group["noise"] = r >= self.exploration_fraction

        def on_step_end(step: int) -> None:
            if step in keep:
                self.weight_samples.append({k: v.detach().clone() for k, v in
                                            self.model.state_dict().items()})  # type: ignore
            if step < total:
                set_schedule(step + 1)

        set_schedule(1)
        no_clip = dataclasses.replace(ctx, training=dataclasses.replace(ctx.training,
                                                                        grad_clip=0.0))
        train_classifier(self.model, task.train, no_clip, optimizer=opt,
                         on_step_end=on_step_end, phase="sghmc")

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None and self.weight_samples, \
            "call fit() first"
        self.model.eval()
        return predict_batched(
            lambda xb: torch.stack([functional_call(self.model, w, (xb,)).softmax(-1)
                                    for w in self.weight_samples]),
            x, self.ctx.evaluation.batch_size, self.ctx.device)

    def num_parameters(self) -> int:
        assert self.model is not None, "call fit() first"
        return count_parameters(self.model) * len(self.weight_samples)
