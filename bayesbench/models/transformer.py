"""A small pre-LN transformer encoder classifier with swappable parts.

input adapter (per input kind) -> [CLS] + tokens -> depth x pre-LN block -> LayerNorm ->
pooling (CLS token or mean) -> head.

Methods change *what is random* by passing factories to :func:`build_model`:

- ``rows_factory(layer_index, heads) -> nn.Module`` maps attention scores
  ``[B, H, T, T]`` (already scaled by 1/sqrt(d_head)) and keys ``[B, H, T, d_head]`` to
  attention rows on the simplex ``[B, H, T, T]`` (default: :class:`SoftmaxRows`).
  Dirichlet or Weibull attention plug in here.
- ``linear_factory(in_features, out_features, role) -> nn.Module`` builds every linear layer;
  ``role`` is one of :data:`LINEAR_ROLES` so Bayesian layers can replace a subset.
- ``head_factory(d_model, num_classes) -> nn.Module`` builds the output head (e.g. a GP head).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bayesbench.task import Task

LINEAR_ROLES = ("attention.qkv", "attention.out", "mlp.in", "mlp.out", "head")
"""Roles of the linear layers, in the order they appear in a block (head last)."""

LINEAR_SUBSETS: dict[str, tuple[str, ...]] = {
    "all": LINEAR_ROLES,
    "attention": ("attention.qkv", "attention.out"),
    "mlp": ("mlp.in", "mlp.out"),
    "last_layer": ("head",),
}
"""Named subsets of linear layers a weight-space method can make Bayesian."""

LinearFactory = Callable[[int, int, str], nn.Module]
RowsFactory = Callable[[int, int], nn.Module]
HeadFactory = Callable[[int, int], nn.Module]


@dataclass
class ModelConfig:
    """Size of the encoder; the same for every method on a dataset (fair comparison)."""

    d_model: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pool: str = "cls"  # "cls" or "mean"

    def __post_init__(self) -> None:
        # the full rules (ranges, bounds) are bayesbench.config.FIELD_RULES, checked at load
        if not self.heads >= 1:
            raise ValueError(f"heads={self.heads} must be at least 1")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by heads={self.heads}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {self.pool!r}")


def default_linear(in_features: int, out_features: int, role: str) -> nn.Module:
    return nn.Linear(in_features, out_features)


class SoftmaxRows(nn.Module):
    """Deterministic attention rows: softmax of the scores over keys."""

    def forward(self, scores: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        return scores.softmax(dim=-1)


class VectorEmbedding(nn.Module):
    """``[B, T, F]`` float tokens -> shared linear map + learnt position embedding."""

    def __init__(self, feature_dim: int, d_model: int, max_tokens: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, d_model)
        self.position = nn.Parameter(torch.randn(1, max_tokens, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.position[:, : x.shape[1]]


class TokenEmbedding(nn.Module):
    """``[B, T]`` token ids -> embedding table + learnt position embedding."""

    def __init__(self, vocab_size: int, d_model: int, max_tokens: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.randn(1, max_tokens, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x) + self.position[:, : x.shape[1]]


class FeatureEmbedding(nn.Module):
    """``[B, F]`` tabular features -> one token per feature: ``x_j * W_j + b_j``
    (FT-Transformer's feature tokenizer); the per-feature weights identify the feature."""

    def __init__(self, num_features: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, d_model) / math.sqrt(d_model))
        self.bias = nn.Parameter(torch.zeros(num_features, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class SelfAttention(nn.Module):
    """Multi-head self-attention whose row distribution is a pluggable module."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        rows: nn.Module,
        linear: LinearFactory,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.d_head = d_model // heads
        self.qkv = linear(d_model, 3 * d_model, "attention.qkv")
        self.out = linear(d_model, d_model, "attention.out")
        self.rows = rows
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # [B, H, T, T]
        rows = self.dropout(self.rows(scores, keys=k))
        y = (rows @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, linear: LinearFactory, dropout: float) -> None:
        super().__init__()
        self.fc_in = linear(d_model, hidden, "mlp.in")
        self.fc_out = linear(hidden, d_model, "mlp.out")
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.dropout(self.act(self.fc_in(x)))))


class EncoderBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(
        self, cfg: ModelConfig, rows: nn.Module, linear: LinearFactory
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attention = SelfAttention(cfg.d_model, cfg.heads, rows, linear, cfg.attention_dropout)
        self.norm_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = FeedForward(cfg.d_model, int(cfg.d_model * cfg.mlp_ratio), linear, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attn(x)))
        return x + self.mlp(self.norm_mlp(x))


class TransformerClassifier(nn.Module):
    """``forward(x) -> logits [B, C]``; ``features(x) -> pooled representation [B, d_model]``."""

    def __init__(
        self,
        embedding: nn.Module,
        cfg: ModelConfig,
        num_classes: int,
        rows_factory: RowsFactory,
        linear_factory: LinearFactory,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.embedding = embedding
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg, rows_factory(i, cfg.heads), linear_factory) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = head
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return h[:, 0] if self.config.pool == "cls" else h[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_embedding(task: Task, d_model: int) -> nn.Module:
    if task.input_kind == "vectors":
        return VectorEmbedding(task.feature_dim, d_model, task.num_tokens)
    if task.input_kind == "tokens":
        if not task.vocab_size:
            raise ValueError(f"task '{task.name}' has token inputs but no vocab_size")
        return TokenEmbedding(task.vocab_size, d_model, task.num_tokens)
    if task.input_kind == "features":
        return FeatureEmbedding(task.feature_dim, d_model)
    raise ValueError(f"unknown input kind {task.input_kind!r}")


def build_model(
    task: Task,
    cfg: ModelConfig,
    *,
    rows_factory: RowsFactory | None = None,
    linear_factory: LinearFactory | None = None,
    head_factory: HeadFactory | None = None,
) -> TransformerClassifier:
    """The encoder classifier for ``task``, with optional replacement parts (module doc)."""
    linear = linear_factory or default_linear
    rows = rows_factory or (lambda layer, heads: SoftmaxRows())
    head = (
        head_factory(cfg.d_model, task.num_classes)
        if head_factory
        else linear(cfg.d_model, task.num_classes, "head")
    )
    return TransformerClassifier(
        build_embedding(task, cfg.d_model), cfg, task.num_classes, rows, linear, head
    )


def enable_dropout(model: nn.Module) -> None:
    """Eval mode everywhere except dropout layers (attention dropout included): MC dropout."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
