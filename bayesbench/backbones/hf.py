"""The ``hf`` backbone: a Hugging Face ``transformers`` encoder classifier.

Any ``AutoModelForSequenceClassification`` (BERT, DistilBERT, RoBERTa, ELECTRA, DeBERTa, ...)
from a local directory or hub id (``from_pretrained``), or the same architecture randomly
initialised from its config (``pretrained: false``; ``model`` may then also be a model type
such as ``bert``, sized by ``config``). Token tasks for text models; image tasks
(``Task.image_shape``, e.g. ``digits``) for image models such as ViT
(``AutoModelForImageClassification``: the patches are put back into ``pixel_values``,
:class:`ImageEncoder`; a random-init ViT takes the task's image size, channels and patch size;
a pretrained one gets the image resized, its channels repeated and its pixels normalised by the
model's own image processor, ``AutoImageProcessor``, where the model has one).

The classifier bayesbench sees (:class:`HFClassifier`) is the HF model with the last linear
layer of its classification head taken out: ``features(x)`` is what that layer read (BERT:
the dropout of the pooler's output; DistilBERT: that of ``pre_classifier``), ``head`` is that
layer, and ``head(features(x))`` is exactly the HF model's logits.

Tokens. A task's token ids are rendered as words (:func:`task_words`: the task's own
``Task.vocabulary`` where it has one, as the real-text datasets do, else ``w<id>``; padding
and the unknown word become the model's unknown token) and mapped to the model's ids:
a pretrained model uses its own tokenizer (``AutoTokenizer.from_pretrained(model)``); a
random-init model gets a word-level tokenizer trained with ``tokenizers`` on the training
split (offline; ids unseen in training become ``[UNK]``). Each sequence becomes
``[CLS] tokens [SEP]``; a task's padding (``Task.padding_id``) becomes the attention mask.

Named inputs. A token task whose inputs are named tensors (:class:`~bayesbench.task.TensorBatch`:
``input_ids``, ``attention_mask``, ``token_type_ids``, ... from the user's own tokenizer) has
tokenized already, and with this model's tokenizer: each batch goes to the model as its
keyword inputs, unchanged (no words, no tokenizer here, no ``[CLS]``/``[SEP]`` added; the ids
must be the model's). A name the model's ``forward`` does not take is refused when the model is
built; a pretrained model refuses ids beyond its vocabulary, and a random-init one is sized to
hold them (``vocab_size``, ``max_position_embeddings``).

Hooks. Attention rows go through transformers' own attention-function registry:
:data:`ATTENTION_NAME` is registered with ``AttentionInterface`` (and the eager padding mask
with ``AttentionMaskInterface``), so every model that calls the standard attention interface
takes the rows modules of ``rows_factory`` (attached to each attention module as
``bayesbench_rows``), with no list of model classes. Without ``rows_factory`` the model keeps
its own attention implementation. Linear layers by role (on a pretrained model only layers
that load the weights they replace, ``load_linear``: the ``linear_init`` hook), the head, the
model's own dropout (hidden and attention: MC dropout sets the attention modules to training
mode, which is what switches HF's functional attention dropout on; ``disable_dropout`` sets
every rate to 0), and ``functional_call`` are offered too.

``train``: ``all`` (fine-tune everything), ``head`` (only the classification head: the
modules outside the base model, and the method's own modules such as attention rows), or
``last_2`` (the head, the last two encoder layers and the base model's modules after them,
e.g. BERT's pooler). Frozen parameters get no gradient, so every optimizer leaves them be.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bayesbench.backbones.base import (
    Backbone,
    Dimensions,
    HeadFactory,
    LinearFactory,
    RowsFactory,
)
from bayesbench.errors import BayesbenchError, ConfigError
from bayesbench.models import ModelConfig
from bayesbench.task import Inputs, Task, TensorBatch, patch_size, patches_to_pixels

INSTALL = "pip install 'bayesbench[hf]'"
ATTENTION_NAME = "bayesbench_rows"
"""The name bayesbench's attention function is registered under in transformers."""
TRAIN_MODES = ("all", "head", "last_2")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]

# linear layers by role, from the last components of their module names (the common
# spellings of BERT, DistilBERT, RoBERTa, ELECTRA, DeBERTa, ViT and the *_proj families)
_QKV = {"query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj",
        "query_proj", "key_proj", "value_proj", "in_proj", "qkv"}
