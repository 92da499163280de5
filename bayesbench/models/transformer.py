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

Padding. A task with padded token inputs declares the id of its padding token in
``Task.padding_id`` (e.g. ``bbc_news``); the model then masks padded positions: no query
attends to them (their attention weights are exactly zero) and mean pooling skips them. The
CLS token is never masked, so every attention row keeps at least one key. Whether to mask
depends on the task alone, never on a batch's values, so
the forward pass stays free of data-dependent branches (``torch.func.vmap`` runs it, as the
vectorized ensemble does). Without ``padding_id`` the forward pass is exactly the unmasked one
(the same operations, bit for bit).

Named inputs. A token task's inputs may be named tensors (:class:`~bayesbench.task.TensorBatch`,
e.g. from the user's own tokenizer): the model reads ``input_ids`` as the tokens and, where
the batch has one, ``attention_mask`` (1 = real token, 0 = padding) as the padding mask, the
same mask path as ``padding_id``'s (without ``attention_mask``, ``padding_id`` decides as for
a tensor); other names (``token_type_ids``, ...) are not read. Here too masking depends on the
batch's keys, not its values, and with an all-ones ``attention_mask`` the logits are those of
the plain ``input_ids`` tensor, bit for bit (checked for CLS and mean pooling).

A rows module takes the mask only if it says so (``supports_padding = True``; its forward then
gets ``padding``, bool ``[B, 1, 1, T]``, True at padded keys): :class:`SoftmaxRows`, the
Dirichlet rows and the BAM rows do (the latter two leave padded keys and padded queries out of
their KL). A stochastic rows module must leave them out of its KL term, which masking its
scores cannot do, so a padded task's batch reaching one without that support raises an error
rather than giving silently different numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bayesbench.errors import DataError
from bayesbench.task import MAIN_INPUT, Inputs, Task, TensorBatch

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
    """Deterministic attention rows: softmax of the scores over keys (over the unpadded keys
    when ``padding`` is given: their scores are set to the dtype's lowest value, whose
    exponential is exactly 0)."""

    supports_padding = True

    def forward(
        self,
        scores: torch.Tensor,
        keys: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if padding is not None:
            scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
        return softmax_rows(scores)


SHORT_ROWS = 16
"""Below this many keys torch's CPU softmax takes a scalar path, 3-7x slower than the
same formula in vectorised element-wise ops (measured for 9-15 keys, forward and backward);
from 16 keys on it is the faster one."""


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """``scores.softmax(-1)``, written out as ``exp(s - max) / sum`` for rows shorter than
    :data:`SHORT_ROWS` (equal to it within float rounding, ~2e-7; a shape branch, never a
    data-dependent one). The max is detached: the softmax does not depend on it."""
    if scores.shape[-1] >= SHORT_ROWS:
        return scores.softmax(dim=-1)
    e = (scores - scores.detach().amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same train/eval switch, found by ``isinstance(m,
    nn.Dropout)``) with the keep mask drawn as ``uniform >= p``: the same Bernoulli(1 - p)
    mask scaled by 1 / (1 - p), about 1.6x faster on CPU than torch's bernoulli kernel, which
    made dropout half of an MC-dropout prediction's time. It draws other random numbers than
    ``F.dropout``, so runs on the built-in encoder changed (its backbone version 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


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
        self.dropout = Dropout(attention_dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys, values, scores)`` of x ``[B, T, d_model]``: ``[B, H, T, d_head]`` twice and
        the scaled dot-product scores ``[B, H, T, T]`` (what comes before the rows)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        return k, v, (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]``; padding: optional bool ``[B, T]``, True at padded keys
        (handed to the rows module as ``[B, 1, 1, T]``, the same keys for every query)."""
        return self.attend(self.project(x), padding)

    def attend(
        self,
        projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rest of :meth:`forward` from :meth:`project`'s output: rows, dropout, values."""
        k, v, scores = projected
        b, _, t, _ = v.shape
        d = self.heads * self.d_head
        if padding is None:
            rows = self.rows(scores, keys=k)
        elif getattr(self.rows, "supports_padding", False):
            rows = self.rows(scores, keys=k, padding=padding[:, None, None, :])
        else:
            raise NotImplementedError(
                f"attention rows {type(self.rows).__name__} take no padding mask, and this "
                "task's token inputs are padded: its KL and sampling would cover the padded "
                "keys; give the rows module a `padding` argument and `supports_padding = True`"
            )
        rows = self.dropout(rows)
        y = (rows @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, linear: LinearFactory, dropout: float) -> None:
        super().__init__()
        self.fc_in = linear(d_model, hidden, "mlp.in")
        self.fc_out = linear(hidden, d_model, "mlp.out")
        self.act = nn.GELU()
        self.dropout = Dropout(dropout)

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
        self.dropout = Dropout(cfg.dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's :meth:`SelfAttention.project` of ``LN(x)``."""
        return self.attention.project(self.norm_attn(x))

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``projected``: :meth:`project` of this x, computed before (it is then reused)."""
        if projected is None:  # the module call, hooks included
            attended = self.attention(self.norm_attn(x), padding)
        else:
            attended = self.attention.attend(projected, padding)
        x = x + self.dropout(attended)
        return x + self.mlp(self.norm_mlp(x))


class TransformerClassifier(nn.Module):
    """``forward(x) -> logits [B, C]``; ``features(x) -> pooled representation [B, d_model]``.

    ``padding_id``: for token inputs, the id of the padding token, masked in attention and
    mean pooling (module docstring); None (the default) masks nothing.
    """

    def __init__(
        self,
        embedding: nn.Module,
        cfg: ModelConfig,
        num_classes: int,
        rows_factory: RowsFactory,
        linear_factory: LinearFactory,
        head: nn.Module,
        padding_id: int | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.padding_id = padding_id
        self.embedding = embedding
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg, rows_factory(i, cfg.heads), linear_factory) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = head
        self.num_classes = num_classes
        self._prefix_cache: dict | None = None  # see reusing_input_prefix

    def padding_mask(self, x: Inputs) -> torch.Tensor | None:
        """Bool ``[B, 1 + T]`` (CLS first, never padded), True at padding tokens; None when the
        task declares no padding (then the forward pass is the unmasked one)."""
        return self.read_inputs(x)[1]

    def read_inputs(self, x: Inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens, padding)``: the tensor the embedding reads and :meth:`padding_mask`'s
        mask. Named inputs (module docstring): ``input_ids``, padded where ``attention_mask``
        is 0 (where the batch has one, else at ``padding_id``)."""
        mask = None
        if isinstance(x, TensorBatch):
            if MAIN_INPUT not in x:
                raise DataError(f"the built-in encoder reads named inputs by {MAIN_INPUT!r}, "
                                f"which this batch lacks (its keys: {', '.join(map(repr, x))})")
            x, mask = x[MAIN_INPUT], x.get("attention_mask")
        if mask is not None:
            padded = mask == 0
        elif self.padding_id is not None:
            padded = x == self.padding_id
        else:
            return x, None
        return x, torch.cat([padded.new_zeros(padded.shape[0], 1), padded], dim=1)

    @contextlib.contextmanager
    def reusing_input_prefix(self) -> Iterator[None]:
        """While active, calls on the same input tensor (e.g. the S sampled passes over one
        batch) compute its deterministic prefix once and reuse it: the embedding with CLS, and
        the first block's LayerNorm, qkv projection and attention scores. The same operations
        on the same values, so the same numbers, bit for bit, and the same random numbers
        drawn. Only for passes whose randomness starts after those scores (random attention
        rows, dropout kept on at test time), never for random embeddings or qkv weights."""
        self._prefix_cache = {}
        try:
            yield
        finally:
            self._prefix_cache = None

    def _embedded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """(tokens with CLS, the first block's projection when reusing, else None)."""
        cache = getattr(self, "_prefix_cache", None)
        if cache is not None and cache.get("x") is x and cache["version"] == x._version:
            return cache["h"], cache["projected"]
        h = self.embedding(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        if cache is None:
            return h, None
        projected = self.blocks[0].project(h)
        cache.update(x=x, version=x._version, h=h, projected=projected)
        return h, projected

    def features(self, x: Inputs) -> torch.Tensor:
        x, padding = self.read_inputs(x)
        h, projected = self._embedded(x)
        for i, block in enumerate(self.blocks):
            if i == 0 and projected is not None:
                h = block(h, padding, projected)
            else:
                h = block(h) if padding is None else block(h, padding)
        h = self.norm(h)
        if self.config.pool == "cls":
            return h[:, 0]
        if padding is None:
            return h[:, 1:].mean(dim=1)
        # mean over each sequence's own tokens (at least one when x holds no empty sequence)
        kept = (~padding[:, 1:]).unsqueeze(-1).to(h.dtype)  # [B, T, 1]
        return (h[:, 1:] * kept).sum(dim=1) / kept.sum(dim=1).clamp_min(1.0)

    def forward(self, x: Inputs) -> torch.Tensor:
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
    """The encoder classifier for ``task``, with optional replacement parts (module doc);
    padded positions are masked when the task declares a ``padding_id`` (token inputs)."""
    linear = linear_factory or default_linear
    rows = rows_factory or (lambda layer, heads: SoftmaxRows())
    head = (
        head_factory(cfg.d_model, task.num_classes)
        if head_factory
        else linear(cfg.d_model, task.num_classes, "head")
    )
    padding_id = task.padding_id if task.input_kind == "tokens" else None
    return TransformerClassifier(
        build_embedding(task, cfg.d_model), cfg, task.num_classes, rows, linear, head,
        padding_id=padding_id,
    )


def enable_dropout(model: nn.Module) -> None:
    """Eval mode everywhere except dropout layers (attention dropout included): MC dropout."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
