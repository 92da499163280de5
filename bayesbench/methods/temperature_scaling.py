"""Temperature scaling: MAP, then one temperature fitted on the validation split."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from bayesbench.methods.base import FitContext
from bayesbench.methods.map import MAP
from bayesbench.task import Inputs, Task


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Optimised over log T with L-BFGS, so T stays positive. logits: ``[N, C]``; labels ``[N]``.
    """
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().double(), labels.detach()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.double().exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


class TemperatureScaling(MAP):
    """MAP network whose logits are divided by a temperature fitted on the validation split
    (post-hoc; the test set is never used). S = 1."""

    name = "temperature_scaling"
    description = "MAP + one temperature fitted by NLL on the validation split"

    def __init__(self, max_iter: int = 100) -> None:
        super().__init__()
        self.max_iter = max_iter
        self.temperature = 1.0

    def fit(self, task: Task, ctx: FitContext) -> None:
        super().fit(task, ctx)
        self.temperature = fit_temperature(self.logits(task.val.x), task.val.y, self.max_iter)

    def predict(self, x: Inputs) -> torch.Tensor:
        return (self.logits(x) / self.temperature).softmax(-1)[None]

    def num_parameters(self) -> int:
        return super().num_parameters() + 1
