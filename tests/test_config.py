from __future__ import annotations

import pytest

from bayesbench.config import derive_seed, expand, load_config, parse_config
from bayesbench.errors import ConfigError

BASE = {"seeds": [0, 1], "datasets": ["digits"],
        "methods": ["map", {"name": "mc_dropout", "params": {"samples": 3}}]}


def parse(**changes):
    return parse_config({**BASE, **changes}, "bench.yaml")


def test_default_suite_is_valid_and_expands_to_the_full_grid():
    cfg = load_config("benchmarks.yaml")
    specs = expand(cfg)
    assert len(specs) == len(cfg.seeds) * len(cfg.datasets) * len(cfg.methods)
    assert len({s.key for s in specs}) == len(specs)


def test_grid_order_and_filters():
    cfg = parse()
    specs = expand(cfg)
    assert [(s.label, s.seed) for s in specs] == [
        ("map", 0), ("mc_dropout", 0), ("map", 1), ("mc_dropout", 1)]
    only = expand(cfg, methods=["mc_dropout"], seeds=[5])
    assert [(s.label, s.seed) for s in only] == [("mc_dropout", 5)]
    assert only[0].method_params == {"samples": 3, "dropout": None}  # defaults resolved


def test_hash_is_stable_and_content_addressed():
    a, b = expand(parse())[0], expand(parse())[0]
    assert a.key == b.key and a.config_hash == b.config_hash
    other_seed = expand(parse(), seeds=[1])[0]
    assert other_seed.key != a.key and other_seed.config_hash == a.config_hash
    changed = expand(parse(training={"epochs": 3}))[0]
    assert changed.key != a.key and changed.config_hash != a.config_hash
    quick = expand(parse(), quick=True)[0]
    assert quick.key != a.key and quick.training["epochs"] == 4 and quick.quick is not None


def test_quick_runs_every_method_and_dataset_on_the_first_seeds():
    assert [s.seed for s in expand(parse(), quick=True)] == [0, 0]
    assert [s.seed for s in expand(parse(quick={"seeds": 2}), quick=True)] == [0, 0, 1, 1]
    assert [s.seed for s in expand(parse(), quick=True, seeds=[1])] == [1, 1]


def test_training_seed_is_derived_from_seed_label_and_dataset():
    assert derive_seed(0, "map", "digits") == derive_seed(0, "map", "digits")
    assert derive_seed(0, "map", "digits") != derive_seed(1, "map", "digits")
    assert derive_seed(0, "map", "digits") != derive_seed(0, "mc_dropout", "digits")
    assert 0 <= derive_seed(3, "x", "y") < 2**31


@pytest.mark.parametrize("changes, fragment", [
    ({"seedz": [0]}, "seedz: unknown key; did you mean 'seeds'?"),
    ({"training": {"epochs": "ten"}}, "training.epochs: expected int, got 'ten'"),
    ({"training": {"epochs": 0}}, "training.epochs: must be positive"),
    ({"training": {"epoch": 3}}, "training.epoch: unknown key; did you mean 'epochs'"),
    ({"methods": ["mapp"]}, "methods[0].name: unknown method 'mapp'. Did you mean 'map'"),
    ({"datasets": ["digit"]}, "datasets[0].name: unknown dataset 'digit'. Did you mean 'digits'"),
    ({"methods": [{"name": "mc_dropout", "params": {"sample": 3}}]},
     "methods[0].params.sample: unknown key; did you mean 'samples'"),
    ({"methods": [{"name": "mc_dropout", "params": {"dropout": 1.5}}]},
     "methods[0].params: dropout must be in (0, 1)"),
    ({"methods": [{"name": "map", "params": {"x": 1}}]}, "MAP takes no parameters"),
    ({"methods": ["map", "map"]}, "methods[1].label: 'map' is used twice"),
    ({"methods": []}, "methods: expected a non-empty list"),
    ({"seeds": [0, 0]}, "seeds: expected distinct non-negative integers"),
    ({"model": {"d_model": 30}}, "model: d_model=30 must be divisible by heads=4"),
    ({"methods": [{"name": "mc_dropout", "sweep": {"samples": 3}}]},
     "methods[0].sweep.samples: expected a non-empty list"),
])
def test_config_errors_name_file_key_and_fix(changes, fragment):
    with pytest.raises(ConfigError) as err:
        parse(**changes)
    assert str(err.value).startswith("bench.yaml: ")
    assert fragment in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [map\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_filter_errors_suggest_names():
    with pytest.raises(ConfigError, match="--methods mc_dropuot: .*Did you mean 'mc_dropout'"):
        expand(parse(), methods=["mc_dropuot"])
    with pytest.raises(ConfigError, match="--seeds"):
        expand(parse(), seeds=[-1])


def test_sweep_expands_cartesian_product_with_group_labels():
    cfg = parse(methods=[{"name": "mc_dropout", "params": {"samples": 2},
                          "sweep": {"dropout": [0.1, 0.3]}}, "map"])
    labels = [m.label for m in cfg.methods]
    assert labels == ["mc_dropout@dropout=0.1", "mc_dropout@dropout=0.3", "map"]
    specs = expand(cfg, methods=["mc_dropout"], seeds=[0])  # the group selects all members
    assert [s.method_params for s in specs] == [{"samples": 2, "dropout": 0.1},
                                                {"samples": 2, "dropout": 0.3}]
    assert specs[0].dataset_params["held_out_classes"] == (8, 9)  # dataset defaults too
    assert {s.group for s in specs} == {"mc_dropout"}
    assert specs[1].swept == {"dropout": 0.3}


def test_user_class_by_import_reference():
    cfg = parse(methods=[{"name": "bayesbench.methods.map:MAP"}])
    assert cfg.methods[0].label == "MAP"
    with pytest.raises(ConfigError, match="cannot import module 'nosuch.module'"):
        parse(methods=["nosuch.module:Thing"])
    with pytest.raises(ConfigError, match="is not a bayesbench.methods.base.Method"):
        parse(methods=["bayesbench.data.digits:Digits"])


def test_code_versions_enter_keys_only_above_one(monkeypatch):
    """Version 1 hashes exactly as before versions existed (stored runs keep their keys);
    raising a method's or dataset's version gives new keys, so stale results are not reused."""
    import dataclasses
    import hashlib
    import json

    from bayesbench.data.digits import Digits
    from bayesbench.methods.map import MAP

    base = expand(parse())[0]
    assert (base.method_version, base.dataset_version) == (1, 1)
    legacy = dataclasses.asdict(base)
    del legacy["method_version"], legacy["dataset_version"]
    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str).encode())
    assert base.key == digest.hexdigest()[:16]

    monkeypatch.setattr(MAP, "version", 2)
    bumped = expand(parse())
    assert bumped[0].method_version == 2
    assert bumped[0].key != base.key and bumped[0].config_hash != base.config_hash
    assert bumped[1].key == expand(parse())[1].key  # mc_dropout is untouched
    monkeypatch.setattr(MAP, "version", 1)
    monkeypatch.setattr(Digits, "version", 3)
    assert {s.dataset_version for s in expand(parse())} == {3}
    assert expand(parse())[0].key not in {base.key, bumped[0].key}


@pytest.mark.parametrize("version", [0, "2", 1.5, True])
def test_a_bad_code_version_is_a_config_error(monkeypatch, version):
    from bayesbench.methods.map import MAP

    monkeypatch.setattr(MAP, "version", version)
    with pytest.raises(ConfigError, match=r"methods\[0\]\.name.*MAP\.version is .*positive"):
        parse()