_ATTENTION_OUT = {"out_lin", "o_proj", "out_proj"}
_MLP_IN = {"lin1", "fc1", "up_proj", "gate_proj"}
_MLP_OUT = {"lin2", "fc2", "down_proj"}


def require_transformers() -> None:
    """Raise the install command (a :class:`ConfigError`, exit 2) without ``transformers``."""
    if importlib.util.find_spec("transformers") is None or \
            importlib.util.find_spec("tokenizers") is None:
        raise ConfigError("the 'hf' backbone needs the transformers and tokenizers packages, "
                          f"which are not installed: {INSTALL}")


def linear_role(path: str) -> str | None:
    """The :data:`~bayesbench.models.LINEAR_ROLES` role of the linear layer at module path
    ``path`` inside an encoder, or None (embeddings, poolers, ...).

    >>> linear_role("encoder.layer.0.attention.self.query"), linear_role("layer.0.output.dense")
    ('attention.qkv', 'mlp.out')
    """
    parts = path.split(".")
    last = parts[-1]
    if last in _QKV:
        return "attention.qkv"
    if last in _ATTENTION_OUT or path.endswith("attention.output.dense"):
        return "attention.out"
    if last in _MLP_IN or path.endswith("intermediate.dense"):
        return "mlp.in"
    if last in _MLP_OUT or (path.endswith("output.dense") and "attention" not in parts):
        return "mlp.out"
    return None


# --------------------------------------------------------------------------- attention


_recording: list[nn.Module] | None = None  # attention modules seen by the discovery pass


