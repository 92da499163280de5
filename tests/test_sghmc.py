from __future__ import annotations

import math

import pytest
import torch

from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.sghmc import (
    SGHMC,
    SGHMCOptimizer,
    collection_steps,
    cyclical_schedule,
    gaussian_prior_grad,
    prior_grad_from_family,
)

# Conjugate 1-D model: x_n ~ N(θ, 1), n = 1..N, prior θ ~ N(0, σ_p²).
N, PRIOR_SCALE = 50, 1.0
X_BAR = 0.8
POST_PRECISION = N + 1 / PRIOR_SCALE**2
POST_MEAN = N * X_BAR / POST_PRECISION
POST_VAR = 1 / POST_PRECISION


def run_chains(temperature: float, preconditioner: str, chains: int = 4000,
               steps: int = 3000, burn_in: int = 1000, thin: int = 10) -> torch.Tensor:
    """Independent chains as the coordinates of one parameter; full-batch gradients of the
    mean NLL ``(θ − x̄)²/2`` (+ const). Returns the kept draws, flattened."""
    theta = torch.nn.Parameter(torch.full((chains,), 2.0, dtype=torch.float64))
    opt = SGHMCOptimizer([theta], lr=0.01, num_data=N, momentum_decay=0.1,
                         temperature=temperature, prior_grad=gaussian_prior_grad(PRIOR_SCALE),
                         generator=torch.Generator().manual_seed(0),
                         preconditioner=preconditioner)
    kept = []
    for k in range(steps):
        # a short noise-free exploration first, which also sets the rmsprop preconditioner
        opt.param_groups[0]["noise"] = k >= 20
        theta.grad = theta.detach() - X_BAR
        opt.step()
        if k >= burn_in and k % thin == 0:
            kept.append(theta.detach().clone())
    return torch.cat(kept)


@pytest.mark.parametrize("preconditioner", ["none", "rmsprop"])
def test_sghmc_samples_the_conjugate_gaussian_posterior(preconditioner):
    draws = run_chains(1.0, preconditioner)
    assert abs(draws.mean() - POST_MEAN) < 0.05 * math.sqrt(POST_VAR)
    assert abs(draws.var() / POST_VAR - 1) < 0.02


def test_temperature_scales_the_variance():
    draws = run_chains(0.25, "none")
    assert abs(draws.mean() - POST_MEAN) < 0.05 * math.sqrt(POST_VAR)
    assert abs(draws.var() / (0.25 * POST_VAR) - 1) < 0.02


def test_one_step_is_the_documented_update():
    theta = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    opt = SGHMCOptimizer([theta], lr=0.1, num_data=10, momentum_decay=0.2, temperature=0.5,
                         prior_grad=gaussian_prior_grad(2.0),
                         generator=torch.Generator().manual_seed(3))
    grad = torch.tensor([0.3, 0.4])
    v = torch.zeros(2)
    expected = theta.detach().clone()
    eps_gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        theta.grad = grad.clone()
        g = grad + expected / 2.0**2 / 10
        eps = torch.randn(2, generator=eps_gen)
        v = (1 - 0.2) * v - 0.1 * g + math.sqrt(2 * 0.2 * 0.1 * 0.5 / 10) * eps
        expected = expected + v
        opt.step()
    torch.testing.assert_close(theta.detach(), expected)


def test_prior_gradients():
    theta = torch.tensor([-2.0, 0.5, 3.0])
    torch.testing.assert_close(prior_grad_from_family("gaussian", 2.0)(theta), theta / 4.0)
    # other families come from bayesbench.priors: Laplace(0, b) has −∇ log p = sign(θ) / b
    torch.testing.assert_close(prior_grad_from_family("laplace", 0.5)(theta),
                               torch.sign(theta) / 0.5)


def test_cyclical_schedule_and_collection_steps():
    assert cyclical_schedule(1, 100, 4) == (0, 0.0)
    assert cyclical_schedule(26, 100, 4) == (1, 0.0)
    assert cyclical_schedule(100, 100, 4) == (3, 0.96)
    # 25 steps a cycle, sampling when r >= 0.8: steps 21..25 of each cycle, 2 samples kept
    assert collection_steps(100, 4, 0.8, 2) == [23, 25, 48, 50, 73, 75, 98, 100]
    assert collection_steps(10, 1, 0.8, 5) == [9, 10]  # fewer sampling steps than asked


CTX = FitContext(training=TrainingConfig(epochs=2), seed=11)


def test_sghmc_fit_on_digits(digits_small):
    x = digits_small.test.x
    a = SGHMC(cycles=2, samples_per_cycle=2, lr=1e-3)
    a.fit(digits_small, CTX)
    assert len(a.weight_samples) == 4
    p = a.predict(x)
    assert p.shape == (4, len(x), digits_small.num_classes)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(4, len(x)), atol=1e-5)
    assert not torch.allclose(p[0], p[1])
    b = SGHMC(cycles=2, samples_per_cycle=2, lr=1e-3)
    b.fit(digits_small, CTX)
    assert torch.equal(p, b.predict(x))


def test_sghmc_rejects_bad_parameters():
    for kwargs in ({"lr": 0.0}, {"momentum_decay": 0.0}, {"temperature": -1.0},
                   {"prior_scale": 0.0}, {"cycles": 0}, {"exploration_fraction": 1.0},
                   {"samples_per_cycle": 0}, {"preconditioner": "adam"},
                   {"prior": "cauchy"}):
        with pytest.raises(ValueError):
            SGHMC(**kwargs)
