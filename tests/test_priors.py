"""Weight priors: log-densities against scipy, KL closed form against Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

from bayesbench.priors import (
    GaussianMixturePrior,
    GaussianPrior,
    make_prior,
    student_t,
)

W = torch.tensor([-30.0, -3.0, -0.7, -0.01, 0.0, 0.2, 1.0, 4.5, 50.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("prior", "reference"),
    [
        (make_prior("gaussian", 0.3), stats.norm(0, 0.3)),
        (make_prior("laplace", 2.0), stats.laplace(0, 2.0)),
        (make_prior("student_t", 0.5, df=3.0), stats.t(3.0, 0, 0.5)),
        (make_prior("student_t", 5.0, df=1.0), stats.t(1.0, 0, 5.0)),  # Cauchy
    ],
)
def test_log_prob_matches_scipy(prior, reference):
    expected = reference.logpdf(W.numpy())
    assert np.allclose(prior.log_prob(W).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_mixture_log_prob_matches_hand_computed_scipy_mixture():
    prior = make_prior("gaussian_mixture", 2.0, mixture_ratio=0.05, mixture_weight=0.25)
    assert (prior.scale_small, prior.scale_large, prior.weight) == (0.1, 2.0, 0.25)
    w = W.numpy()[np.abs(W.numpy()) < 10]  # keep both components' pdfs representable
    by_hand = np.log(0.25 * stats.norm.pdf(w, 0, 2.0) + 0.75 * stats.norm.pdf(w, 0, 0.1))
    assert np.allclose(prior.log_prob(torch.from_numpy(w)).numpy(), by_hand, rtol=1e-6)
    # far in the tail only the slab matters: log(0.25) + log N(50; 0, 2^2)
    tail = prior.log_prob(torch.tensor([50.0], dtype=torch.float64)).item()
    assert tail == pytest.approx(math.log(0.25) + stats.norm.logpdf(50.0, 0, 2.0), rel=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "student_t", "gaussian_mixture"])
def test_sample_has_the_prior_scale(name):
    torch.manual_seed(0)
    prior = make_prior(name, 0.5, df=5.0, mixture_ratio=0.1, mixture_weight=0.5)
    w = prior.sample((200_000,)).double()
    assert w.dtype == torch.float64 and w.shape == (200_000,)
    expected_std = {"gaussian": 0.5, "laplace": 0.5 * math.sqrt(2),
                    "student_t": 0.5 * math.sqrt(5 / 3),
                    "gaussian_mixture": math.sqrt(0.5 * 0.5**2 + 0.5 * 0.05**2)}[name]
    assert abs(w.mean().item()) < 0.01
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    # the samples follow log_prob: a KS test against the density's own CDF where scipy has it
    if name == "laplace":
        assert stats.kstest(w[:5000].numpy(), stats.laplace(0, 0.5).cdf).pvalue > 0.01


def test_gaussian_kl_closed_form_matches_monte_carlo_and_torch():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(50, generator=g, dtype=torch.float64) * 0.5
    sigma = torch.rand(50, generator=g, dtype=torch.float64) * 0.3 + 0.05
    prior = GaussianPrior(0.7)
    closed = prior.kl(mu, sigma).item()
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma),
        torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                   torch.tensor(0.7, dtype=torch.float64))).sum().item()
    assert closed == pytest.approx(reference, rel=1e-10)
    # one hand-computed element: log(0.7 / 0.1) + (0.01 + 0.25) / (2 * 0.49) - 0.5
    one = prior.kl(torch.tensor([0.5]), torch.tensor([0.1])).item()
    assert one == pytest.approx(math.log(7) + 0.26 / 0.98 - 0.5, rel=1e-6)
    torch.manual_seed(2)
    mc = prior.kl_monte_carlo(mu, sigma, num_samples=20_000).item()
    assert mc == pytest.approx(closed, rel=0.01)


def test_fused_gaussian_kl_matches_per_tensor_kl_in_value_and_gradient():
    """GaussianPrior.kl_softplus (one closed-form pass over several tensors, hand-written
    gradient) against autograd through GaussianPrior.kl tensor by tensor."""
    g = torch.Generator().manual_seed(5)
    shapes = [(3, 4), (4,), (2, 3)]
    mus = [(torch.randn(s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
           for s in shapes]
    rhos = [(torch.rand(s, generator=g, dtype=torch.float64) * 6 - 5).requires_grad_()
            for s in shapes]  # sigma from 0.007 to 1.3
    prior = GaussianPrior(0.7)
    fused = prior.kl_softplus(mus, rhos)
    per_tensor = sum(prior.kl(m, F.softplus(r)) for m, r in zip(mus, rhos))
    assert fused.item() == pytest.approx(per_tensor.item(), rel=1e-12)
    got = torch.autograd.grad(3.0 * fused, [*mus, *rhos])
    want = torch.autograd.grad(3.0 * per_tensor, [*mus, *rhos])
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # the closed-form gradients: mu / s^2 and (sigma / s^2 - 1 / sigma) * sigmoid(rho)
    assert torch.allclose(got[0], 3.0 * mus[0].detach() / 0.49)
    sigma = F.softplus(rhos[0].detach())
    assert torch.allclose(got[3], 3.0 * (sigma / 0.49 - 1 / sigma) * rhos[0].detach().sigmoid())
    # other priors take the per-tensor (Monte Carlo) path with the same interface
    laplace = make_prior("laplace", 1.0)
    torch.manual_seed(0)
    a = laplace.kl_softplus(mus, rhos)
    torch.manual_seed(0)
    b = sum(laplace.kl(m, F.softplus(r)) for m, r in zip(mus, rhos))
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    with pytest.raises(ValueError, match="2 means but 1 rhos"):
        prior.kl_softplus(mus[:2], rhos[:1])


def test_monte_carlo_kl_is_unbiased_and_differentiable():
    torch.manual_seed(3)
    prior = GaussianPrior(1.5)
    mu = torch.linspace(-1, 1, 20, dtype=torch.float64, requires_grad=True)
    sigma = torch.full((20,), 0.4, dtype=torch.float64, requires_grad=True)
    closed = prior.kl(mu, sigma)
    one_draw = torch.stack([prior.kl_monte_carlo(mu, sigma, 1) for _ in range(4000)])
    # mean of single-draw estimates within 4 standard errors of the truth
    se = one_draw.std() / math.sqrt(len(one_draw))
    assert abs(one_draw.mean() - closed).item() < 4 * se.item()
    assert se.item() > 0  # it is a noisy estimate
    # gradients of the MC estimate average to the closed-form gradients
    grad_closed = torch.autograd.grad(closed, [mu, sigma])
    grad_mc = torch.autograd.grad(prior.kl_monte_carlo(mu, sigma, 20_000), [mu, sigma])
    for a, b in zip(grad_mc, grad_closed):
        assert torch.allclose(a, b, atol=0.05)


@pytest.mark.parametrize("name", ["laplace", "student_t", "gaussian_mixture"])
def test_non_gaussian_kl_uses_monte_carlo(name):
    prior = make_prior(name, 1.0)
    assert not prior.has_closed_form_kl
    mu, sigma = torch.zeros(1000), torch.full((1000,), 1e-5)
    torch.manual_seed(0)
    a = prior.kl(mu, sigma).item()
    # sigma tiny, mu = 0: KL ≈ -H[q] - log p(0) per weight, known in closed form
    entropy = 0.5 * math.log(2 * math.pi * math.e * 1e-10)
    log_p0 = prior.log_prob(torch.zeros(1)).item()
    assert a == pytest.approx(1000 * (-entropy - log_p0), rel=1e-3)


def test_laplace_kl_monte_carlo_matches_numerical_integration():
    prior = make_prior("laplace", 0.8)
    mu, sigma = 0.3, 0.5
    grid = np.linspace(mu - 12 * sigma, mu + 12 * sigma, 200_001)
    q = stats.norm.pdf(grid, mu, sigma)
    exact = np.trapezoid(q * (stats.norm.logpdf(grid, mu, sigma)
                              - stats.laplace.logpdf(grid, 0, 0.8)), grid)
    torch.manual_seed(4)
    mc = prior.kl(torch.full((1,), mu, dtype=torch.float64),
                  torch.full((1,), sigma, dtype=torch.float64), num_samples=200_000).item()
    assert mc == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_prior("gausian", 1.0), "did you mean 'gaussian'"),
        (lambda: make_prior("gaussian", 0.0), "positive"),
        (lambda: make_prior("laplace", -1.0), "positive"),
        (lambda: make_prior("student_t", 1.0, df=0.0), "df must be a positive"),
        (lambda: make_prior("gaussian_mixture", 1.0, mixture_weight=1.0), r"in \(0, 1\)"),
        (lambda: make_prior("gaussian_mixture", 1.0, mixture_ratio=2.0), "mixture_ratio"),
        (lambda: GaussianMixturePrior(1.0, 0.1, 0.5), "scale_small <= scale_large"),
        (lambda: student_t(3.0, float("nan")), "positive finite"),
    ],
)
def test_bad_prior_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
