"""The backbone seam: registry, config section, run keys, and skip-with-reason."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bayesbench.backbones import (
    HOOKS,
    UNHASHED_BACKBONE,
    TransformerBackbone,
    default_backbone,
    make_backbone,
    unsupported_reason,
)
from bayesbench.config import _UNHASHED_DEFAULTS, _digest, expand, load_config, parse_config
from bayesbench.errors import ConfigError
from bayesbench.models import ModelConfig, build_model
from bayesbench.registry import BACKBONES, METHODS
from bayesbench.runner import run_grid
from bayesbench.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
HAS_HF = all(importlib.util.find_spec(m) for m in ("transformers", "tokenizers"))

TINY = {
    "seeds": [0],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 64, "max_eval": 32, "mc_samples": 2},
    "datasets": ["markov"],
    "methods": ["map"],
}

# a user's backbone: the built-in encoder, but without attention-row or linear hooks
USER_BACKBONE = textwrap.dedent('''
    from bayesbench.backbones import Backbone, Dimensions
    from bayesbench.models import build_model

    class PlainEncoder(Backbone):
        name = "plain"
        description = "the built-in encoder, no swappable parts"

        def __init__(self, width: int = 16) -> None:
            self.width = width

        def hooks(self):
            return frozenset({"features", "head", "dropout", "functional"})

        def dimensions(self, task, cfg):
            return Dimensions(cfg.depth, cfg.heads, cfg.d_model, cfg.d_model // cfg.heads,
                              cfg.d_model)

        def build(self, task, cfg, *, rows_factory=None, linear_factory=None,
                  head_factory=None):
            return build_model(task, cfg, head_factory=head_factory)
''')


@pytest.fixture
def user_backbone(tmp_path, monkeypatch):
    (tmp_path / "my_backbones.py").write_text(USER_BACKBONE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_backbones:PlainEncoder"
    sys.modules.pop("my_backbones", None)


def test_registry_names_the_built_in_backbones():
    assert {"transformer", "hf"} <= set(BACKBONES.names())
    assert BACKBONES.get("transformer") is TransformerBackbone
    assert BACKBONES.entry_point_group == "bayesbench.backbones"
    assert BACKBONES.canonical("HF") == "hf"  # the name-matching helpers apply here too


def test_transformer_backbone_builds_exactly_build_model(tmp_path):
    from bayesbench.data.markov import MarkovChains

    task = MarkovChains().build(0).limited(32, 16)
    cfg = ModelConfig(d_model=16, heads=2, depth=1)
    torch.manual_seed(3)
    ours = TransformerBackbone().build(task, cfg).state_dict()
    torch.manual_seed(3)
    theirs = build_model(task, cfg).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert TransformerBackbone().hooks() == frozenset(HOOKS) - {"linear_init"}
    dims = TransformerBackbone().dimensions(task, cfg)
    assert (dims.depth, dims.heads, dims.d_head, dims.features) == (1, 2, 8, 16)


def test_default_backbone_at_version_1_leaves_every_stored_key_of_the_default_suite_unchanged(
        encoder_at_version_1):
    """At version 1 the built-in encoder never entered a key: the default suite's run keys are
    those computed before backbones existed (formula without the field, and a few keys as
    stored by the code of that time)."""
    cfg = load_config(REPO / "benchmarks.yaml")
    specs = expand(cfg) + expand(cfg, quick=True)
    assert all(s.backbone == UNHASHED_BACKBONE for s in specs)
    for s in specs:
        d = s.to_dict()
        del d["backbone"], d["keep_predictions"]  # keep_predictions: never hashed
        for name, default in _UNHASHED_DEFAULTS.items():
            if name in d and d[name] == default:
                del d[name]
        assert s.key == _digest(d)[:16]
    # keys the code before backbones computed for a fixed grid (map on markov, seeds 0, 1)
    assert [s.key for s in expand(fixed_grid())][:2] == ["a7f9d2c910ec7c2e", "b79f47fab65fa55e"]
    # the quick key as computed since the quick budget became 2 epochs and 2 severities per
    # shift kind (2026-12-04; "2f07e420c9f8f0c5" before): a changed budget makes new runs
    assert expand(fixed_grid(), quick=True)[0].key == "4e06ad26563453c2"


def fixed_grid():
    """A small grid whose keys at version 1 are known (parsed now: the version is read then)."""
    return parse_config({
        "seeds": [0, 1], "model": {"d_model": 16, "heads": 2, "depth": 1},
        "datasets": ["markov", {"name": "digits", "training": {"epochs": 3}}],
        "methods": ["map"]})


def test_the_built_in_encoders_version_2_gives_every_default_run_a_new_key(monkeypatch):
    """Version 2 changed the encoder's numbers (dropout masks, short-row softmax): no run of
    the built-in encoder may match a key stored by version 1."""
    assert TransformerBackbone.version == 2
    assert default_backbone() == {"name": "transformer", "params": {}, "version": 2}
    cfg = load_config(REPO / "benchmarks.yaml")
    now = expand(cfg) + expand(cfg, quick=True) + expand(fixed_grid())
    assert all(s.backbone == default_backbone() for s in now)
    monkeypatch.setattr(TransformerBackbone, "version", 1)
    before = expand(load_config(REPO / "benchmarks.yaml")) + expand(
        load_config(REPO / "benchmarks.yaml"), quick=True) + expand(fixed_grid())
    assert not {s.key for s in now} & {s.key for s in before}
    assert len({s.key for s in now}) == len(now)


def test_naming_the_default_backbone_keeps_the_keys():
    plain = expand(parse_config(TINY), quick=True)
    named = expand(parse_config({**TINY, "backbone": {"name": "transformer"}}), quick=True)
    short = expand(parse_config({**TINY, "backbone": "transformer"}), quick=True)
    assert [s.key for s in plain] == [s.key for s in named] == [s.key for s in short]


def test_another_backbone_enters_the_key_top_level_and_per_dataset(user_backbone):
    plain = expand(parse_config({**TINY, "datasets": ["markov", "digits"]}), quick=True)
    top = expand(parse_config({**TINY, "datasets": ["markov", "digits"],
                               "backbone": {"name": user_backbone}}), quick=True)
    assert all(a.key != b.key for a, b in zip(plain, top))
    assert top[0].backbone == {"name": user_backbone, "params": {"width": 16}}
    per = expand(parse_config({**TINY, "datasets": [
        {"name": "markov", "backbone": {"name": user_backbone, "params": {"width": 8}}},
        "digits"]}), quick=True)
    by = {s.dataset_label: s for s in per}
    assert by["markov"].backbone["params"] == {"width": 8}
    assert by["digits"].backbone == default_backbone()
    assert by["digits"].key == next(s.key for s in plain if s.dataset_label == "digits")
    assert by["markov"].key != next(s.key for s in plain if s.dataset_label == "markov")


def test_a_backbone_version_above_1_enters_the_key(user_backbone, monkeypatch):
    """Raising a backbone's version (its numbers changed) retrains its runs: the version is
    in the resolved section and the key; at 1 it is left out (keys stay as they were)."""
    import my_backbones

    config = {**TINY, "datasets": ["markov"], "backbone": {"name": user_backbone}}
    before = expand(parse_config(config), quick=True)
    monkeypatch.setattr(my_backbones.PlainEncoder, "version", 2, raising=False)
    after = expand(parse_config(config), quick=True)
    assert before[0].backbone == {"name": user_backbone, "params": {"width": 16}}
    assert after[0].backbone == {"name": user_backbone, "params": {"width": 16}, "version": 2}
    assert all(a.key != b.key for a, b in zip(before, after))


@pytest.mark.parametrize("section, expected", [
    ({"name": "hff"}, "Did you mean 'hf'"),
    ({"name": "transformer", "params": {"depth": 2}}, "TransformerBackbone takes no parameters"),
    ({"nam": "hf"}, "backbone.nam: unknown key; did you mean 'name'"),
    ({"name": "bayesbench.models:ModelConfig"}, "is not a bayesbench.backbones.Backbone"),
    pytest.param({"name": "hf", "params": {"model": "bert", "pretrained": False,
                                           "train": "some"}},
                 "train must be one of all, head, last_2",
                 marks=pytest.mark.skipif(not HAS_HF, reason="needs bayesbench[hf]")),
])
def test_bad_backbone_sections_fail_at_config_time(section, expected):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config({**TINY, "backbone": section}, "bench.yaml")
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_hf_without_transformers_fails_at_config_time_with_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        parse_config({**TINY, "backbone": {"name": "hf", "params": {"model": "bert"}}},
                     "bench.yaml")
    assert "pip install 'bayesbench[hf]'" in str(err.value)
    assert str(err.value).startswith("bench.yaml: backbone.params:")
    assert err.value.exit_code == 2


def test_methods_say_which_hooks_they_lack(user_backbone):
    from bayesbench.registry import import_object

    plain = import_object(user_backbone)()
    reasons = {name: unsupported_reason(METHODS.get(name)(), plain) for name in METHODS.names()}
    for ok in ("map", "temperature_scaling", "mc_dropout", "deep_ensemble", "laplace",
               "swag", "sghmc"):
        assert reasons[ok] is None, ok
    assert "no rows hook" in reasons["dirichlet_attention"]
    assert "no rows hook" in reasons["bam_attention"]
    assert "linear" in reasons["sngp"] and "spectral_roles: []" in reasons["sngp"]
    assert unsupported_reason(METHODS.get("sngp")(spectral_roles=[]), plain) is None
    assert "linear" in reasons["mfvi"]
    vectorized = METHODS.get("deep_ensemble")(vectorized=True)
    assert "no vmap hook" in unsupported_reason(vectorized, plain)
    assert "no rows hook" in unsupported_reason(
        METHODS.get("laplace")(backbone="dirichlet_attention"), plain)
    assert "dropout_rate" in unsupported_reason(METHODS.get("mc_dropout")(dropout=0.2), plain)
    # the built-in backbone supports every method with every parameter here
    builtin = make_backbone(None)
    assert all(unsupported_reason(METHODS.get(n)(), builtin) is None for n in METHODS.names())


def test_a_run_the_backbone_cannot_serve_is_skipped_with_its_reason(tmp_path, user_backbone):
    cfg = parse_config({**TINY, "backbone": {"name": user_backbone},
                        "methods": ["map", "dirichlet_attention"]})
    store = ResultStore(tmp_path / "r.sqlite")
    events = []
    outcome = run_grid(expand(cfg, quick=True), store, device=torch.device("cpu"),
                       on_event=events.append)
    assert [r.label for r in outcome.results] == ["map"]
    assert outcome.results[0].status == "complete"
    assert outcome.results[0].spec["backbone"]["name"] == user_backbone
    [(spec, reason)] = outcome.unsupported
    assert spec.label == "dirichlet_attention"
    assert reason.startswith(f"dirichlet_attention on {user_backbone}: ")
    assert "has no rows hook" in reason
    assert ("unsupported", spec.key, reason) in events
    assert [r.label for r in store.results()] == ["map"]  # nothing stored for the skipped run
    assert not outcome.failed
    json.dumps(outcome.results[0].spec)  # the stored spec stays JSON


def test_the_readme_example_backbone_runs_what_it_says(tmp_path, monkeypatch):
    """The README's "Your own network" example, as written: the methods it names run on it,
    those it names as skipped are skipped with the reason."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("# my_package/backbones.py")
    code = readme[start:readme.index("```", start)]
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "backbones.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = parse_config({**TINY, "backbone": {"name": "my_package.backbones:BagOfWords"},
                            "methods": ["map", "mc_dropout", "laplace", "swag",
                                        {"name": "sngp", "label": "sngp_head",
                                         "params": {"spectral_roles": [], "num_inducing": 32}},
                                        "sngp", "dirichlet_attention", "mfvi"]})
        outcome = run_grid(expand(cfg, quick=True), ResultStore(tmp_path / "r.sqlite"),
                           device=torch.device("cpu"))
    finally:
        for name in ("my_package", "my_package.backbones"):
            sys.modules.pop(name, None)
    assert sorted(r.label for r in outcome.results if r.status == "complete") == [
        "laplace", "map", "mc_dropout", "sngp_head", "swag"]
    skipped = {spec.label: reason for spec, reason in outcome.unsupported}
    assert sorted(skipped) == ["dirichlet_attention", "mfvi", "sngp"]
    assert "no rows hook" in skipped["dirichlet_attention"]
    assert "linear" in skipped["mfvi"] and "linear" in skipped["sngp"]


def test_list_shows_the_backbones_and_the_methods_each_runs(run_cli):
    from bayesbench.backbones import support_matrix

    res = run_cli("list", "--no-shapes")
    assert res.returncode == 0, res.stderr
    table = res.stdout[res.stdout.index("Backbones"):res.stdout.index("Datasets")]
    for label in ("transformer",) + (("hf (pretrained)", "hf (pretrained: false)") if HAS_HF
                                     else ("pip install 'bayesbench[hf]'",)):
        assert label in " ".join(table.split())
    if HAS_HF:
        assert "discard the pretrained weights" in " ".join(table.split())  # sngp
    rows = {label: reasons for label, _, reasons in support_matrix()}
    assert all(why is None for why in rows["transformer"].values())
    if "hf (pretrained)" in rows:  # transformers installed
        runs = {m for m, why in rows["hf (pretrained)"].items() if why is None}
        assert {"map", "laplace", "dirichlet_attention", "bam_attention", "swag", "mfvi"} <= runs
        assert "sngp" not in runs and "sngp" in {
            m for m, why in rows["hf (pretrained: false)"].items() if why is None}
