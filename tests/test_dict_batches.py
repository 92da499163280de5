"""Named inputs (issue #11): a task whose inputs are ``input_ids`` + ``attention_mask`` (+
``token_type_ids``), as the user's own tokenizer returns them, through every method on the
built-in encoder, through the hf backbone, the dataset cache, a quick run, and bad inputs.

The dataset is a ``module:Class`` plugin written to a temporary folder (so the CLI can import
it too): right-padded sequences of 2 to 10 real tokens, label 1 when at least half of the real
tokens are low ids (below 12); the padding never enters the label.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap

import pytest
import torch

from bayesbench.backbones import unsupported_reason
from bayesbench.data.cache import DatasetCache, decode_task, encode_task
from bayesbench.errors import BayesbenchError, DataError
from bayesbench.methods.base import (
    EvaluationConfig,
    FitContext,
    TrainingConfig,
    predict_batched,
    train_classifier,
)
from bayesbench.models import ModelConfig, build_model
from bayesbench.registry import METHODS
from bayesbench.task import Split, Task, TensorBatch

PLUGIN = "named_tokens_plugin"
PLUGIN_SOURCE = textwrap.dedent('''
    """Token ids with an attention mask, as a tokenizer returns them (tests/test_dict_batches)."""

    import torch

    from bayesbench.data.base import Dataset
    from bayesbench.task import Split, Task

    VOCAB, LENGTH, PAD = 24, 10, 0


    def named_inputs(n, g, low=2, high=LENGTH, ids_from=1):
        lengths = torch.randint(low, high + 1, (n,), generator=g)
        real = torch.arange(LENGTH)[None] < lengths[:, None]
        ids = torch.randint(ids_from, VOCAB, (n, LENGTH), generator=g).masked_fill(~real, PAD)
        y = (2 * ((ids < VOCAB // 2) & real).sum(1) >= lengths).long()  # real tokens only
        inputs = {"input_ids": ids, "attention_mask": real.long(),
                  "token_type_ids": torch.zeros_like(ids)}
        return inputs, y


    class NamedTokens(Dataset):
        name = "named_tokens"
        description = "token ids + attention_mask + token_type_ids, right-padded"

        def __init__(self, train: int = 128, test: int = 64, keys: str = "good") -> None:
            self.train, self.test, self.keys = train, test, keys

        def build(self, seed):
            g = torch.Generator().manual_seed(seed)
            splits = {}
            for name, n in (("train", self.train), ("val", self.test), ("test", self.test)):
                splits[name] = Split(*named_inputs(n, g))
            if self.keys == "no_input_ids":
                x = dict(splits["test"].x)
                x["ids"] = x.pop("input_ids")
                splits["test"] = Split(x, splits["test"].y)
            elif self.keys == "short_mask":
                x = dict(splits["val"].x)
                x["attention_mask"] = x["attention_mask"][:-1]
                splits["val"] = Split(x, splits["val"].y)
            short = {s: Split(*named_inputs(self.test, g, high=2 + 2 * s)) for s in (1, 2)}
            ood, _ = named_inputs(self.test, g, ids_from=VOCAB - 4)  # a plain dict
            return Task(name="named_tokens", input_kind="tokens", num_classes=2, **splits,
                        shifted={"short": short}, ood={"high_ids": ood}, vocab_size=VOCAB)

        def check(self):
            self.build(0)  # bad named inputs stop `bayesbench run` before anything runs
''')


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(PLUGIN, None)


@pytest.fixture(scope="module")
def plugin(plugin_dir):
    import importlib

    return importlib.import_module(PLUGIN)


@pytest.fixture(scope="module")
def task(plugin) -> Task:
    return plugin.NamedTokens().build(0)


CFG = ModelConfig(d_model=16, heads=2, depth=2)


def tiny_context(**kwargs) -> FitContext:
    return FitContext(model=CFG, training=TrainingConfig(epochs=2, batch_size=32),
                      evaluation=EvaluationConfig(mc_samples=2, batch_size=48), seed=1, **kwargs)


def assert_simplex(p: torch.Tensor, n: int, c: int) -> None:
    assert p.shape[1:] == (n, c)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)


# --------------------------------------------------------------------------- the batch


def test_a_tensor_batch_indexes_moves_and_splits_like_one_tensor(task):
    x = task.train.x
    assert isinstance(x, TensorBatch)  # the plugin gave a plain dict
    assert isinstance(task.ood["high_ids"], TensorBatch)
    assert len(x) == 128 and tuple(x.shape) == (128, 10) and x.ndim == 2
    assert list(x) == ["input_ids", "attention_mask", "token_type_ids"]
    assert len(x.keys()) == 3
    idx = torch.tensor([5, 0, 7])
    part = x[idx]
    assert isinstance(part, TensorBatch) and len(part) == 3
    for key in x:
        assert torch.equal(part[key], x[key][idx])
        assert torch.equal(x[2:4][key], x[key][2:4])
    chunks = x.split(50)
    assert [len(c) for c in chunks] == [50, 50, 28]
    assert all(torch.equal(torch.cat([c[k] for c in chunks]), x[k]) for k in x)
    moved = x.to(torch.device("cpu"))
    assert moved.device == torch.device("cpu") and torch.equal(moved["input_ids"],
                                                               x["input_ids"])
    assert dict(x).keys() == {"input_ids", "attention_mask", "token_type_ids"}
    assert "attention_mask: [128, 10] int64" in repr(x)
    # a split and the quick budget cut every tensor alike
    small = task.limited(16, 8, seed=0)
    assert len(small.train) == 16 and len(small.train.x) == 16
    assert small.train.x["attention_mask"].shape == (16, 10)
    assert len(small.ood["high_ids"]) == 8 and isinstance(small.ood["high_ids"], TensorBatch)
    assert task.num_tokens == 10 and task.feature_dim == 0
    assert task.summary()["input"] == "tokens [10] (input_ids, attention_mask, token_type_ids)"


def test_a_task_with_named_inputs_round_trips_through_the_dataset_cache(task, tmp_path):
    back = decode_task(encode_task(task))
    cache = DatasetCache(tmp_path)
    cache.store("named", "k", task, {}, 0.0)
    loaded = cache.load("named", "k")
    for other in (back, loaded):
        assert isinstance(other.test.x, TensorBatch) and list(other.test.x) == list(task.test.x)
        for (where, a), (_, b) in zip(task.named_inputs(), other.named_inputs()):
            assert all(torch.equal(a[k], b[k]) for k in a), where
        assert torch.equal(other.test.y, task.test.y)


def test_plugin_datasets_are_never_cached(plugin):
    from bayesbench.data.cache import key_material

    assert key_material(plugin.NamedTokens, "named_tokens", {}, 0) is None


# --------------------------------------------------------------------------- the encoder


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padded_positions_leave_the_logits_unchanged_and_real_ones_do_not(task, pool):
    torch.manual_seed(0)
    model = build_model(task, dataclasses.replace(CFG, pool=pool)).eval()
    x = task.test.x
    mask = x["attention_mask"].bool()
    assert (~mask).any(), "the test set must hold padding"
    garbage = torch.randint(1, task.vocab_size, x["input_ids"].shape,
                            generator=torch.Generator().manual_seed(1))
    other_pads = TensorBatch({**x, "input_ids": torch.where(mask, x["input_ids"], garbage)})
    real = x["input_ids"].clone()
    real[:, 0] = (real[:, 0] + 5) % task.vocab_size  # the first token is always real
    other_real = TensorBatch({**x, "input_ids": real})
    with torch.no_grad():
        logits = model(x)
        assert (model(other_pads) - logits).abs().max() <= 1e-6
        assert (model(other_real) - logits).abs().amax(-1).min() > 1e-6  # every row moves
        # without the mask the padding would count: the same ids as one tensor differ
        assert (model(other_pads["input_ids"]) - model(x["input_ids"])).abs().max() > 1e-4


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_an_all_ones_attention_mask_gives_the_plain_tensors_logits_exactly(task, pool):
    torch.manual_seed(0)
    model = build_model(task, dataclasses.replace(CFG, pool=pool)).eval()
    ids = task.test.x["input_ids"]
    ones = TensorBatch({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with torch.no_grad():
        assert torch.equal(model(ones), model(ids))


def test_named_inputs_without_an_attention_mask_use_the_tasks_padding_id(task):
    """No ``attention_mask``: ``padding_id`` decides, as for one tensor."""
    padded = dataclasses.replace(task, padding_id=0)
    torch.manual_seed(0)
    model = build_model(padded, CFG).eval()
    ids = task.test.x["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(TensorBatch({"input_ids": ids})), model(ids))
        assert torch.equal(model(TensorBatch({"input_ids": ids})), model(task.test.x))


def test_the_encoder_names_a_missing_input_ids(task):
    model = build_model(task, CFG).eval()
    batch = TensorBatch({"ids": task.test.x["input_ids"]})
    with pytest.raises(DataError, match="'input_ids'.*its keys: 'ids'"):
        model(batch)


def test_training_on_named_inputs_ignores_the_padding(task):
    """Two trainings whose inputs differ only at padded positions give the same network."""
    x = task.train.x
    garbage = torch.randint(1, task.vocab_size, x["input_ids"].shape,
                            generator=torch.Generator().manual_seed(2))
    ids = torch.where(x["attention_mask"].bool(), x["input_ids"], garbage)
    other = Split(TensorBatch({**x, "input_ids": ids}), task.train.y)
    ctx = dataclasses.replace(tiny_context(), model=dataclasses.replace(CFG, dropout=0.0,
                                                                         attention_dropout=0.0))
    probs = []
    for split in (task.train, other):
        torch.manual_seed(0)
        model = build_model(task, ctx.model)
        train_classifier(model, split, ctx)
        probs.append(predict_batched(lambda xb, m=model: m(xb)[None], task.test.x, 48,
                                     ctx.device))
    assert (probs[0] - probs[1]).abs().max() <= 1e-5


# --------------------------------------------------------------------------- every method

METHOD_PARAMS = {"deep_ensemble": {"members": 2}, "swag": {"rank": 2},
                 "sghmc": {"cycles": 1, "samples_per_cycle": 2}, "sngp": {"num_inducing": 32}}
CASES = [(name, METHOD_PARAMS.get(name, {})) for name in sorted(METHODS.names())] + [
    ("deep_ensemble", {"members": 2, "vectorized": True}),
    ("laplace", {"backbone": "dirichlet_attention"}),
]


def test_every_registered_method_is_covered():
    assert {name for name, _ in CASES} >= {
        "map", "mc_dropout", "deep_ensemble", "mfvi", "laplace", "swag", "sghmc", "sngp",
        "dirichlet_attention", "bam_attention", "temperature_scaling"}


CASE_IDS = ["-".join([n, *map(str, p.values())]) for n, p in CASES]


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_every_method_fits_and_predicts_on_named_inputs(task, name, params):
    method = METHODS.get(name)(**params)
    method.fit(task.limited(96, 48, seed=0), tiny_context())
    for _, x in task.named_inputs()[2:]:  # test, shifted, OOD
        assert_simplex(method.predict(x), len(x), task.num_classes)
    if name in ("mc_dropout", "dirichlet_attention"):
        # mc_dropout draws its masks from the global random stream, call by call; the
        # Dirichlet rejection sampler's use of its stream depends on every row's
        # concentrations, padded queries' rows included (the same distribution, other draws)
        return
    # a predict is a function of its inputs, in which the padding's token ids do not enter
    x = task.test.x
    garbage = torch.where(x["attention_mask"].bool(), x["input_ids"], 7)
    assert torch.equal(method.predict(TensorBatch({**x, "input_ids": garbage})),
                       method.predict(x))


# --------------------------------------------------------------------------- bad inputs


def test_named_inputs_without_input_ids_fail_naming_the_dataset_and_the_key(plugin):
    with pytest.raises(DataError) as err:
        plugin.NamedTokens(keys="no_input_ids").build(0)
    message = str(err.value)
    assert "dataset 'named_tokens'" in message and "'input_ids'" in message
    assert "test inputs" in message and err.value.exit_code == 2


def test_named_inputs_of_different_lengths_fail_naming_the_key(plugin):
    with pytest.raises(DataError, match=r"dataset 'named_tokens': val inputs: "
                                        r"'attention_mask' has 63 rows but 'input_ids' has 64"):
        plugin.NamedTokens(keys="short_mask").build(0)


def test_named_inputs_are_for_token_tasks_and_every_split_alike(task):
    x = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(DataError, match="dataset 'rows'.*input_kind is 'features'.*'tokens'"):
        Task("rows", "features", 2, Split(x, y), Split(x, y), Split(x, y))
    with pytest.raises(DataError, match="dataset 'mixed': val inputs are one tensor"):
        Task("mixed", "tokens", 2, Split(x, y), Split(x["input_ids"], y), Split(x, y),
             vocab_size=5)
    with pytest.raises(DataError, match="ood 'o' inputs have keys"):
        Task("keys", "tokens", 2, Split(x, y), Split(x, y), Split(x, y), vocab_size=5,
             ood={"o": {**x, "token_type_ids": x["input_ids"]}})
    with pytest.raises(DataError, match="token id 9, not below the task's vocab_size = 5"):
        Task("ids", "tokens", 2, Split(x, y), Split(x, y),
             Split({"input_ids": torch.full((4, 3), 9)}, y), vocab_size=5)
    with pytest.raises(DataError, match="'attention_mask' must hold 1 .* and 0"):
        masked = {**x, "attention_mask": torch.ones(4, 3)}
        Task("mask", "tokens", 2, Split(masked, y), Split(masked, y),
             Split({**x, "attention_mask": torch.full((4, 3), 2)}, y), vocab_size=5)
    with pytest.raises(DataError, match="'attention_mask' is a list"):
        TensorBatch({"input_ids": x["input_ids"], "attention_mask": [1, 1, 1, 1]})


def test_bad_named_inputs_stop_the_cli_with_exit_2_naming_the_key(run_cli, plugin_dir, tmp_path):
    (tmp_path / "bad.yaml").write_text(textwrap.dedent(f"""
        seeds: [0]
        datasets:
          - name: {PLUGIN}:NamedTokens
            params: {{keys: short_mask}}
        methods: [map]
    """))
    res = run_cli("run", "--quick", "--config", "bad.yaml", "--store", "r.sqlite",
                  extra_path=plugin_dir)
    assert res.returncode == 2, res.stderr
    assert "'attention_mask' has 63 rows but 'input_ids' has 64" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- a whole run


def test_a_quick_run_on_a_plugin_dataset_with_named_inputs_stores_complete_results(
        run_cli, plugin_dir, tmp_path):
    (tmp_path / "named.yaml").write_text(textwrap.dedent(f"""
        seeds: [0]
        model: {{d_model: 16, heads: 2, depth: 1}}
        quick: {{epochs: 1, max_train: 64, max_eval: 32, mc_samples: 2}}
        datasets:
          - name: {PLUGIN}:NamedTokens
            label: named
        methods: [map, dirichlet_attention, laplace]
    """))
    res = run_cli("run", "--quick", "--config", "named.yaml", "--store", "r.sqlite",
                  extra_path=plugin_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    from bayesbench.predictions import decode
    from bayesbench.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    results = store.results()
    assert sorted(r.label for r in results) == ["dirichlet_attention", "laplace", "map"]
    for r in results:
        assert r.status == "complete", r.error
        splits = {m.split for m in r.metrics}
        assert {"test", "shift/short/1", "shift/short/2", "ood/high_ids"} <= splits, splits
        assert all(m.value == m.value for m in r.metrics if m.split == "test")  # no NaN
        kept = decode(store.predictions(r.key))  # labels and probabilities, no inputs
        assert kept["test"].labels.shape == (32,) and kept["ood/high_ids"].labels is None


# --------------------------------------------------------------------------- hf


HF_CONFIG = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32}


@pytest.fixture(scope="module")
def tiny_bert(task, tmp_path_factory):
    """A tiny random-init BERT whose vocabulary holds the task's ids, saved and loaded by
    path (no tokenizer: the dataset tokenized already)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("bert", **HF_CONFIG, vocab_size=task.vocab_size,
                                               num_labels=task.num_classes)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    return str(path)


