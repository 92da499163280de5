from __future__ import annotations

import re

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
    assert quick.key != a.key and quick.training["epochs"] == 2 and quick.quick is not None


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
    ({"training": {"epochs": 0}}, "training.epochs: must be an integer from 1 to 100000"),
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
    ({"seeds": [0, 0]}, "seeds: seed 0 is given more than once"),
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


def test_code_versions_enter_keys_only_above_one(monkeypatch, encoder_at_version_1):
    """Version 1 hashes exactly as before versions existed (stored runs keep their keys);
    raising a method's or dataset's version gives new keys, so stale results are not reused.
    (The built-in encoder is pinned at version 1 here; its version 2 enters every key.)"""
    import dataclasses
    import hashlib
    import json

    from bayesbench.data.digits import Digits
    from bayesbench.methods.map import MAP

    base = expand(parse())[0]
    assert (base.method_version, base.dataset_version) == (1, 1)
    legacy = dataclasses.asdict(base)
    del legacy["method_version"], legacy["dataset_version"]
    for execution in ("threads", "device", "backbone"):  # at their defaults, outside the hash
        legacy.pop(execution, None)
    del legacy["keep_predictions"]  # never in the hash: what is kept, not what is computed
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


# --------------------------------------------------------------- numeric rules (one table)

def _one_short_line(message: str) -> None:
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("changes, fragment", [
    ({"training": {"grad_clip": -1.0}}, "training.grad_clip: must be a finite number >= 0 "
                                        "(0 turns clipping off), got -1.0"),
    ({"model": {"depth": 0}}, "model.depth: must be an integer from 1 to 64, got 0"),
    ({"model": {"d_model": 0}}, "model.d_model: must be an integer from 1 to 4096, got 0"),
    ({"model": {"heads": 0}}, "model.heads: must be an integer from 1 to 64, got 0"),
    ({"model": {"heads": 3}}, "model: d_model=64 must be divisible by heads=3"),
    ({"model": {"mlp_ratio": 0}}, "model.mlp_ratio: must be a number in (0, 64], got 0.0"),
    ({"model": {"d_model": 1, "heads": 1, "mlp_ratio": 0.5}},
     "model.mlp_ratio: d_model * mlp_ratio = 0.5 leaves the MLP no hidden unit"),
    ({"model": {"dropout": 1.0}}, "model.dropout: must be a number in [0, 1), got 1.0"),
    ({"model": {"attention_dropout": -0.1}}, "model.attention_dropout: must be a number in [0, 1)"),
    ({"training": {"lr": float("nan")}}, "training.lr: must be a finite number > 0, got nan"),
    ({"training": {"lr": float("inf")}}, "training.lr: must be a finite number > 0, got inf"),
    ({"training": {"lr": -0.1}}, "training.lr: must be a finite number > 0, got -0.1"),
    ({"training": {"weight_decay": float("nan")}}, "training.weight_decay: must be a finite"),
    ({"training": {"weight_decay": -1}}, "training.weight_decay: must be a finite number >= 0"),
    ({"model": {"d_model": 100_000_000}}, "model.d_model: must be an integer from 1 to 4096"),
    ({"model": {"depth": 10**400}}, "model.depth: must be an integer from 1 to 64, got 1000"),
    ({"training": {"lr": 10**400}}, "training.lr: expected float, got 1000"),
    ({"model": {"d_model": 4096, "heads": 64, "depth": 64}},
     "model: d_model=4096, depth=64, mlp_ratio=2 is about 8.6 billion weights, over the limit"),
    ({"training": {"epochs": 10**9}}, "training.epochs: must be an integer from 1 to 100000"),
    ({"training": {"batch_size": 10**7}}, "training.batch_size: must be an integer from 1 to"),
    ({"evaluation": {"mc_samples": 0}}, "evaluation.mc_samples: must be an integer from 1 to 1000"),
    ({"evaluation": {"ece_bins": 10**6}}, "evaluation.ece_bins: must be an integer from 1 to 1000"),
    ({"evaluation": {"batch_size": -5}}, "evaluation.batch_size: must be an integer from 1 to"),
    ({"quick": {"epochs": 0}}, "quick.epochs: must be an integer from 1 to 100000"),
    ({"quick": {"max_train": 10**12}}, "quick.max_train: must be an integer from 1 to 10000000"),
    ({"quick": {"mc_samples": 10**5}}, "quick.mc_samples: must be an integer from 1 to 1000"),
    ({"quick": {"seeds": 0}}, "quick.seeds: must be an integer from 1 to 1000"),
    ({"datasets": [{"name": "digits", "training": {"epochs": 0}}]},
     "datasets[0].training.epochs: must be an integer from 1 to 100000, got 0"),
    ({"datasets": [{"name": "digits", "model": {"heads": 0}}]},
     "datasets[0].model.heads: must be an integer from 1 to 64, got 0"),
    ({"datasets": [{"name": "digits", "model": {"heads": 3}}]},
     "datasets[0].model: d_model=64 must be divisible by heads=3"),
    ({"datasets": ["digits", {"name": "digits", "label": "d2",
                              "training": {"lr": float("nan")}}]},
     "datasets[1].training.lr: must be a finite number > 0, got nan"),
    ({"seeds": [-1]}, "seeds: seed -1 is outside 0..2147483647"),
    ({"seeds": [2**40]}, "seeds: seed 1099511627776 is outside 0..2147483647"),
    ({"seeds": [3, 1, 3]}, "seeds: seed 3 is given more than once; give distinct seeds"),
    ({"seeds": []}, "seeds: empty"),
    ({"methods": [{"name": "map", "label": "m" * 101}]},
     "methods[0].label: is 101 characters long, over the limit of 100"),
    ({"datasets": [{"name": "digits", "label": "x" * 300}]},
     "datasets[0].label: is 300 characters long, over the limit of 100"),
    ({"methods": [{"name": "map", "label": "a\nb"}]}, "methods[0].label: must be a non-empty"),
])
def test_bad_settings_are_rejected_before_anything_runs(changes, fragment):
    with pytest.raises(ConfigError) as err:
        parse(**changes)
    message = str(err.value)
    assert message.startswith("bench.yaml: ") and fragment in message
    _one_short_line(message)


