"""The hf backbone: exactness against plain transformers, attention rows inside HF attention,
save/load, training modes, and every method on tiny random-init BERT and DistilBERT.

Offline: tiny configs are saved with ``save_pretrained`` into temp dirs and loaded back by
path (the real loading code); ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from bayesbench.backbones import unsupported_reason  # noqa: E402
from bayesbench.backbones.hf import (  # noqa: E402
    HFBackbone,
    ImageEncoder,
    linear_role,
    train_word_tokenizer,
)
from bayesbench.data.markov import MarkovChains  # noqa: E402
from bayesbench.methods.base import EvaluationConfig, FitContext, TrainingConfig  # noqa: E402
from bayesbench.models import ModelConfig, SoftmaxRows  # noqa: E402
from bayesbench.registry import METHODS  # noqa: E402
from bayesbench.task import Split  # noqa: E402

CONFIGS = {
    "bert": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32},
    "distilbert": {"dim": 16, "n_layers": 2, "n_heads": 2, "hidden_dim": 32},
}
CFG = ModelConfig()  # the built-in encoder's config: the hf backbone ignores it


@pytest.fixture(scope="module")
def task():
    return MarkovChains().build(0).limited(96, 32, seed=0)


@pytest.fixture(scope="module")
def padded_task(task):
    """markov with right padding: id 0 is padding, every row keeps 3 to 8 real tokens."""
    g = torch.Generator().manual_seed(0)

    def pad(split):
        x = split.x.clone() + 1  # ids 1.. are real tokens
        lengths = torch.randint(3, x.shape[1] + 1, (len(x),), generator=g)
        x[torch.arange(x.shape[1])[None] >= lengths[:, None]] = 0
        return Split(x, split.y)

    return dataclasses.replace(task, train=pad(task.train), val=pad(task.val),
                               test=pad(task.test), shifted={}, ood={},
                               vocab_size=task.vocab_size + 1, padding_id=0)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, task, tmp_path_factory):
    """(architecture, directory): a tiny random-init model and its tokenizer, saved."""
    arch = request.param
    path = tmp_path_factory.mktemp(arch)
    tokenizer = train_word_tokenizer(task)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(arch, **CONFIGS[arch], vocab_size=len(tokenizer),
                                               num_labels=task.num_classes)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return arch, str(path)


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Scale the query and key weights 40-fold: a random-init model's attention is nearly
    uniform and its logits barely depend on the rows; sharp rows make the comparisons below
    sensitive."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("query.weight", "q_lin.weight", "key.weight", "k_lin.weight")):
                p.mul_(40.0)
    return model


def attentions(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's attention rows ``[B, H, T, T]`` of an :class:`HFClassifier`."""
    with torch.no_grad():
        return list(model.hf(**model.inputs(x), output_attentions=True).attentions)


def plain_model(path):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    return model.eval()


def test_hooks_inactive_logits_equal_the_plain_transformers_model(saved, task):
    _, path = saved
    model = HFBackbone(path).build(task, CFG).eval()
    x = task.test.x
    with torch.no_grad():
        ours = model(x)
        theirs = plain_model(path)(**model.inputs(x)).logits
        assert (ours - theirs).abs().max() <= 1e-6
        assert torch.equal(model.head(model.features(x)), ours)
    assert model.features(x).shape == (len(x), 16)