def test_hf_reads_named_inputs_as_the_models_own(task, tiny_bert):
    import transformers

    from bayesbench.backbones.hf import HFBackbone

    model = HFBackbone(tiny_bert).build(task, CFG).eval()
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    x = task.test.x
    with torch.no_grad():
        assert model.inputs(x).keys() == {"input_ids", "attention_mask", "token_type_ids"}
        ours = model(x)
        theirs = plain(**dict(x)).logits
        assert (ours - theirs).abs().max() <= 1e-6
        # the model's own attention mask: padded ids leave the logits be
        garbage = torch.where(x["attention_mask"].bool(), x["input_ids"], 5)
        assert (model(TensorBatch({**x, "input_ids": garbage})) - ours).abs().max() <= 1e-6
    assert model.tokenizer is None


HF_METHODS = [(name, params) for name, params in CASES if "vectorized" not in params] + [
    ("mfvi", {"dropout": True})]  # no vmap over an HF model


@pytest.mark.parametrize("pretrained", [True, False])
@pytest.mark.parametrize("name,params", HF_METHODS,
                         ids=["-".join([n, *map(str, p.values())]) for n, p in HF_METHODS])
def test_methods_run_on_hf_with_named_inputs(task, tiny_bert, name, params, pretrained):
    from bayesbench.backbones.hf import HFBackbone

    backbone = HFBackbone(tiny_bert, pretrained=pretrained)
    method = METHODS.get(name)(**params)
    if unsupported_reason(method, backbone):  # sngp's spectral layers on pretrained weights
        assert pretrained and name == "sngp"
        return
    assert unsupported_reason(method, backbone) is None
    method.fit(task.limited(64, 32, seed=0), tiny_context(backbone=backbone))
    for _, x in task.named_inputs()[2:]:
        assert_simplex(method.predict(x), len(x), task.num_classes)


def test_hf_random_init_sizes_itself_to_the_named_inputs(task):
    pytest.importorskip("transformers")
    from bayesbench.backbones.hf import HFBackbone

    big = dataclasses.replace(task, vocab_size=40)  # ids beyond the type's default are fine
    model = HFBackbone("bert", pretrained=False, config=HF_CONFIG).build(big, CFG).eval()
    assert model.hf.config.vocab_size == 30522 and model.tokenizer is None
    with torch.no_grad():
        assert model(task.test.x).shape == (len(task.test), 2)


def test_hf_refuses_a_named_input_its_model_does_not_take(task, tiny_bert, tmp_path):
    import transformers

    from bayesbench.backbones.hf import HFBackbone

    config = transformers.AutoConfig.for_model(
        "distilbert", dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=task.vocab_size,
        num_labels=2)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(BayesbenchError, match="named input 'token_type_ids', which "
                                              "DistilBertForSequenceClassification does not take"):
        HFBackbone(str(tmp_path)).build(task, CFG)
    small = dataclasses.replace(task, vocab_size=task.vocab_size + 10)
    with pytest.raises(BayesbenchError, match="token ids up to 33 .* vocabulary of 24"):
        HFBackbone(tiny_bert).build(small, CFG)
