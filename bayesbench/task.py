"""The data contract between datasets, methods and evaluation.

A dataset builds a :class:`Task`; methods fit on ``task.train`` (and may use ``task.val`` for
post-hoc steps); evaluation runs on ``task.test``, every shifted split and every OOD set.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from bayesbench.errors import DataError

InputKind = Literal["vectors", "tokens", "features"]
"""How the model reads ``x``:

- ``vectors``: float ``[N, T, F]``, a sequence of T tokens with F features each (image patches,
  patches of a 1-D signal); a shared linear embedding plus a learnt position embedding.
- ``tokens``: long ``[N, T]`` token ids in ``[0, vocab_size)``; an embedding table plus position.
- ``features``: float ``[N, F]`` tabular features, each feature its own token (FT-Transformer
  style: token_j = x_j * W_j + b_j), no position embedding.

``tokens`` inputs may also be named tensors, a :class:`TensorBatch` (a plain dict is converted):
``input_ids`` ``[N, T]`` and what a tokenizer returns beside them (``attention_mask``,
``token_type_ids``, ...).
"""

MAIN_INPUT = "input_ids"
"""The key of named inputs (:class:`TensorBatch`) whose shape is the inputs' shape."""


class TensorBatch(Mapping[str, torch.Tensor]):
    """Named input tensors sharing their leading dimension N, as a tokenizer returns them:
    ``input_ids [N, T]`` (required), ``attention_mask [N, T]`` (1 = real token, 0 = padding),
    ``token_type_ids [N, T]``, ...

    It handles like one tensor where methods handle inputs: ``batch[index]`` (a tensor of
    indices, a slice, any index but a string) and ``batch.split(size)`` index every tensor
    alike along N, ``batch.to(device)`` moves them, ``len(batch)`` is N and ``batch.shape``,
    ``ndim`` and ``device`` are those of ``input_ids``. A string indexes by name
    (``batch["attention_mask"]``), iteration and :meth:`keys` give the names, so
    ``model(**batch)`` passes them as keyword arguments. As in ``tensordict``, ``len`` is N,
    not the number of keys (``len(batch.keys())`` is that).

    >>> b = TensorBatch({"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0]]),
    ...                  "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])})
    >>> len(b), tuple(b.shape), b[torch.tensor([1])]["input_ids"].tolist()
    (2, (2, 3), [[7, 0, 0]])
    """

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(tensors, Mapping) or not tensors:
            raise DataError(f"named inputs must be a non-empty mapping of names to tensors "
                            f"({MAIN_INPUT!r}, 'attention_mask', ...), not "
                            f"{type(tensors).__name__}")
        for key, value in tensors.items():
            if not isinstance(key, str):
                raise DataError(f"named inputs: key {key!r} is no string")
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                what = f"a {type(value).__name__}" if not isinstance(value, torch.Tensor) \
                    else "a 0-d tensor"
                raise DataError(f"named inputs: {key!r} is {what}; give a tensor [N, ...] "
                                "with one row per example")
        self._tensors: dict[str, torch.Tensor] = dict(tensors)

    @classmethod
    def _of(cls, tensors: dict[str, torch.Tensor]) -> TensorBatch:
        """A batch of tensors derived from a checked one by indexing, moving or splitting
        (not checked again: an integer index may leave a per-example tensor 0-d)."""
        batch = cls.__new__(cls)
        batch._tensors = tensors
        return batch

    # -- a mapping of names ------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._tensors[key]
        return TensorBatch._of({k: v[key] for k, v in self._tensors.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def keys(self) -> KeysView[str]:
        return self._tensors.keys()

    def values(self) -> ValuesView[torch.Tensor]:
        return self._tensors.values()

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self._tensors.items()

    # identity, as for tensors (Mapping's == would compare tensors elementwise)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                           for k, v in self._tensors.items())
        return f"TensorBatch({shapes})"

    # -- like one tensor [N, ...] ------------------------------------------------------------

    @property
    def main(self) -> torch.Tensor:
        """``input_ids``; a :class:`~bayesbench.errors.DataError` naming it when missing."""
        if MAIN_INPUT not in self._tensors:
            raise DataError(f"named inputs have no {MAIN_INPUT!r} (their keys: "
                            f"{', '.join(map(repr, self._tensors))}); give the token ids "
                            f"[N, T] as {MAIN_INPUT!r}")
        return self._tensors[MAIN_INPUT]

    def __len__(self) -> int:
        """N (the rows of ``input_ids``, or of the first tensor when it is missing)."""
        return len(self._tensors.get(MAIN_INPUT, next(iter(self._tensors.values()))))

    @property
    def shape(self) -> torch.Size:
        return self.main.shape

    @property
    def ndim(self) -> int:
        return self.main.ndim

    @property
    def device(self) -> torch.device:
        return self.main.device

    def to(self, *args: Any, **kwargs: Any) -> TensorBatch:
        return TensorBatch._of({k: v.to(*args, **kwargs) for k, v in self._tensors.items()})

    def split(self, split_size: int) -> tuple[TensorBatch, ...]:
        """Consecutive chunks of ``split_size`` rows (the last may be shorter)."""
        parts = {k: v.split(split_size) for k, v in self._tensors.items()}
        return tuple(TensorBatch._of({k: p[i] for k, p in parts.items()})
                     for i in range(len(next(iter(parts.values())))))

    def check(self, where: str, keys: list[str] | None = None,
              vocab_size: int | None = None) -> None:
        """Raise a :class:`~bayesbench.errors.DataError` starting with ``where`` unless these
        are usable token inputs: ``input_ids`` integer ``[N, T]`` (ids below ``vocab_size``),
        every tensor N rows, ``attention_mask`` (if any) of 0s and 1s shaped like
        ``input_ids``, and the names ``keys`` (those of the training split) when given."""
        if keys is not None and set(self._tensors) != set(keys):
            raise DataError(f"{where} have keys {list(self._tensors)} but the training "
                            f"inputs have {keys}; give every split the same named inputs")
        try:
            ids = self.main
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype.is_complex \
                or ids.dtype == torch.bool:
            raise DataError(f"{where}: {MAIN_INPUT!r} must be integer token ids [N, T], "
                            f"got {list(ids.shape)} {ids.dtype}")
        if ids.numel() and int(ids.min()) < 0:
            raise DataError(f"{where}: {MAIN_INPUT!r} has a negative token id {int(ids.min())}")
        if vocab_size is not None and ids.numel() and int(ids.max()) >= vocab_size:
            raise DataError(f"{where}: {MAIN_INPUT!r} has token id {int(ids.max())}, not below "
                            f"the task's vocab_size = {vocab_size}")
        for key, value in self._tensors.items():
            if len(value) != len(ids):
                raise DataError(f"{where}: {key!r} has {len(value)} rows but {MAIN_INPUT!r} "
                                f"has {len(ids)}; every named input needs one row per example")
        mask = self._tensors.get("attention_mask")
        if mask is not None:
            if mask.shape != ids.shape:
                raise DataError(f"{where}: 'attention_mask' has shape {list(mask.shape)} but "
                                f"{MAIN_INPUT!r} has {list(ids.shape)}; give one 1 (real "
                                "token) or 0 (padding) per token")
            if mask.numel() and not ((mask == 0) | (mask == 1)).all():
                raise DataError(f"{where}: 'attention_mask' must hold 1 (real token) and 0 "
                                "(padding) only")


Inputs = torch.Tensor | TensorBatch
"""A split's inputs: one tensor ``[N, ...]`` or named tensors (:class:`TensorBatch`)."""


def as_inputs(x: Any) -> Any:
    """``x`` with a plain mapping of tensors made a :class:`TensorBatch` (anything else as is)."""
    if isinstance(x, Mapping) and not isinstance(x, TensorBatch):
        return TensorBatch(x)
    return x


@dataclass
class Split:
    """Inputs and labels of one split.

    x: ``[N, ...]`` (see :data:`InputKind`), or named tensors (:class:`TensorBatch`; a
    plain dict of tensors becomes one) for ``tokens``; y: ``[N]`` long class indices;
    true_probs: optional ``[N, C]`` exact Bayes posterior p(y | x) when the generating
    process is known (then metrics against the truth are computed too).
    """

    x: Inputs
    y: torch.Tensor
    true_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.x = as_inputs(self.x)
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

    Inputs are one tensor per split, or, for ``tokens`` tasks, named tensors
    (:class:`TensorBatch`) with the same names in every split and OOD set; those are checked
    when the task is made (a :class:`~bayesbench.errors.DataError` names the dataset, the
    split and the key at fault).
    """

    name: str
    input_kind: InputKind
    num_classes: int
    train: Split
    val: Split
    test: Split
    shifted: dict[str, dict[int, Split]] = field(default_factory=dict)
    ood: dict[str, Inputs] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        self.ood = {k: as_inputs(x) for k, x in self.ood.items()}
        inputs = self.named_inputs()
        named = [(where, x) for where, x in inputs if isinstance(x, TensorBatch)]
        if not named:  # one tensor per split: nothing more to check
            return
        first_where, first = named[0]
        dataset = f"dataset '{self.name}'"
        if self.input_kind != "tokens":
            raise DataError(f"{dataset}: {first_where} inputs are named tensors "
                            f"({', '.join(map(repr, first))}) but the task's input_kind is "
                            f"{self.input_kind!r}; named inputs ({MAIN_INPUT!r}, "
                            "'attention_mask', ...) are for 'tokens' tasks")
        keys = list(first)
        for where, x in inputs:
            if not isinstance(x, TensorBatch):
                raise DataError(f"{dataset}: {where} inputs are one tensor but {first_where} "
                                f"inputs are named tensors ({', '.join(map(repr, keys))}); "
                                "give every split and OOD set the same kind of inputs")
            x.check(f"{dataset}: {where} inputs", keys, self.vocab_size)

    def named_inputs(self) -> list[tuple[str, Inputs]]:
        """``(where, inputs)`` of every split and OOD set (``train``, ``shifted 'noise'
        severity 2``, ``ood 'letters'``, ...)."""
        out: list[tuple[str, Inputs]] = [
            ("train", self.train.x), ("val", self.val.x), ("test", self.test.x)]
        for kind, severities in self.shifted.items():
            out += [(f"shifted {kind!r} severity {s}", sp.x) for s, sp in severities.items()]
        out += [(f"ood {name!r}", x) for name, x in self.ood.items()]
        return out

    @property
    def has_named_inputs(self) -> bool:
        """Whether the inputs are named tensors (:class:`TensorBatch`), not one tensor."""
        return isinstance(self.train.x, TensorBatch)

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

        def cap_x(x: Inputs) -> Inputs:
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
        names = f" ({', '.join(self.train.x)})" if self.has_named_inputs else ""
        return {
            "input": f"{self.input_kind} {list(self.train.x.shape[1:])}{names}",
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
