"""Deep ensembles: M independently seeded networks (Lakshminarayanan et al., 2017)."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from bayesbench.backbones import Backbone
from bayesbench.methods.base import (
    FitContext,
    Method,
    NonFiniteLossError,
    count_parameters,
    make_optimizer,
)
from bayesbench.methods.map import MAP
from bayesbench.task import Inputs, Task, TensorBatch


class DeepEnsemble(Method):
    """M MAP networks, each with its own initialisation and data order (seed + member);
    each member gets the full training budget, so cost grows M-fold. S = M.

    ``vectorized``: train the M members as one batched model (``torch.func`` ``vmap`` over
    the stacked weights) instead of one after another: the same initialisations, data orders,
    optimizer (AdamW is elementwise, so one AdamW over the stacked tensors is M AdamWs),
    per-member gradient clipping and epochs, so without dropout the members match the
    sequential ones up to float rounding; dropout masks come from another random stream.
    Faster on CPU here (``benchmarks/vectorized_ensemble_speed.py``). It cannot go through
    ``train_classifier`` (one model, one data order), so it mirrors that loop.
    """

    name = "deep_ensemble"
    description = "M independently seeded MAP networks; the predictive is their mixture"

    def __init__(self, members: int = 5, vectorized: bool = False) -> None:
        if members < 2:
            raise ValueError("members must be at least 2")
        self.members = members
        self.vectorized = vectorized
        self.networks: list[MAP] = []

    def check_backbone(self, backbone: Backbone) -> str | None:
        reason = backbone.unsupported({"vmap"} if self.vectorized else set())
        return reason and reason + "; use vectorized: false"

    def _member_context(self, ctx: FitContext, m: int) -> FitContext:
        return dataclasses.replace(ctx, seed=ctx.seed * 1000 + m)

    def fit(self, task: Task, ctx: FitContext) -> None:
        if self.vectorized:
            self._fit_vectorized(task, ctx)
            return
        self.networks = []
        for m in range(self.members):
            member_ctx = self._member_context(ctx, m)
            if ctx.on_epoch is not None:
                member_ctx.on_epoch = lambda _p, e, n, loss, m=m: ctx.on_epoch(
                    f"member {m + 1}/{self.members}", e, n, loss
                )
            net = MAP()
            net.fit(task, member_ctx)
            self.networks.append(net)

    def _fit_vectorized(self, task: Task, ctx: FitContext) -> None:
        """``train_classifier``'s loop for M stacked members (class docstring)."""
        contexts = [self._member_context(ctx, m) for m in range(self.members)]
        self.networks = []
        for member_ctx in contexts:
            net = MAP()
            torch.manual_seed(member_ctx.seed)  # MAP.fit's initialisation
            net.model = ctx.backbone.build(task, ctx.model).to(ctx.device)
            net.ctx = member_ctx
            self.networks.append(net)
        models = [net.model for net in self.networks]
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        leaves = list(params.values())
        shell = copy.deepcopy(models[0]).to("meta")
        # map's optimizer over the stacked tensors (not wrapped: Parameter() would copy leaves)
        optimizer = make_optimizer(SimpleNamespace(parameters=lambda: leaves),  # type: ignore
                                   ctx.training)

        def member_logits(p: dict, b: dict, xb: torch.Tensor | dict) -> torch.Tensor:
            # vmap maps over tensors and dicts of them: named inputs travel as a plain dict
            xb = TensorBatch(xb) if isinstance(xb, dict) else xb
            return functional_call(shell, (p, b), (xb,))

        forward = vmap(member_logits, randomness="different")
        x, y = task.train.x.to(ctx.device), task.train.y.to(ctx.device)
        n, bs, clip = len(y), ctx.training.batch_size, ctx.training.grad_clip
        gens = [torch.Generator().manual_seed(c.seed) for c in contexts]
        epochs = ctx.training.epochs
        for epoch in range(1, epochs + 1):
            shell.train()
            total = 0.0
            orders = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [M, n]
            for idx in orders.to(ctx.device).split(bs, dim=1):  # [M, B]
                xb = x[idx]
                logits = forward(params, buffers,  # [M, B, C]
                                 dict(xb) if isinstance(xb, TensorBatch) else xb)
                losses = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(),
                                         reduction="none").view(idx.shape).mean(1)
                if not torch.isfinite(losses).all():
                    raise NonFiniteLossError(
                        f"train: loss became {losses.tolist()} in epoch {epoch}; lower the "
                        "learning rate or check the method's parameters")
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # member m's gradient is its own mean loss's
                if clip:  # clip_grad_norm_ per member
                    norms = torch.stack([p.grad.reshape(self.members, -1).square().sum(1)
                                         for p in leaves]).sum(0).sqrt()
                    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
                    for p in leaves:
                        p.grad.mul_(coef.view(-1, *[1] * (p.dim() - 1)))
                optimizer.step()
                total += float(losses.detach().sum()) * idx.shape[1]
            if ctx.on_epoch is not None:
                ctx.on_epoch(f"members 1-{self.members} (vectorized)", epoch, epochs,
                             total / (n * self.members))
        with torch.no_grad():
            for m, model in enumerate(models):
                for name, p in model.named_parameters():
                    p.copy_(params[name][m])
                model.eval()

    def predict(self, x: Inputs) -> torch.Tensor:
        return torch.cat([net.predict(x) for net in self.networks], dim=0)

    def num_parameters(self) -> int:
        return sum(count_parameters(net.model) for net in self.networks)  # type: ignore[arg-type]
