"""Prior predictive diagnostics: hand-computed statistics, the scale pathology, the CLI."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from bayesbench.data.digits import Digits
from bayesbench.errors import ConfigError
from bayesbench.models import ModelConfig
from bayesbench.prior_predictive import (
    TABLE_COLUMNS,
    diagnostics_from_probs,
    prior_function_probs,
    prior_predictive_diagnostics,
    prior_predictive_table,
    resolve_priors,
)
from bayesbench.priors import make_prior

CFG = ModelConfig(d_model=32, heads=2)


@pytest.fixture(scope="module")
def tiny_task():
    return Digits().build(0).limited(64, 64)


def test_diagnostics_by_hand():
    # F = 3 functions, N = 2 inputs, C = 3 classes
    p = np.array([
        [[0.995, 0.004, 0.001], [0.2, 0.3, 0.5]],   # argmax 0, 2
        [[0.5, 0.25, 0.25], [0.6, 0.2, 0.2]],       # argmax 0, 0 (constant)
        [[0.1, 0.8, 0.1], [1.0, 0.0, 0.0]],         # argmax 1, 0
    ])
    d = diagnostics_from_probs(p)
    h = lambda q: -sum(x * math.log(x) for x in q if x > 0)  # noqa: E731
    assert d["mean_entropy"] == pytest.approx(np.mean([h(row) for f in p for row in f]))
    assert d["predictive_entropy"] == pytest.approx((h(p[:, 0].mean(0)) + h(p[:, 1].mean(0))) / 2)
    assert d["mutual_information"] == pytest.approx(d["predictive_entropy"] - d["mean_entropy"])
    assert d["confident_fraction"] == pytest.approx(2 / 6)  # 0.995 and 1.0
    # input 0: labels (0, 0, 1): 2 of 6 ordered pairs agree; input 1: (2, 0, 0): 2 of 6
    assert d["disagreement"] == pytest.approx(1 - 2 / 6)
    # function 0 varies on 1 of 2 inputs (tie: mode is the smallest class), 1 on 0, 2 on 1
    assert d["input_variation"] == pytest.approx(2 / 6)
    assert d["max_entropy"] == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="F >= 2"):
        diagnostics_from_probs(p[:1])


def test_large_prior_scale_gives_near_one_hot_functions(tiny_task):
    """The pathology: scale 10 puts almost every prediction at a vertex of the simplex, scale
    0.1 gives nearly uniform predictions that barely depend on the input."""
    small = prior_predictive_diagnostics(tiny_task, CFG, make_prior("gaussian", 0.1),
                                         num_functions=8, max_inputs=64)
    large = prior_predictive_diagnostics(tiny_task, CFG, make_prior("gaussian", 10.0),
                                         num_functions=8, max_inputs=64)
    assert (small["num_functions"], small["num_inputs"]) == (8, 64)
    assert small["confident_fraction"] == 0.0
    assert large["confident_fraction"] > 0.7
    assert small["mean_entropy"] > 0.8 * small["max_entropy"] > 10 * large["mean_entropy"]
    assert small["input_variation"] < large["input_variation"]
    for d in (small, large):
        assert 0 <= d["mutual_information"] <= d["predictive_entropy"] <= d["max_entropy"] + 1e-9


def test_prior_functions_are_seeded_and_leave_the_global_rng_alone(tiny_task):
    state = torch.get_rng_state()
    a = prior_function_probs(tiny_task, CFG, make_prior("laplace", 1.0), num_functions=3,
                             max_inputs=16, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = prior_function_probs(tiny_task, CFG, make_prior("laplace", 1.0), num_functions=3,
                             max_inputs=16, seed=4)
    assert a.shape == (3, 16, tiny_task.num_classes) and torch.equal(a, b)
    assert torch.allclose(a.sum(-1), torch.ones(3, 16), atol=1e-5)
    assert not torch.allclose(a[0], a[1])
    # only the head drawn from the prior: other functions than with every layer drawn
    head_only = prior_function_probs(tiny_task, CFG, make_prior("laplace", 1.0),
                                     subset="last_layer", num_functions=3, max_inputs=16, seed=4)
    assert not torch.allclose(head_only, a)


def test_resolve_priors_and_table(tiny_task):
    grid = resolve_priors(["gaussian", "student_t"], ["0.5", "2"], df=4.0)
    assert [(f, s) for f, s, _ in grid] == [("gaussian", 0.5), ("gaussian", 2.0),
                                            ("student_t", 0.5), ("student_t", 2.0)]
    assert grid[2][2].df == 4.0
    frame = prior_predictive_table(tiny_task, CFG, grid, dataset="tiny", num_functions=2,
                                   max_inputs=8)
    assert list(frame.columns) == TABLE_COLUMNS and len(frame) == 4
    assert (frame["dataset"] == "tiny").all() and (frame["num_inputs"] == 8).all()
    for families, scales, message in [
        (["gausian"], ["1"], "--family gausian: unknown prior 'gausian'; did you mean"),
        (["gaussian"], ["-1"], "--scales -1: a prior scale must be a positive number"),
        (["gaussian"], ["abc"], "--scales abc"),
        ([], ["1"], "--family: give at least one"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_priors(families, scales)
    with pytest.raises(ConfigError, match="--functions 1"):
        prior_predictive_table(tiny_task, CFG, grid, num_functions=1)


def test_priors_command_writes_csv_and_png(run_cli, tmp_path):
    proc = run_cli("priors", "--dataset", "digits", "--family", "gaussian,laplace",
                   "--scales", "0.1,10", "--functions", "4", "--max-inputs", "32",
                   "--out", "out")
    assert proc.returncode == 0, proc.stderr
    assert "prior predictive on digits" in proc.stdout and "laplace" in proc.stdout
    frame = pd.read_csv(tmp_path / "out" / "priors_digits.csv")
    assert list(frame.columns) == TABLE_COLUMNS
    assert frame[["family", "scale"]].values.tolist() == [["gaussian", 0.1], ["gaussian", 10.0],
                                                          ["laplace", 0.1], ["laplace", 10.0]]
    assert (frame["num_functions"] == 4).all() and (frame["num_inputs"] == 32).all()
    by_scale = frame.groupby("scale")["confident_fraction"].mean()
    assert by_scale[10.0] > by_scale[0.1]
    image = matplotlib.image.imread(tmp_path / "out" / "priors_digits.png")
    assert image.ndim == 3 and image.shape[1] > 400


def test_priors_command_rejects_a_bad_family_with_exit_2(run_cli, tmp_path):
    proc = run_cli("priors", "--family", "gaussian,cauchy", "--out", "out")
    assert proc.returncode == 2
    assert "--family cauchy: unknown prior 'cauchy'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