def test_every_rule_applies_to_top_level_and_per_dataset_sections_alike():
    """Each field of FIELD_RULES rejects a NaN, and a value below its range, in the top-level
    section and in a dataset's override alike (overrides once skipped these checks)."""
    from bayesbench.config import FIELD_RULES
    from bayesbench.methods.base import TrainingConfig
    from bayesbench.models import ModelConfig

    for cls, section in ((ModelConfig, "model"), (TrainingConfig, "training")):
        for name, rule in FIELD_RULES[cls].items():
            integer = isinstance(getattr(cls(), name), int)
            for bad in ([rule.low - 1] if integer else [rule.low - 1, float("nan")]):
                for where, changes in (
                        (f"{section}.{name}", {section: {name: bad}}),
                        (f"datasets[0].{section}.{name}",
                         {"datasets": [{"name": "digits", section: {name: bad}}]})):
                    with pytest.raises(ConfigError, match=rf"bench\.yaml: {re.escape(where)}: "
                                                          r"must be"):
                        parse(**changes)


def test_boundary_values_are_accepted_and_grad_clip_zero_means_off():
    cfg = parse(model={"dropout": 0.0, "attention_dropout": 0.0, "d_model": 4096, "heads": 64,
                       "depth": 1},
                training={"grad_clip": 0, "weight_decay": 0, "epochs": 100_000},
                evaluation={"ece_bins": 1000, "mc_samples": 1000},
                methods=[{"name": "map", "label": "m" * 100}])
    assert cfg.training.grad_clip == 0.0 and cfg.model.d_model == 4096
    spec = expand(cfg)[0]
    assert spec.training["grad_clip"] == 0.0 and spec.label == "m" * 100
    # per-dataset overrides resolve over the top-level values
    cfg = parse(datasets=[{"name": "digits", "model": {"heads": 2}, "training": {"epochs": 3}}])
    assert expand(cfg)[0].model["heads"] == 2 and expand(cfg)[0].training["epochs"] == 3


