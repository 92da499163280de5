"""Deep ensembles: M independently seeded networks (Lakshminarayanan et al., 2017)."""

from __future__ import annotations

import dataclasses

import torch

from bayesbench.methods.base import FitContext, Method, count_parameters
from bayesbench.methods.map import MAP
from bayesbench.task import Task


class DeepEnsemble(Method):
    """M MAP networks, each with its own initialisation and data order (seed + member);
    each member gets the full training budget, so cost grows M-fold. S = M."""

    name = "deep_ensemble"
    description = "M independently seeded MAP networks; the predictive is their mixture"

    def __init__(self, members: int = 5) -> None:
        if members < 2:
            raise ValueError("members must be at least 2")
        self.members = members
        self.networks: list[MAP] = []

    def fit(self, task: Task, ctx: FitContext) -> None:
        self.networks = []
        for m in range(self.members):
            member_ctx = dataclasses.replace(ctx, seed=ctx.seed * 1000 + m)
            if ctx.on_epoch is not None:
                member_ctx.on_epoch = lambda _p, e, n, loss, m=m: ctx.on_epoch(
                    f"member {m + 1}/{self.members}", e, n, loss
                )
            net = MAP()
            net.fit(task, member_ctx)
            self.networks.append(net)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.predict(x) for net in self.networks], dim=0)

    def num_parameters(self) -> int:
        return sum(count_parameters(net.model) for net in self.networks)  # type: ignore[arg-type]


