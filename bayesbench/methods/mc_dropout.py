"""MC dropout: dropout (attention dropout included) kept on at test time (Gal & Ghahramani)."""

from __future__ import annotations

import dataclasses

import torch

from bayesbench.backbones import Backbone
from bayesbench.methods.base import FitContext, predict_batched, reusing_input_prefix
from bayesbench.methods.map import MAP
from bayesbench.task import Inputs, Task


class MCDropout(MAP):
    """Train with dropout as MAP does; predict with S dropout masks per input.

    ``dropout`` overrides the model's dropout rate (residual, MLP and attention dropout) for
    this method; None keeps the model config's rate. ``samples`` None uses the evaluation's
    ``mc_samples``.
    """

    name = "mc_dropout"
    description = "dropout kept on at test time (attention dropout too); S sampled masks"
    requires = frozenset({"dropout"})

    def __init__(self, samples: int | None = None, dropout: float | None = None) -> None:
        super().__init__()
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        if dropout is not None and not 0.0 < dropout < 1.0:
            raise ValueError("dropout must be in (0, 1)")
        self.samples = samples
        self.dropout = dropout

    def check_backbone(self, backbone: Backbone) -> str | None:
        needs = self.requires | ({"dropout_rate"} if self.dropout is not None else set())
        reason = backbone.unsupported(needs)
        if reason and self.dropout is not None and "dropout_rate" not in backbone.hooks():
            reason += "; leave mc_dropout's dropout unset to use the model's own rate"
        return reason

    def fit(self, task: Task, ctx: FitContext) -> None:
        if self.dropout is not None:
            model_cfg = dataclasses.replace(
                ctx.model, dropout=self.dropout, attention_dropout=self.dropout
            )
            ctx = dataclasses.replace(ctx, model=model_cfg)
        super().fit(task, ctx)

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None, "call fit() first"
        s = self.samples or self.ctx.evaluation.mc_samples
        self.ctx.backbone.enable_dropout(self.model)
        try:  # the first dropout comes after the first attention rows: the start is shared
            with reusing_input_prefix(self.model):
                return predict_batched(
                    lambda xb: torch.stack([self.model(xb).softmax(-1) for _ in range(s)]),
                    x,
                    self.ctx.evaluation.batch_size,
                    self.ctx.device,
                )
        finally:
            self.model.eval()
