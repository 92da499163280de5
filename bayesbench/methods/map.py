"""MAP: the deterministic baseline (maximum a posteriori under weight decay)."""

from __future__ import annotations

import torch

from bayesbench.methods.base import (
    FitContext,
    Method,
    count_parameters,
    predict_batched,
    train_classifier,
)
from bayesbench.models import TransformerClassifier
from bayesbench.task import Inputs, Task


class MAP(Method):
    """One network trained with cross-entropy and AdamW weight decay (a Gaussian prior's MAP
    estimate); predicts a single softmax (S = 1)."""

    name = "map"
    description = "deterministic transformer, weight decay (the baseline every ratio uses)"

    def __init__(self) -> None:
        self.model: TransformerClassifier | None = None
        self.ctx: FitContext | None = None

    def fit(self, task: Task, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        self.model = ctx.backbone.build(task, ctx.model)
        train_classifier(self.model, task.train, ctx)

    def logits(self, x: Inputs) -> torch.Tensor:
        """Logits ``[N, C]`` of the trained network in eval mode."""
        assert self.model is not None and self.ctx is not None, "call fit() first"
        self.model.eval()
        return predict_batched(
            lambda xb: self.model(xb)[None], x, self.ctx.evaluation.batch_size, self.ctx.device
        )[0]

    def predict(self, x: Inputs) -> torch.Tensor:
        return self.logits(x).softmax(-1)[None]

    def num_parameters(self) -> int:
        assert self.model is not None, "call fit() first"
        return count_parameters(self.model)
