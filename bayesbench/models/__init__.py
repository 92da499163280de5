"""The transformer encoder classifier every method builds on."""

from bayesbench.models.transformer import (
    LINEAR_ROLES,
    LINEAR_SUBSETS,
    ModelConfig,
    SoftmaxRows,
    TransformerClassifier,
    build_model,
    enable_dropout,
)

__all__ = [
    "LINEAR_ROLES",
    "LINEAR_SUBSETS",
    "ModelConfig",
    "SoftmaxRows",
    "TransformerClassifier",
    "build_model",
    "enable_dropout",
]