def test_flag_seeds_must_be_distinct_and_in_range():
    cfg = parse()
    with pytest.raises(ConfigError, match=r"^--seeds 0,0: seed 0 is given more than once"):
        expand(cfg, seeds=[0, 0])
    with pytest.raises(ConfigError, match=r"^--seeds 2,-1: seed -1 is outside"):
        expand(cfg, seeds=[2, -1])
    assert [s.seed for s in expand(cfg, seeds=[2, 7])][::2] == [2, 7]


def test_workers_and_threads_are_bounded_by_the_cores():
    from bayesbench.config import check_parallelism

    check_parallelism(1, None)
    check_parallelism(2, 1)
    for flag, args in (("--workers", (0, None)), ("--workers", (10_000, None)),
                       ("--threads", (1, 0)), ("--threads", (1, 10_000))):
        with pytest.raises(ConfigError, match=rf"^{flag} -?\d+: must be from 1 to \d+ \(4 per"):
            check_parallelism(*args)


def test_echoed_values_are_bounded():
    with pytest.raises(ConfigError) as err:
        parse(training={"epochs": "x" * 1_000_000})
    _one_short_line(str(err.value))
    assert "training.epochs: expected int, got 'xxx" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse(model={"k" * 10_000: 1})
    _one_short_line(str(err.value))
    from bayesbench.errors import MAX_MESSAGE, BayesbenchError

    assert len(str(BayesbenchError("y" * 10**6))) < MAX_MESSAGE + 40


# --------------------------------------------------------------------------- the file


def _bomb(levels: int = 9) -> str:
    """A YAML alias bomb: 9 levels of 9 aliases each stand for 9^9 = 387 million values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\ndatasets: [{{name: digits, params: {{x: *a{levels - 1}}}}}]\n"


@pytest.mark.parametrize("content, fragment", [
    ("seeds: [0]\n# caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 16); "
                                                 "save the config as UTF-8"),
    (_bomb().encode(), "expand to more than 100000 values"),
    (b"a: &a [1, *a]\n", "an alias refers to a value that contains it"),
    (b"methods: [map\n", "not valid YAML at line 2, column 1: expected ',' or ']'"),
    (b"seeds: 2024-13-45\n", "not a usable YAML document: month must be in 1..12"),
    (b"a: " + b"[" * 1000 + b"]" * 1000 + b"\n", "nested too deeply"),
])
def test_unusable_files_are_one_line_config_errors(tmp_path, content, fragment):
    path = tmp_path / "bench.yaml"
    path.write_bytes(content)
    assert len(_bomb().encode()) < 700
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and fragment in message
    _one_short_line(message)


def test_folder_unreadable_and_aliased_configs(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)
    ok = tmp_path / "ok.yaml"
    ok.write_text("model: &m {d_model: 32, heads: 2}\ndatasets: [{name: digits, model: *m}]\n"
                  "methods: [map]\n")
    assert load_config(ok).datasets[0].model == {"d_model": 32, "heads": 2}  # aliases work

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(ok), "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"ok\.yaml: cannot be read \(Permission denied\)"):
        load_config(ok)


def test_a_name_in_another_case_is_the_registered_name():
    """`name: MAP` is map: the same label and run keys, so a rerun finds the stored runs."""
    upper = expand(parse(datasets=["Digits"], methods=["MAP", {"name": "MC_Dropout"}]))
    lower = expand(parse(datasets=["digits"], methods=["map", {"name": "mc_dropout"}]))
    assert [(s.label, s.method, s.dataset) for s in upper] == [
        (s.label, s.method, s.dataset) for s in lower]
    assert [s.key for s in upper] == [s.key for s in lower]
