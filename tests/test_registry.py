from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import bayesbench.registry as registry_module
from bayesbench.errors import UnknownNameError
from bayesbench.registry import Registry, import_object


def test_lazy_entries_import_on_first_use():
    reg = Registry("method")
    reg.register("map", "bayesbench.methods.map:MAP")
    assert isinstance(reg._entries["map"], str)  # nothing imported yet
    from bayesbench.methods.map import MAP

    assert reg.get("map") is MAP
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("map", MAP)


def test_unknown_names_suggest_close_ones():
    reg = Registry("method")
    for name in ["mc_dropout", "map", "deep_ensemble"]:
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as err:
        reg.get("mc_droput")
    assert "unknown method 'mc_droput'. Did you mean 'mc_dropout'?" in str(err.value)
    assert "'package.module:Object'" in str(err.value)


def test_import_references():
    assert import_object("bayesbench.registry:Registry") is Registry
    with pytest.raises(UnknownNameError, match="has no attribute 'Nope'"):
        import_object("bayesbench.registry:Nope")
    with pytest.raises(UnknownNameError, match="write it as 'package.module:Object'"):
        import_object("no_colon")


def test_entry_point_plugins_are_found(monkeypatch):
    ep = EntryPoint(name="my_method", value="bayesbench.methods.map:MAP",
                    group="bayesbench.methods")

    def fake_entry_points(group):
        return [ep] if group == "bayesbench.methods" else []

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg = Registry("method", "bayesbench.methods")
    reg.register("map", "bayesbench.methods.map:MAP")
    assert reg.names() == ["map", "my_method"]
    from bayesbench.methods.map import MAP

    assert reg.get("my_method") is MAP


def test_builtins_are_importable_and_described():
    from bayesbench.data.base import Dataset
    from bayesbench.methods.base import Method

    for name in registry_module.METHODS.names():
        cls = registry_module.METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name and cls.description
    for name in registry_module.DATASETS.names():
        cls = registry_module.DATASETS.get(name)
        assert issubclass(cls, Dataset) and cls.name == name and cls.description
