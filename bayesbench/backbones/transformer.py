"""The built-in backbone: bayesbench's own pre-LN encoder (:mod:`bayesbench.models`).

It is the default: a run on it keeps the run key it had before backbones existed, and
:meth:`TransformerBackbone.build` is exactly :func:`bayesbench.models.build_model`, so every
method's numbers on it are those of the code before the seam.
"""

from __future__ import annotations

from torch import nn

from bayesbench.backbones.base import (
    HOOKS,
    Backbone,
    Dimensions,
    HeadFactory,
    LinearFactory,
    RowsFactory,
)
from bayesbench.models import ModelConfig, build_model
from bayesbench.task import Task


class TransformerBackbone(Backbone):
    """The encoder of ``model:`` (d_model, depth, heads, ...) for every input kind; takes no
    parameters (its size is the ``model:`` section)."""

    name = "transformer"
    description = "bayesbench's own pre-LN encoder, sized by the model: section (the default)"
    version = 2  # 2: faster dropout masks and short-row softmax (other random draws, rounding)

    def __init__(self) -> None:
        """No parameters: the encoder's size is the config's ``model:`` section."""

    def hooks(self) -> frozenset[str]:
        return frozenset(HOOKS) - {"linear_init"}  # every hook; no pretrained weights to load

    def dimensions(self, task: Task, cfg: ModelConfig) -> Dimensions:
        return Dimensions(depth=cfg.depth, heads=cfg.heads, d_model=cfg.d_model,
                          d_head=cfg.d_model // cfg.heads, features=cfg.d_model)

    def build(
        self,
        task: Task,
        cfg: ModelConfig,
        *,
        rows_factory: RowsFactory | None = None,
        linear_factory: LinearFactory | None = None,
        head_factory: HeadFactory | None = None,
    ) -> nn.Module:
        return build_model(task, cfg, rows_factory=rows_factory, linear_factory=linear_factory,
                           head_factory=head_factory)