def test_softmax_rows_through_the_attention_registry_equal_stock_attention(saved, padded_task):
    """Rows plugged in by AttentionInterface (SoftmaxRows: the stock maths) give the stock
    model's logits, padded batches included (the mask arrives via AttentionMaskInterface)."""
    _, path = saved
    model = HFBackbone(path, pretrained=False, config=CONFIGS[saved[0]])
    torch.manual_seed(1)
    stock = sharpen(model.build(padded_task, CFG)).eval()
    torch.manual_seed(1)
    rows = sharpen(model.build(padded_task, CFG, rows_factory=lambda i, h: SoftmaxRows())).eval()
    x = padded_task.test.x
    inputs = stock.inputs(x)
    assert (inputs["attention_mask"] == 0).any()  # the batch is padded
    with torch.no_grad():
        assert (stock(x) - rows(x)).abs().max() <= 1e-6
    stock.hf.set_attn_implementation("eager")  # the stock rows, returned
    for ours, theirs in zip(attentions(rows, x), attentions(stock, x), strict=True):
        assert (ours - theirs).abs().max() <= 1e-6
        assert ours.max() > 0.6  # sharp rows: the comparison is not between uniform ones
    assert rows.hf.config._attn_implementation == "bayesbench_rows"
    assert stock.hf.config._attn_implementation != "bayesbench_rows"


@pytest.mark.parametrize("method", ["dirichlet_attention", "bam_attention"])
def test_latent_rows_inside_hf_attention_are_on_the_simplex(saved, padded_task, method):
    _, path = saved
    backbone = HFBackbone(path, pretrained=False, config=CONFIGS[saved[0]])
    m = METHODS.get(method)()
    dims = backbone.dimensions(padded_task, CFG)
    torch.manual_seed(0)
    model = backbone.build(padded_task, CFG,
                           rows_factory=lambda i, h: m.build_rows(h, dims.d_head))
    captured = []
    for module in model.attention_modules:
        module.bayesbench_rows.register_forward_hook(lambda mod, a, out: captured.append(out))
    x = padded_task.test.x[:16]
    padding = model.inputs(x)["attention_mask"] == 0  # [B, T + 2], True at padded keys
    for mode in ("train", "eval"):
        captured.clear()
        model.train(mode == "train")
        model(x)
        assert len(captured) == dims.depth
        for rows in captured:
            assert (rows >= 0).all()
            assert torch.allclose(rows.sum(-1), torch.ones(()), atol=1e-5)
            # no weight on a padded key, and the rows are random (not the softmax)
            assert (rows.detach()[padding[:, None, None, :].expand_as(rows)] == 0).all()
        kls = [mod.bayesbench_rows.kl for mod in model.attention_modules]
        if mode == "train":  # each layer's KL over the real queries and keys, for the ELBO
            assert all(kl is not None and kl.ndim == 0 and kl > 0 for kl in kls)
        else:
            assert all(kl is None for kl in kls)
    first = captured[0].detach()
    model(x)
    assert not torch.equal(first, captured[-dims.depth].detach())  # a fresh sample per pass


@pytest.mark.parametrize("method, params, tol", [
    ("bam_attention", {}, 1e-6),
    ("dirichlet_attention", {"min_concentration": 1e-9}, 1e-5),  # float32 rounding of the mean
    ("dirichlet_attention", {}, None),  # eps = 0.1: the mean is visibly not the softmax
])
def test_mean_mode_rows_reproduce_softmax_attention(saved, padded_task, method, params, tol):
    """BAM's mean weights are the softmax; Dirichlet's mean is (kappa T softmax + eps) /
    (kappa T + T eps), the softmax as eps -> 0. Rows compared with the stock eager rows."""
    _, path = saved
    backbone = HFBackbone(path, pretrained=False, config=CONFIGS[saved[0]])
    m = METHODS.get(method)(**params)
    dims = backbone.dimensions(padded_task, CFG)
    torch.manual_seed(2)
    stock = sharpen(backbone.build(padded_task, CFG)).eval()
    torch.manual_seed(2)
    latent = backbone.build(padded_task, CFG,
                            rows_factory=lambda i, h: m.build_rows(h, dims.d_head)).eval()
    latent.load_state_dict(stock.state_dict(), strict=False)
    for module in latent.attention_modules:
        module.bayesbench_rows.use_mean = True
    stock.hf.set_attn_implementation("eager")
    x = padded_task.test.x
    gap = max((ours - theirs).abs().max() for ours, theirs in
              zip(attentions(latent, x), attentions(stock, x), strict=True))
    if tol is None:
        assert gap > 1e-3
    else:
        assert gap <= tol
        with torch.no_grad():
            assert (stock(x) - latent(x)).abs().max() <= tol


