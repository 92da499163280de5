"""The --quick budget cuts a run's task: training and evaluation examples, and the severities
of each shift kind (evenly spaced from the mildest to the strongest)."""

from __future__ import annotations

import pytest
import torch

from bayesbench.config import QuickConfig, expand, parse_config
from bayesbench.data.markov import MarkovChains
from bayesbench.errors import ConfigError
from bayesbench.runner import build_task
from bayesbench.task import Split, spread_severities

MARKOV = {"num_train": 64, "num_val": 16, "num_test": 32}


def _ladder(n: int) -> dict[int, Split]:
    return {k: Split(torch.full((2, 3), float(k)), torch.zeros(2, dtype=torch.long))
            for k in range(1, n + 1)}


@pytest.mark.parametrize(("keep", "chosen"), [
    (1, [5]), (2, [1, 5]), (3, [1, 3, 5]), (4, [1, 2, 4, 5]), (5, [1, 2, 3, 4, 5]),
    (9, [1, 2, 3, 4, 5]), (None, [1, 2, 3, 4, 5]),
])
def test_spread_severities_keeps_the_ends_and_spaces_the_rest_evenly(keep, chosen):
    ladder = _ladder(5)
    kept = spread_severities(ladder, keep)
    assert list(kept) == chosen
    assert all(kept[k] is ladder[k] for k in chosen)


def test_spread_severities_of_an_uneven_ladder():
    ladder = {s: _ladder(1)[1] for s in (2, 7, 3)}
    assert list(spread_severities(ladder, 2)) == [2, 7]
    assert list(spread_severities(ladder, 1)) == [7]


def test_a_quick_run_evaluates_the_configured_severities_of_every_shift_kind(monkeypatch,
                                                                          tmp_path):
    monkeypatch.setenv("BAYESBENCH_CACHE", str(tmp_path / "c"))
    fresh = MarkovChains(**MARKOV).build(0)
    assert all(len(sev) == 5 for sev in fresh.shifted.values())
    for quick, expected in [({}, [1, 5]), ({"severities": 1}, [5]),
                            ({"severities": 3}, [1, 3, 5]), ({"severities": 50}, [1, 2, 3, 4, 5])]:
        cfg = parse_config({"seeds": [0], "datasets": [{"name": "markov", "params": MARKOV}],
                            "methods": ["map"], "quick": {"max_train": 16, "max_eval": 8, **quick}})
        task = build_task(expand(cfg, quick=True)[0])
        assert task.shifted.keys() == fresh.shifted.keys()
        for kind, sev in task.shifted.items():
            assert list(sev) == expected, (quick, kind)
            assert all(len(split) == 8 for split in sev.values())
            assert sev[expected[-1]].x.shape[1:] == fresh.shifted[kind][expected[-1]].x.shape[1:]
        full = build_task(expand(cfg)[0])
        assert all(len(sev) == 5 for sev in full.shifted.values())


def test_the_default_quick_budget_keeps_two_severities():
    assert QuickConfig().severities == 2


@pytest.mark.parametrize("bad", [0, -1, 2.5, "two"])
def test_a_bad_severities_count_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match="quick.severities"):
        parse_config({"datasets": ["markov"], "methods": ["map"], "quick": {"severities": bad}})


def test_the_severities_kept_enter_a_quick_runs_key_and_never_a_full_runs():
    def keys(severities):
        cfg = parse_config({"datasets": ["markov"], "methods": ["map"],
                            "quick": {"severities": severities}})
        return expand(cfg, quick=True)[0].key, expand(cfg)[0].key
    (q1, f1), (q2, f2) = keys(1), keys(2)
    assert q1 != q2 and f1 == f2