def rows_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature: q, k, v ``[B, H, T, d_head]`` ->
    ``(output [B, T, H, d_head], rows [B, H, T, T])``. The rows are
    ``module.bayesbench_rows(scores, keys=k[, padding=...])`` with ``scores = q k^T *
    scaling`` (softmax of the masked scores when the module has none: the eager maths).
    The padding mask (additive, eager) becomes ``padding`` bool ``[B, 1, 1, T]``."""
    if _recording is not None:
        _recording.append(module)
    if key.shape[1] != query.shape[1]:  # grouped key/value heads
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    padding = None
    if attention_mask is not None:
        mask = attention_mask[:, :, :1, : key.shape[-2]]
        padding = ~mask if mask.dtype == torch.bool else mask < 0
    rows_module = getattr(module, "bayesbench_rows", None)
    if rows_module is None:
        if padding is not None:
            scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
        rows = scores.softmax(-1)
    elif padding is None:
        rows = rows_module(scores, keys=key)
    elif getattr(rows_module, "supports_padding", False):
        rows = rows_module(scores, keys=key, padding=padding)
    else:
        raise NotImplementedError(
            f"attention rows {type(rows_module).__name__} take no padding mask, and this batch "
            "is padded; give the rows module a `padding` argument and `supports_padding = True`")
    rows_dropped = F.dropout(rows, p=dropout, training=module.training)
    return torch.matmul(rows_dropped, value).transpose(1, 2).contiguous(), rows


_registered = False


def register_attention() -> None:
    """Register :func:`rows_attention_forward` and the eager mask under
    :data:`ATTENTION_NAME` (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, rows_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    _registered = True


# --------------------------------------------------------------------------- tokens


class TokenEncoder(nn.Module):
    """Task token ids ``[B, T]`` -> the model's ``input_ids`` / ``attention_mask``
    ``[B, T + 2]`` (``[CLS] tokens [SEP]``, right-padded).

    ``pieces[i]``: the model ids of task token ``i`` (one id each with a trained word-level
    tokenizer: then a lookup table; several with a pretrained subword tokenizer: then each
    sequence is assembled in Python and truncated to ``max_length``).
    """

    def __init__(self, pieces: list[list[int]], cls_id: int, sep_id: int, pad_id: int,
                 padding_id: int | None, max_length: int) -> None:
        super().__init__()
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.padding_id = padding_id
        self.max_length = max_length
        self.single = all(len(p) == 1 for p in pieces)
        self.pieces = pieces
        table = torch.tensor([p[0] if p else pad_id for p in pieces], dtype=torch.long)
        self.register_buffer("table", table if self.single else table[:0], persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.single:
            return self._assembled(x)
        b, t = x.shape
        ids = x.new_full((b, t + 2), self.pad_id)
        ids[:, 0] = self.cls_id
        ids[:, 1:-1] = self.table[x]
        if self.padding_id is None:
            ids[:, -1] = self.sep_id
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        real = x != self.padding_id  # right-padded: the real tokens come first
        lengths = real.sum(1)
        ids[:, 1:-1] = ids[:, 1:-1].masked_fill(~real, self.pad_id)
        ids[torch.arange(b, device=x.device), lengths + 1] = self.sep_id
        positions = torch.arange(t + 2, device=x.device)
        return {"input_ids": ids, "attention_mask": (positions < (lengths + 2)[:, None]).long()}

    def _assembled(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = []
        for seq in x.tolist():
            ids = [i for tok in seq if tok != self.padding_id for i in self.pieces[tok]]
            rows.append([self.cls_id] + ids[: self.max_length - 2] + [self.sep_id])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids.to(x.device), "attention_mask": mask.to(x.device)}


def task_words(task: Task) -> list[str | None]:
    """The word each task token id stands for: ``task.vocabulary[id]`` where the task carries
    one (real text: ``bbc_news``, text files; None for padding and the unknown word), else
    ``w<id>`` (synthetic tokens such as ``markov``'s, which are no words of any language)."""
    vocabulary = task.vocabulary
    if vocabulary is not None and len(vocabulary) == (task.vocab_size or 0):
        return [None if w is None else str(w) for w in vocabulary]
    return [f"w{i}" for i in range(task.vocab_size or 0)]


def train_word_tokenizer(task: Task) -> Any:
    """A word-level ``tokenizers`` tokenizer trained on the training split's tokens (padding
    left out), wrapped as a ``PreTrainedTokenizerFast`` (so ``save_pretrained`` works)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = [w if w is not None else "[UNK]" for w in task_words(task)]
    texts = [" ".join(words[i] for i in seq if i != task.padding_id)
             for seq in task.train.x.tolist()]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


class NamedInputs(nn.Module):
    """Named inputs (:class:`~bayesbench.task.TensorBatch`) of a task tokenized with the
    model's own tokenizer -> the model's keyword inputs, the same tensors (module docstring)."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__()
        self.keys = list(keys)

    def forward(self, x: Inputs) -> dict[str, torch.Tensor]:
        if not isinstance(x, TensorBatch):
            raise BayesbenchError(f"hf backbone: this model reads named inputs "
                                  f"({', '.join(self.keys)}), not one {type(x).__name__}")
        return dict(x)


# --------------------------------------------------------------------------- images


class ImageEncoder(nn.Module):
    """Patch sequences ``[B, T, C·p·p]`` of an image task -> the model's ``pixel_values``
    ``[B, C', S, S]``: the image put back together (:func:`~bayesbench.task.patches_to_pixels`),
    its channels repeated when the model takes 3 and the task has 1, resized (bilinear) to
    the model's ``image_size`` when that differs (a pretrained ViT's 224), and, where ``mean``
    and ``std`` are given (a pretrained model's image processor), normalised per channel as
    that processor does: ``(pixel - mean) / std``. The task's pixels are taken to lie in
    [0, 1] already, i.e. after the processor's own rescaling (``rescale_factor`` 1/255), which
    is what bayesbench's image datasets hold."""

    def __init__(self, image_shape: list[int], channels: int, size: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__()
        self.image_shape = list(image_shape)
        self.channels, self.size = channels, size
        # plain tensors, not buffers: not parameters of the model (functional_call, vmap)
        self.mean = None if mean is None else _per_channel(mean, channels)
        self.std = None if std is None else _per_channel(std, channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = patches_to_pixels(x, self.image_shape)
        if pixels.shape[1] != self.channels:
            pixels = pixels.expand(-1, self.channels, -1, -1)
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear",
                                   align_corners=False)
        if self.mean is not None:
            pixels = (pixels - self.mean.to(pixels)) / self.std.to(pixels)
        return {"pixel_values": pixels.contiguous()}


def _per_channel(values: Any, channels: int) -> torch.Tensor:
    """An image processor's mean or std (a number, or one per channel) as ``[1, C, 1, 1]``."""
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise BayesbenchError(f"hf backbone: the image processor's mean/std has {t.numel()} "
                              f"values for a model of {channels} channels")
    return t.reshape(1, channels, 1, 1).clone()


def image_normalisation(model: str) -> tuple[list[float], list[float]] | None:
    """``(image_mean, image_std)`` of a pretrained model's image processor
    (``AutoImageProcessor.from_pretrained(model)``, i.e. its ``preprocessor_config.json``),
    or None when it has none or does not normalise (``do_normalize: false``)."""
    from transformers import AutoImageProcessor

    try:
        with _quiet():
            processor = AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError):  # no preprocessor_config.json: the model's pixels as they are
        return None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if not getattr(processor, "do_normalize", True) or mean is None or std is None:
        return None
    # a number or one per channel, as plain floats
    return (torch.as_tensor(mean, dtype=torch.float64).flatten().tolist(),
            torch.as_tensor(std, dtype=torch.float64).flatten().tolist())


# --------------------------------------------------------------------------- the classifier


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, last = path.split(".")
    module = root
    for p in parents:
        module = getattr(module, p)
    return module, last


class HFClassifier(nn.Module):
    """``forward(x) -> logits [B, C]``, ``features(x) -> [B, D]``, ``head`` (module docstring).

    ``hf``: the HF model whose head layer (at ``head_path``) is an ``nn.Identity``;
    ``attention_modules``: its attention modules in layer order (those that called the
    attention interface)."""

    def __init__(self, hf: nn.Module, head: nn.Module, head_path: str, encoder: nn.Module,
                 tokenizer: Any, attention_modules: list[nn.Module]) -> None:
        super().__init__()
        self.hf = hf
        self.head = head
        self.head_path = head_path
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.attention_modules = attention_modules  # a plain list: not registered twice

    def inputs(self, x: Inputs) -> dict[str, torch.Tensor]:
        """The HF model's keyword inputs for a batch of the task's inputs (token ids
        ``[B, T]``, named inputs as they are, or an image task's patches ``[B, T, F]``)."""
        return self.encoder(x)

    def features(self, x: Inputs) -> torch.Tensor:
        return self.hf(**self.inputs(x)).logits

    def forward(self, x: Inputs) -> torch.Tensor:
        return self.head(self.features(x))

    def save_pretrained(self, path: str | Path) -> None:
        """The HF model with its head back in place, and its tokenizer, into ``path``
        (loadable by ``from_pretrained`` and by this backbone with ``pretrained: true``).
        A head that is not a plain linear layer (e.g. a GP head) cannot be saved so."""
        if type(self.head) is not nn.Linear:
            raise ValueError(f"the head is a {type(self.head).__name__}; only a linear head "
                             "saves into a transformers checkpoint")
        parent, last = _parent(self.hf, self.head_path)
        setattr(parent, last, self.head)
        try:
            self.hf.save_pretrained(path)
        finally:
            setattr(parent, last, nn.Identity())
        if self.tokenizer is not None:  # image models have none
            self.tokenizer.save_pretrained(path)


class HFBackbone(Backbone):
    """A ``transformers`` encoder classifier (module docstring).

    ``model``: a local directory or hub id (``from_pretrained``), or with ``pretrained:
    false`` also a model type (``bert``, ``distilbert``, ...). ``pretrained``: load the weights
    (and the model's tokenizer), or initialise the architecture randomly. ``train``: one of
    :data:`TRAIN_MODES`. ``config``: attributes set on the model's config (e.g.
    ``{hidden_size: 32, num_hidden_layers: 2}`` for random init, or
    ``{hidden_dropout_prob: 0.2}``).
    """

    name = "hf"
    description = "a Hugging Face transformers encoder classifier (pip install 'bayesbench[hf]')"
    version = 3
    # 2: real-text tasks reach the tokenizers as their words (was w<id>); 3: a pretrained
    # image model's pixels are normalised by its image processor's mean and std

    def __init__(self, model: str, pretrained: bool = True, train: str = "all",
                 config: dict | None = None) -> None:
        require_transformers()
        if not isinstance(model, str) or not model:
            raise ValueError("model: give a local directory, a hub id, or (pretrained: false) "
                             "a model type such as bert")
        if train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {', '.join(TRAIN_MODES)}, not {train!r}")
        if pretrained and not Path(model).is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ValueError(f"model {model!r} is not a local directory and HF_HUB_OFFLINE=1 "
                             "forbids the hub; give the directory a model was saved in")
        self.model = model
        self.pretrained = pretrained
        self.train = train
        self.config = dict(config or {})

    def prepare(self) -> None:
        """Import transformers (seconds) and register the attention function."""
        register_attention()

    @classmethod
    def examples(cls) -> dict[str, Backbone]:
        # what a pretrained and a random-init model support ("." only stands for a folder)
        return {"hf (pretrained)": cls(".", pretrained=True),
                "hf (pretrained: false)": cls("bert", pretrained=False)}

    def hooks(self) -> frozenset[str]:
        hooks = {"features", "head", "rows", "dropout", "dropout_off", "functional"}
        hooks.add("linear_init" if self.pretrained else "linear")
        return frozenset(hooks)

    def unsupported(self, needs: frozenset[str] | set[str]) -> str | None:
        reason = super().unsupported(needs)
        if reason and "linear" in needs and self.pretrained:
            reason += " (new linear layers would discard the pretrained weights; " \
                      "pretrained: false allows them, or layers that load them: linear_init)"
        return reason

    def check_task(self, task: Task) -> None:
        if task.input_kind == "tokens" or task.is_image:
            return
        raise BayesbenchError(f"the hf backbone reads token inputs (text models) and images "
                              f"(ViT); task '{task.name}' has {task.input_kind} inputs that are "
                              "no image (use the transformer backbone)")

    # -- loading -------------------------------------------------------------------------

    def _hf_config(self, task: Task, vocab_size: int | None = None) -> Any:
        from transformers import CONFIG_MAPPING, AutoConfig

        with _quiet():
            if not self.pretrained and self.model in CONFIG_MAPPING and \
                    not Path(self.model).exists():
                cfg = AutoConfig.for_model(self.model, **self.config)
            else:
                cfg = AutoConfig.from_pretrained(self.model, **self.config)
        cfg.num_labels = task.num_classes
        if not self.pretrained and task.is_image:  # the task's own image
            cfg.num_channels, cfg.image_size = task.image_shape[0], task.image_shape[1]
            if "patch_size" not in self.config:  # the dataset's patches, unless configured
                cfg.patch_size = patch_size(task.image_shape, task.feature_dim)
        elif not self.pretrained:  # token ids: the word tokenizer's, or named inputs' own
            named = task.has_named_inputs
            if vocab_size is not None:
                cfg.vocab_size = vocab_size
            elif named and task.vocab_size and task.vocab_size > cfg.vocab_size:
                cfg.vocab_size = task.vocab_size
            needed = task.num_tokens + (0 if named else 2)  # words get [CLS] ... [SEP]
            if getattr(cfg, "max_position_embeddings", needed) < needed:
                cfg.max_position_embeddings = needed
        return cfg

    def dimensions(self, task: Task, cfg: ModelConfig) -> Dimensions:
        c = self._hf_config(task)
        heads = c.num_attention_heads
        return Dimensions(depth=c.num_hidden_layers, heads=heads, d_model=c.hidden_size,
                          d_head=c.hidden_size // heads, features=c.hidden_size)

    def load(self, task: Task) -> tuple[nn.Module, Any]:
        """The plain HF model (with ``task.num_classes`` labels) and its tokenizer (None for
        an image task: an ``AutoModelForImageClassification``)."""
        from transformers import (
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        image = task.is_image
        auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
        tokenizer = None
        words = not image and not task.has_named_inputs  # named inputs are tokenized already
        try:
            with _quiet():
                if self.pretrained:
                    if words:
                        tokenizer = AutoTokenizer.from_pretrained(self.model)
                    model = auto.from_pretrained(self.model, config=self._hf_config(task),
                                                 ignore_mismatched_sizes=True)
                else:
                    if words:
                        tokenizer = train_word_tokenizer(task)
                    model = auto.from_config(self._hf_config(
                        task, vocab_size=None if tokenizer is None else len(tokenizer)))
        except (OSError, ValueError) as exc:  # ValueError: the wrong kind of model
            kind = f" as an image classifier for task '{task.name}'" if image else ""
            raise BayesbenchError(f"hf backbone: cannot load {self.model!r}{kind}: "
                                  f"{' '.join(str(exc).split())[:400]}") from None
        return model, tokenizer

    # -- building ------------------------------------------------------------------------

    def build(
        self,
        task: Task,
        cfg: ModelConfig,
        *,
        rows_factory: RowsFactory | None = None,
        linear_factory: LinearFactory | None = None,
        head_factory: HeadFactory | None = None,
    ) -> HFClassifier:
        self.check_task(task)
        register_attention()
        hf, tokenizer = self.load(task)
        encoder = self._encoder(task, tokenizer, hf)
        attention = self._discover_attention(hf, encoder, task)
        if rows_factory is not None:
            for i, module in enumerate(attention):
                module.bayesbench_rows = rows_factory(i, hf.config.num_attention_heads)
            hf.set_attn_implementation(ATTENTION_NAME)
        if linear_factory is not None:
            self._replace_linears(hf, linear_factory)
        head_path, own_head = self._head(hf, task.num_classes)
        head: nn.Module = own_head
        if head_factory is not None:
            head = head_factory(own_head.in_features, task.num_classes)
        elif linear_factory is not None:
            new = linear_factory(own_head.in_features, task.num_classes, "head")
            if not _plain_linear(new):
                head = new
        parent, last = _parent(hf, head_path)
        setattr(parent, last, nn.Identity())
        model = HFClassifier(hf, head, head_path, encoder, tokenizer, attention)
        self._freeze(model, attention)
        return model

    def _encoder(self, task: Task, tokenizer: Any, hf: nn.Module) -> nn.Module:
        if task.has_named_inputs:
            return self._named_inputs(task, hf)
        if tokenizer is None:  # an image task
            cfg = hf.config
            norm = image_normalisation(self.model) if self.pretrained else None
            return ImageEncoder(task.image_shape, int(getattr(cfg, "num_channels", 3)),
                                int(getattr(cfg, "image_size", task.image_shape[1])),
                                *(norm or (None, None)))
        words = task_words(task)
        unknown = [tokenizer.unk_token_id] if tokenizer.unk_token_id is not None else []
        if self.pretrained:  # the model's own (subword) tokenizer reads each word
            pieces = [unknown if w is None else tokenizer(w, add_special_tokens=False)["input_ids"]
                      for w in words]
        else:
            vocab = tokenizer.get_vocab()
            pieces = [unknown if w is None else [vocab.get(w, tokenizer.unk_token_id)]
                      for w in words]
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None \
            else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None \
            else tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        max_length = getattr(hf.config, "max_position_embeddings", 512)
        encoder = TokenEncoder(pieces, cls_id, sep_id, pad_id, task.padding_id, max_length)
        if encoder.single and task.num_tokens + 2 > max_length:
            raise BayesbenchError(f"task '{task.name}' has sequences of {task.num_tokens} "
                                  f"tokens; the model takes at most {max_length - 2}")
        return encoder

    def _named_inputs(self, task: Task, hf: nn.Module) -> NamedInputs:
        """The encoder of a task with named inputs, once they are known to fit the model."""
        import inspect

        accepted = [n for n, p in inspect.signature(hf.forward).parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "labels"]
        for key in task.train.x:
            if key not in accepted:
                raise BayesbenchError(
                    f"hf backbone: task '{task.name}' has the named input {key!r}, which "
                    f"{type(hf).__name__} does not take (it takes {', '.join(accepted)}); "
                    "leave it out of the dataset's inputs or use a model that reads it")
        vocab = getattr(hf.config, "vocab_size", None)
        if vocab is not None and task.vocab_size and task.vocab_size > vocab:
            raise BayesbenchError(
                f"hf backbone: task '{task.name}' has token ids up to {task.vocab_size - 1} but "
                f"{self.model!r} has a vocabulary of {vocab}; named inputs must be ids of the "
                "model's own tokenizer")
        positions = getattr(hf.config, "max_position_embeddings", None)
        if positions is not None and task.num_tokens > positions:
            raise BayesbenchError(f"hf backbone: task '{task.name}' has sequences of "
                                  f"{task.num_tokens} tokens; the model takes at most {positions}")
        return NamedInputs(list(task.train.x))

    @staticmethod
    def _discover_attention(hf: nn.Module, encoder: nn.Module, task: Task) -> list[nn.Module]:
        """The attention modules in call order: one eval-mode pass on a short sequence with
        bayesbench's attention function, recording every module that calls it."""
        global _recording
        previous = hf.config._attn_implementation
        hf.set_attn_implementation(ATTENTION_NAME)
        was_training = hf.training
        hf.eval()
        _recording = []
        try:
            with torch.no_grad():
                x = task.train.x[:1]
                if isinstance(x, torch.Tensor) and x.ndim == 2:  # token ids: a short start
                    x = x[:, : min(4, x.shape[1])]
                hf(**encoder(x))
            found = list(dict.fromkeys(_recording))
        finally:
            _recording = None
            hf.set_attn_implementation(previous)
            hf.train(was_training)
        if not found:
            raise BayesbenchError(f"hf backbone: {type(hf).__name__} does not call transformers' "
                                  "attention interface; its attention rows cannot be replaced")
        return found

    @staticmethod
    def _head(hf: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
        """The last linear layer outside the base model with ``num_classes`` outputs."""
        base = {id(m) for m in hf.base_model.modules()}
        found = [(name, m) for name, m in hf.named_modules()
                 if isinstance(m, nn.Linear) and m.out_features == num_classes
                 and id(m) not in base]
        if not found:
            raise BayesbenchError(f"hf backbone: no classification head found in "
                                  f"{type(hf).__name__}")
        return found[-1]

    def _replace_linears(self, hf: nn.Module, linear_factory: LinearFactory) -> None:
        """Put the factory's layers in place of the encoder's linear layers by role; on a
        pretrained model each new layer first loads the weights it replaces (linear_init)."""
        for name, module in list(hf.base_model.named_modules()):
            role = linear_role(name)
            if role is None or not isinstance(module, nn.Linear):
                continue
            new = linear_factory(module.in_features, module.out_features, role)
            if _plain_linear(new):  # a plain nn.Linear means "no change": keep HF's
                continue
            if self.pretrained:
                load = getattr(new, "load_linear", None)
                if load is None:
                    raise BayesbenchError(
                        f"hf backbone: a {type(new).__name__} would replace the pretrained "
                        f"layer {name} and discard its weights; give it load_linear(layer)")
                load(module)
            parent, last = _parent(hf.base_model, name)
            setattr(parent, last, new.to(module.weight.device))

    def _freeze(self, model: HFClassifier, attention: list[nn.Module]) -> None:
        if self.train == "all":
            return
        hf = model.hf
        trainable = {id(p) for name, p in hf.named_parameters()
                     if not name.startswith(hf.base_model_prefix + ".")}
        trainable |= {id(p) for p in model.head.parameters()}
        for m in attention:  # the method's own modules (attention rows)
            rows = getattr(m, "bayesbench_rows", None)
            if rows is not None:
                trainable |= {id(p) for p in rows.parameters()}
        if self.train == "last_2":
            layers = _layer_list(hf)
            in_layers = {id(p) for p in layers.parameters()}
            trainable |= {id(p) for layer in list(layers)[-2:] for p in layer.parameters()}
            embeddings = getattr(hf.base_model, "embeddings", None)
            skip = in_layers | ({id(p) for p in embeddings.parameters()} if embeddings else set())
            trainable |= {id(p) for p in hf.base_model.parameters() if id(p) not in skip}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)

    def disable_dropout(self, model: nn.Module) -> None:
        """Every dropout rate to 0: the nn.Dropout layers (BERT and DistilBERT attention read
        their rate from one) and float ``*dropout*`` attributes of the attention modules
        (models that keep the attention rate as a number)."""
        super().disable_dropout(model)
        for m in getattr(model, "attention_modules", []):
            for name, value in vars(m).items():
                if "dropout" in name and isinstance(value, float):
                    setattr(m, name, 0.0)

    def enable_dropout(self, model: nn.Module) -> None:
        """Eval mode except the dropout layers and the attention modules' own training flag
        (HF attention dropout is functional: on only while its module trains)."""
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()
        for m in getattr(model, "attention_modules", []):
            m.training = True


def _plain_linear(module: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return type(module) is nn.Linear and not parametrize.is_parametrized(module)


def _layer_list(hf: nn.Module) -> nn.ModuleList:
    n = hf.config.num_hidden_layers
    for m in hf.base_model.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return m
    raise BayesbenchError(f"hf backbone: cannot find the {n} encoder layers of "
                          f"{type(hf).__name__} (train: last_2)")


@contextlib.contextmanager
def _quiet():
    """transformers' loading messages (newly initialised heads, ...) at error level only."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
