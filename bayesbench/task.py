"""The data contract between datasets, methods and evaluation.

A dataset builds a :class:`Task`; methods fit on ``task.train`` (and may use ``task.val`` for
post-hoc steps); evaluation runs on ``task.test``, every shifted split and every OOD set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

InputKind = Literal["vectors", "tokens", "features"]
"""How the model reads ``x``:

- ``vectors``: float ``[N, T, F]``, a sequence of T tokens with F features each (image patches,
  patches of a 1-D signal); a shared linear embedding plus a learnt position embedding.
- ``tokens``: long ``[N, T]`` token ids in ``[0, vocab_size)``; an embedding table plus position.
- ``features``: float ``[N, F]`` tabular features, each feature its own token (FT-Transformer
  style: token_j = x_j * W_j + b_j), no position embedding.
"""


@dataclass
class Split:
    """Inputs and labels of one split.

    x: ``[N, ...]`` (see :data:`InputKind`); y: ``[N]`` long class indices;
    true_probs: optional ``[N, C]`` exact Bayes posterior p(y | x) when the generating
    process is known (then metrics against the truth are computed too).
    """

    x: torch.Tensor
    y: torch.Tensor
    true_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.true_probs is not None and len(self.true_probs) != len(self.y):
            raise ValueError("true_probs must have one row per example")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> Split:
        tp = None if self.true_probs is None else self.true_probs[index]
        return Split(self.x[index], self.y[index], tp)

    def head(self, n: int | None, seed: int = 0) -> Split:
        """A random subset of at most ``n`` examples (deterministic in ``seed``)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        return self.subset(torch.randperm(len(self), generator=g)[:n])


@dataclass
class Task:
    """Everything a benchmark run needs from a dataset.

    shifted: shift kind -> severity (1 = mildest) -> split, labelled like the test split.
    ood: OOD set name -> inputs ``[M, ...]`` of classes or sources never seen in training.
    """

    name: str
    input_kind: InputKind
    num_classes: int
    train: Split
    val: Split
    test: Split
    shifted: dict[str, dict[int, Split]] = field(default_factory=dict)
    ood: dict[str, torch.Tensor] = field(default_factory=dict)
    vocab_size: int | None = None
    class_names: list[str] | None = None
    padding_id: int | None = None
    """For right-padded ``tokens`` inputs, the id of the padding token: the model masks those
    positions (no attention to them, left out of mean pooling and of attention-space KLs).
    None: every token is real."""
    vocabulary: list[str | None] | None = None
    """For ``tokens`` inputs that stand for words: ``vocabulary[i]`` is the word of id ``i``
    (None for an id that stands for no word: padding, the unknown word), so that a backbone
    with a tokenizer of its own (a pretrained Hugging Face model) reads the words, not the
    ids. None: the ids are all there is (synthetic tokens)."""
    image_shape: list[int] | None = None
    """For ``vectors`` inputs cut from images: ``[channels, height, width]``. ``x`` then
    holds the image's ``p``×``p`` patches in raster order (patch ``t`` at patch row
    ``t // (width / p)``, column ``t % (width / p)``), each flattened channel by channel, row by
    row (``F = channels · p²``), so a backbone that reads pixels (a Hugging Face ViT) can put
    the image back together (:func:`patches_to_pixels`). None: not an image."""

    @property
    def is_image(self) -> bool:
        """Patch sequences of images (``vectors`` with an :attr:`image_shape`)."""
        return self.input_kind == "vectors" and self.image_shape is not None

    @property
    def num_tokens(self) -> int:
        """Longest token sequence over all splits (sizes the position embedding)."""
        if self.input_kind == "features":
            return self.train.x.shape[1]
        lengths = [s.x.shape[1] for s in self.all_splits()]
        lengths += [x.shape[1] for x in self.ood.values()]
        return max(lengths)

    @property
    def feature_dim(self) -> int:
        """F for ``vectors`` and ``features`` inputs; 0 for ``tokens``."""
        if self.input_kind == "vectors":
            return self.train.x.shape[-1]
        if self.input_kind == "features":
            return self.train.x.shape[1]
        return 0

    def all_splits(self) -> list[Split]:
        out = [self.train, self.val, self.test]
        for sev in self.shifted.values():
            out.extend(sev.values())
        return out

    def limited(self, max_train: int | None, max_eval: int | None, seed: int = 0,
                severities: int | None = None) -> Task:
        """A smaller copy for quick runs: at most ``max_train`` training and ``max_eval``
        examples in every evaluation split and OOD set, and at most ``severities`` severities
        of each shift kind (:func:`spread_severities`; None keeps them all)."""

        def cap_x(x: torch.Tensor) -> torch.Tensor:
            if max_eval is None or len(x) <= max_eval:
                return x
            g = torch.Generator().manual_seed(seed)
            return x[torch.randperm(len(x), generator=g)[:max_eval]]

        return replace(
            self,
            train=self.train.head(max_train, seed),
            val=self.val.head(max_eval, seed),
            test=self.test.head(max_eval, seed),
            shifted={
                k: {s: sp.head(max_eval, seed)
                    for s, sp in spread_severities(sev, severities).items()}
                for k, sev in self.shifted.items()
            },
            ood={k: cap_x(x) for k, x in self.ood.items()},
        )

    def summary(self) -> dict[str, object]:
        """Shapes, classes, shift kinds and OOD sets, for ``bayesbench list``."""
        return {
            "input": f"{self.input_kind} {list(self.train.x.shape[1:])}",
            "classes": self.num_classes,
            "train/val/test": f"{len(self.train)}/{len(self.val)}/{len(self.test)}",
            "shifts": {k: sorted(v) for k, v in self.shifted.items()},
            "ood": {k: len(v) for k, v in self.ood.items()},
            "true_posterior": self.test.true_probs is not None,
        }


def spread_severities(splits: dict[int, Split], keep: int | None) -> dict[int, Split]:
    """At most ``keep`` of one shift kind's severities, evenly spaced from the mildest to the
    strongest (``keep`` 1: the strongest alone, where a shift shows most), in order."""
    ordered = sorted(splits)
    if keep is None or keep >= len(ordered):
        return dict(splits)
    if keep == 1:
        return {ordered[-1]: splits[ordered[-1]]}
    step = (len(ordered) - 1) / (keep - 1)  # >= 1 here: the rounded positions are distinct
    return {ordered[round(i * step)]: splits[ordered[round(i * step)]] for i in range(keep)}


def patch_size(image_shape: list[int], features: int) -> int:
    """The side ``p`` of square patches of ``features = channels · p²`` values."""
    return round((features / image_shape[0]) ** 0.5)


def patches_to_pixels(x: torch.Tensor, image_shape: list[int]) -> torch.Tensor:
    """Patch sequences ``[B, T, C·p·p]`` (the layout of :attr:`Task.image_shape`) -> images
    ``[B, C, H, W]``."""
    channels, height, width = image_shape
    b, t, f = x.shape
    p = patch_size(image_shape, f)
    rows, cols = (height // p, width // p) if p else (0, 0)
    if channels * p * p != f or rows * cols != t or rows * p != height or cols * p != width:
        raise ValueError(f"{t} patches of {f} values do not tile a {channels}×{height}×{width} "
                         "image")
    patches = x.reshape(b, rows, cols, channels, p, p)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)