def test_save_pretrained_then_load_through_the_backbone_predicts_identically(task, tmp_path):
    backbone = HFBackbone("bert", pretrained=False, config=CONFIGS["bert"])
    ctx = FitContext(training=TrainingConfig(epochs=1, batch_size=32), seed=0,
                     backbone=backbone)
    m = METHODS.get("map")()
    m.fit(task, ctx)
    m.model.save_pretrained(tmp_path / "trained")
    loaded = HFBackbone(str(tmp_path / "trained")).build(task, CFG).eval()
    x = task.test.x
    with torch.no_grad():
        assert torch.equal(loaded(x), m.model.eval()(x))
        assert torch.equal(plain_model(tmp_path / "trained")(**loaded.inputs(x)).logits,
                           m.model(x))


def test_random_init_trains_a_word_tokenizer_on_the_training_split(task):
    model = HFBackbone("bert", pretrained=False, config=CONFIGS["bert"]).build(task, CFG)
    tok = model.tokenizer
    assert len(tok) == 4 + task.vocab_size  # [PAD] [UNK] [CLS] [SEP] and one id per token
    ids = model.inputs(task.test.x[:2])["input_ids"]
    assert ids[:, 0].tolist() == [tok.cls_token_id] * 2
    assert ids[:, -1].tolist() == [tok.sep_token_id] * 2
    assert ids.shape == (2, task.test.x.shape[1] + 2)
    word = tok.convert_ids_to_tokens(int(ids[0, 1]))
    assert word == f"w{int(task.test.x[0, 0])}"


def test_padding_becomes_the_attention_mask(padded_task):
    model = HFBackbone("distilbert", pretrained=False, config=CONFIGS["distilbert"]).build(
        padded_task, CFG)
    x = padded_task.test.x[:8]
    enc = model.inputs(x)
    lengths = (x != 0).sum(1)
    assert enc["attention_mask"].sum(1).tolist() == (lengths + 2).tolist()
    sep = model.tokenizer.sep_token_id
    assert enc["input_ids"][torch.arange(8), lengths + 1].tolist() == [sep] * 8


@pytest.mark.parametrize("train, frozen_layer0, trainable_layer2", [
    ("all", False, True), ("head", True, False), ("last_2", True, True)])
def test_train_modes_freeze_the_right_parameters(task, train, frozen_layer0, trainable_layer2):
    config = {**CONFIGS["bert"], "num_hidden_layers": 3}
    model = HFBackbone("bert", pretrained=False, train=train, config=config).build(
        task, CFG, rows_factory=lambda i, h: SoftmaxRows())
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grad["head.weight"]
    layer0 = [v for n, v in grad.items() if ".layer.0." in n]
    layer2 = [v for n, v in grad.items() if ".layer.2." in n]
    assert all(not v for v in layer0) == frozen_layer0
    assert all(layer2) == trainable_layer2
    assert grad["hf.bert.embeddings.word_embeddings.weight"] == (train == "all")
    assert grad["hf.bert.pooler.dense.weight"] == (train != "head")


def test_mc_dropout_uses_the_models_own_attention_dropout(task):
    """Attention dropout alone (hidden dropout 0): MC samples differ, so HF's functional
    attention dropout is on at test time."""
    config = {**CONFIGS["bert"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.5}
    backbone = HFBackbone("bert", pretrained=False, config=config)
    m = METHODS.get("mc_dropout")(samples=3)
    m.fit(task, FitContext(training=TrainingConfig(epochs=1), seed=0, backbone=backbone))
    probs = m.predict(task.test.x[:8])
    assert not torch.allclose(probs[0], probs[1])
    assert not m.model.training  # eval mode again after predicting
    assert all(not mod.training for mod in m.model.attention_modules)


def test_linear_roles_follow_module_names():
    assert linear_role("encoder.layer.0.attention.self.key") == "attention.qkv"
    assert linear_role("encoder.layer.0.attention.output.dense") == "attention.out"
    assert linear_role("encoder.layer.0.intermediate.dense") == "mlp.in"
    assert linear_role("encoder.layer.0.output.dense") == "mlp.out"
    assert linear_role("transformer.layer.1.attention.out_lin") == "attention.out"
    assert linear_role("transformer.layer.1.ffn.lin1") == "mlp.in"
    assert linear_role("pooler.dense") is None


def test_pretrained_models_keep_their_linear_layers(saved):
    """Layers that would discard pretrained weights are refused before training (sngp's
    spectral-normalised ones); mfvi's load them, and runs at its defaults everywhere."""
    _, path = saved
    pretrained, random_init = HFBackbone(path), HFBackbone(path, pretrained=False)
    sngp = METHODS.get("sngp")()
    assert "discard the pretrained weights" in unsupported_reason(sngp, pretrained)
    assert unsupported_reason(sngp, random_init) is None
    assert unsupported_reason(METHODS.get("sngp")(spectral_roles=[]), pretrained) is None
    for backbone in (pretrained, random_init):
        for params in ({}, {"dropout": True}, {"subset": "last_layer"}):
            assert unsupported_reason(METHODS.get("mfvi")(**params), backbone) is None
    assert "dropout_rate" in unsupported_reason(METHODS.get("mc_dropout")(dropout=0.3),
                                                random_init)
    assert "vmap" in unsupported_reason(METHODS.get("deep_ensemble")(vectorized=True),
                                        random_init)


def test_mfvi_on_a_pretrained_model_starts_at_its_weights_without_dropout(saved, task):
    """mfvi at its defaults on a pretrained model: every encoder linear layer becomes a
    Bayesian one whose mean is the pretrained weight, the model's dropout is off, and at the
    posterior mean the features are exactly the pretrained model's."""
    from bayesbench.methods.bayesian_linear import BayesianLinear

    _, path = saved
    backbone = HFBackbone(path)
    mfvi = METHODS.get("mfvi")()
    ctx = FitContext(training=TrainingConfig(epochs=1, batch_size=32), seed=0,
                     backbone=backbone)
    model = mfvi.build(task, ctx).eval()
    plain = plain_model(path).eval()
    bayesian = {name: m for name, m in model.hf.named_modules()
                if isinstance(m, BayesianLinear)}
    originals = dict(plain.named_modules())
    assert len(bayesian) == 6 * plain.config.num_hidden_layers  # q, k, v, out, mlp in, out
    for name, layer in bayesian.items():
        assert torch.equal(layer.weight_mu, originals[name].weight)
        assert torch.equal(layer.bias_mu, originals[name].bias)
        layer.sample = False
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    parent, last = model.head_path.rsplit(".", 1) if "." in model.head_path \
        else ("", model.head_path)
    setattr(plain.get_submodule(parent) if parent else plain, last, torch.nn.Identity())
    x = task.test.x[:8]
    with torch.no_grad():
        assert (model.features(x) - plain(**model.inputs(x)).logits).abs().max() <= 1e-6


SUPPORTED = {
    "map": {}, "temperature_scaling": {}, "mc_dropout": {}, "deep_ensemble": {"members": 2},
    "laplace": {}, "swag": {"rank": 2}, "sghmc": {"cycles": 1, "samples_per_cycle": 2},
    "dirichlet_attention": {}, "bam_attention": {}, "mfvi": {"dropout": True},
    "sngp": {"num_inducing": 32},
}


def fit_and_predict(method, backbone, task) -> torch.Tensor:
    """Fit ``method`` on ``task`` through ``backbone`` (2 epochs, 2 samples) and return its
    test probabilities, checked to be finite distributions of the right shape."""
    assert unsupported_reason(method, backbone) is None
    ctx = FitContext(training=TrainingConfig(epochs=2, batch_size=32),
                     evaluation=EvaluationConfig(mc_samples=2, batch_size=64), seed=3,
                     backbone=backbone)
    method.fit(task, ctx)
    probs = method.predict(task.test.x)
    assert probs.shape[1:] == (len(task.test), task.num_classes)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    return probs


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_every_supported_method_runs_on_hf_models(saved, task, name):
    arch, path = saved
    backbone = HFBackbone(path, pretrained=False)  # the saved architecture, random init
    method = METHODS.get(name)(**SUPPORTED[name])
    probs = fit_and_predict(method, backbone, task)
    assert (probs >= 0).all()
    assert method.num_parameters() > 0
    assert isinstance(method.model if hasattr(method, "model") and method.model is not None
                      else method.networks[0].model, torch.nn.Module)


def test_a_quick_grid_on_hf_runs_and_skips_what_it_cannot(tmp_path, saved):
    from bayesbench.config import expand, parse_config
    from bayesbench.runner import run_grid
    from bayesbench.store import ResultStore

    _, path = saved
    cfg = parse_config({
        "seeds": [0], "quick": {"epochs": 1, "max_train": 64, "max_eval": 32, "mc_samples": 2},
        "datasets": ["markov"], "backbone": {"name": "hf", "params": {"model": path}},
        "methods": ["map", "dirichlet_attention", "mfvi", "sngp"]})
    outcome = run_grid(expand(cfg, quick=True), ResultStore(tmp_path / "r.sqlite"),
                       device=torch.device("cpu"))
    assert sorted(r.label for r in outcome.results if r.status == "complete") == [
        "dirichlet_attention", "map", "mfvi"]
    [(spec, reason)] = outcome.unsupported
    assert spec.label == "sngp" and "discard the pretrained weights" in reason


def test_a_subword_tokenizer_assembles_each_sequence(padded_task, tmp_path):
    """A pretrained model whose tokenizer splits a task word into pieces (here w12 -> w ##1
    ##2): each sequence is [CLS] + the pieces of its real tokens + [SEP], padded per batch,
    and the logits are the plain model's on exactly those inputs."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "w"] + [f"##{d}" for d in range(10)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("bert", **CONFIGS["bert"], vocab_size=len(vocab),
                                               num_labels=padded_task.num_classes)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = HFBackbone(str(tmp_path)).build(padded_task, CFG).eval()
    assert not model.encoder.single
    x = padded_task.test.x[:6]
    enc = model.inputs(x)
    row = x[0][x[0] != 0].tolist()
    pieces = [vocab["[CLS]"]] + [i for t in row for i in tokenizer(f"w{t}",
                                 add_special_tokens=False)["input_ids"]] + [vocab["[SEP]"]]
    assert enc["input_ids"][0, : len(pieces)].tolist() == pieces
    assert int(enc["attention_mask"][0].sum()) == len(pieces)
    assert len(tokenizer("w5", add_special_tokens=False)["input_ids"]) == 2
    with torch.no_grad():
        assert (model(x) - plain_model(tmp_path)(**enc).logits).abs().max() <= 1e-6


def test_a_pretrained_tokenizer_reads_the_words_of_real_text(tmp_path):
    """Text files through a "pretrained" model with a subword tokenizer of its own: each test
    row reaches the model as exactly what that tokenizer makes of its first max_length words
    (a word unseen in training as [UNK], the task's padding as the attention mask), not as
    placeholder ids."""
    import pandas as pd
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from bayesbench.data.files import FileDataset

    train = pd.DataFrame({"text": ["the cats sat on the mat", "markets fell sharply today",
                                   "the cat sat", "markets rose today"] * 3,
                          "label": ["pets", "money", "pets", "money"] * 3})
    test = pd.DataFrame({"text": ["the zebra sat on the mat today", "markets fell",
                                  "Cats, rose!"], "label": ["pets", "money", "pets"]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    task = FileDataset(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"),
                       text_column="text", max_length=5, val_fraction=0.25).build(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "sat", "on", "mat",
             "market", "fell", "rose", "today", "sharp", "##ly"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("bert", **CONFIGS["bert"], vocab_size=len(vocab),
                                               num_labels=task.num_classes)
    model_dir = tmp_path / "model"
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(
        model_dir)
    tokenizer.save_pretrained(model_dir)
    model = HFBackbone(str(model_dir)).build(task, CFG).eval()
    enc = model.inputs(task.test.x)
    # the raw test texts as the tokenizer sees them: lower-cased words, the first 5, 'zebra'
    # (never in training) as the unknown token
    expected = ["the [UNK] sat on the", "markets fell", "cats rose"]
    for i, text in enumerate(expected):
        ids = tokenizer(text)["input_ids"]
        assert enc["input_ids"][i, : len(ids)].tolist() == ids
        assert enc["attention_mask"][i].tolist() == [1] * len(ids) + [0] * (
            enc["attention_mask"].shape[1] - len(ids))
    assert tokenizer("markets")["input_ids"][1:-1] == [vocab["market"], vocab["##s"]]
    with torch.no_grad():
        assert (model(task.test.x) - plain_model(model_dir)(**enc).logits).abs().max() <= 1e-6


def test_swag_on_a_head_only_model_is_over_the_trainable_parameters(task):
    backbone = HFBackbone("bert", pretrained=False, train="head", config=CONFIGS["bert"])
    ctx = FitContext(training=TrainingConfig(epochs=2, batch_size=32),
                     evaluation=EvaluationConfig(mc_samples=3), seed=5, backbone=backbone)
    swag = METHODS.get("swag")(rank=2, collect_per_epoch=3)  # 3 snapshots in the tail epoch
    swag.fit(task, ctx)
    trainable = [p for p in swag.model.parameters() if p.requires_grad]
    assert swag.weight_samples.shape == (3, sum(p.numel() for p in trainable))
    assert swag.weight_samples.shape[1] < sum(p.numel() for p in swag.model.parameters())
    torch.manual_seed(5)
    fresh = backbone.build(task, CFG)
    frozen = "hf.bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(swag.model.state_dict()[frozen], fresh.state_dict()[frozen])
    assert (swag.weight_samples[0] - swag.weight_samples[1]).abs().max() > 1e-4
    probs = swag.predict(task.test.x)
    assert not torch.equal(probs[0], probs[1])  # the head's posterior is not a point


# --------------------------------------------------------------------------- images (ViT)

VIT = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 32, "image_size": 8, "patch_size": 2, "num_channels": 1}


@pytest.fixture(scope="module")
def digits_task():
    from bayesbench.data.digits import Digits

    return Digits().build(0).limited(96, 32, seed=0)


@pytest.fixture(scope="module")
def vit_dir(digits_task, tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("vit", **VIT, num_labels=digits_task.num_classes)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(path)
    return str(path)


def test_a_vit_reads_an_image_task_as_its_pixels(digits_task, vit_dir):
    """digits' 2×2 patches go back into the 8×8 image (against the dataset's own inverse),
    and with no hook active the logits are the plain ViT's on those pixels."""
    import numpy as np

    from bayesbench.data.digits import patches_to_images

    model = HFBackbone(vit_dir).build(digits_task, CFG).eval()
    x = digits_task.test.x[:8]
    pixels = model.inputs(x)["pixel_values"]
    images = patches_to_images(x.numpy(), patch_size=2)
    assert pixels.shape == (8, 1, 8, 8)
    assert np.array_equal(pixels[:, 0].numpy(), images)
    plain = transformers.AutoModelForImageClassification.from_pretrained(vit_dir).eval()
    with torch.no_grad():
        assert (model(x) - plain(pixel_values=pixels).logits).abs().max() <= 1e-6
    assert len(model.attention_modules) == VIT["num_hidden_layers"]
    # a pretrained ViT of another size and 3 channels: resized and the channel repeated
    wide = ImageEncoder([1, 8, 8], channels=3, size=16)(x)["pixel_values"]
    assert wide.shape == (8, 3, 16, 16) and torch.equal(wide[:, 0], wide[:, 2])
    assert HFBackbone(vit_dir).hooks() >= {"rows", "linear_init", "dropout", "dropout_off"}


def test_a_pretrained_vit_gets_its_image_processors_normalisation(digits_task, vit_dir,
                                                                   tmp_path):
    """A pretrained ViT saved with its image processor (preprocessor_config.json) receives
    ``(pixel - image_mean) / image_std`` per channel, as that processor would give it; the
    logits are the plain ViT's on those pixels. Without a processor the pixels stay as they are
    (the test above), and random init never normalises."""
    import shutil

    from bayesbench.backbones.hf import image_normalisation

    x = digits_task.test.x[:8]
    raw = ImageEncoder(digits_task.image_shape, channels=1, size=8)(x)["pixel_values"]
    with_processor = tmp_path / "vit"
    shutil.copytree(vit_dir, with_processor)
    assert image_normalisation(str(with_processor)) is None  # no preprocessor_config.json
    processor = transformers.ViTImageProcessor(image_mean=[0.25], image_std=[0.5])
    processor.save_pretrained(with_processor)
    assert image_normalisation(str(with_processor)) == ([0.25], [0.5])

    model = HFBackbone(str(with_processor)).build(digits_task, CFG).eval()
    pixels = model.inputs(x)["pixel_values"]
    assert torch.allclose(pixels, (raw - 0.25) / 0.5, atol=1e-7)
    assert pixels.min() < 0  # [0, 1] pixels moved: the normalisation is really applied
    plain = transformers.AutoModelForImageClassification.from_pretrained(with_processor).eval()
    with torch.no_grad():
        assert (model(x) - plain(pixel_values=pixels).logits).abs().max() <= 1e-6
    random_init = HFBackbone(str(with_processor), pretrained=False).build(digits_task, CFG)
    assert torch.equal(random_init.inputs(x)["pixel_values"], raw)

    # a 3-channel model: a per-channel mean and std, the grey channel repeated first
    three = ImageEncoder([1, 8, 8], channels=3, size=8, mean=[0.1, 0.2, 0.3],
                         std=[0.5, 0.25, 0.125])(x)["pixel_values"]
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 0.125)]):
        assert torch.allclose(three[:, c], (raw[:, 0] - m) / s, atol=1e-6)
    # the processor switched off: no normalisation
    transformers.ViTImageProcessor(do_normalize=False).save_pretrained(with_processor)
    assert image_normalisation(str(with_processor)) is None


@pytest.mark.parametrize("name, params", [
    ("map", {}), ("mc_dropout", {}), ("mfvi", {}), ("laplace", {}),
    ("dirichlet_attention", {}), ("sngp", {"num_inducing": 32, "spectral_roles": []}),
])
def test_methods_run_on_a_random_init_vit(digits_task, vit_dir, name, params):
    """Random init from the saved ViT's config: every method trains and predicts; the
    attention-space method's rows replace the ViT's softmax rows."""
    method = METHODS.get(name)(**params)
    fit_and_predict(method, HFBackbone(vit_dir, pretrained=False), digits_task)
    if name == "dirichlet_attention":
        rows = [m.bayesbench_rows for m in method.model.attention_modules]
        assert len(rows) == VIT["num_hidden_layers"] and not isinstance(rows[0], SoftmaxRows)


def test_a_non_image_vector_task_is_refused_with_the_reason(digits_task, vit_dir):
    from bayesbench.errors import BayesbenchError

    task = dataclasses.replace(digits_task, image_shape=None)  # vectors, e.g. mnist1d's
    with pytest.raises(BayesbenchError, match="no image"):
        HFBackbone(vit_dir).check_task(task)
