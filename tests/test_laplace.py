from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.laplace import (
    HESSIAN_STRUCTURES,
    Laplace,
    augment,
    build_ggn,
    log_marginal_likelihood,
    monte_carlo_predictive,
    optimize_prior_precision,
    probit_predictive,
)

N, d, C = 25, 3, 4
D = d + 1


def linear_softmax_problem(seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    phi = augment(torch.randn(N, d, generator=g, dtype=torch.float64))
    theta = scale * torch.randn(C, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return phi, theta, y


def nll_hessian(phi, theta, y):
    """Hessian of the summed softmax NLL w.r.t. vec(θ) (row-major), by autograd."""
    def nll(flat):
        return F.cross_entropy(phi @ flat.reshape(C, D).T, y, reduction="sum")
    return torch.autograd.functional.hessian(nll, theta.reshape(-1))


def test_full_ggn_equals_autograd_hessian_of_a_linear_softmax_model():
    phi, theta, y = linear_softmax_problem()
    ggn = build_ggn("full", phi, (phi @ theta.T).softmax(-1))
    ggn.prior_precision = 0.7
    expected = nll_hessian(phi, theta, y) + 0.7 * torch.eye(C * D, dtype=torch.float64)
    torch.testing.assert_close(ggn.precision_matrix(), expected, rtol=1e-10, atol=1e-10)


def test_diag_ggn_is_the_diagonal_of_the_hessian():
    phi, theta, y = linear_softmax_problem(1)
    ggn = build_ggn("diag", phi, (phi @ theta.T).softmax(-1))
    ggn.prior_precision = 0.3
    expected = torch.diag(torch.diag(nll_hessian(phi, theta, y)) + 0.3)
    torch.testing.assert_close(ggn.precision_matrix(), expected, rtol=1e-10, atol=1e-10)


def test_kron_factors_and_their_kronecker_approximation():
    phi, theta, y = linear_softmax_problem(2)
    p = (phi @ theta.T).softmax(-1)
    ggn = build_ggn("kron", phi, p)
    g_sum = sum(torch.diag(p[n]) - torch.outer(p[n], p[n]) for n in range(N))
    a_sum = sum(torch.outer(phi[n], phi[n]) for n in range(N))
    torch.testing.assert_close(ggn.G, g_sum)
    torch.testing.assert_close(ggn.A, a_sum)
    torch.testing.assert_close(ggn.ggn_matrix(), torch.kron(g_sum, a_sum) / N)
    # the eigenvalues used by the evidence are those of (G ⊗ A) / N
    torch.testing.assert_close(ggn.eigenvalues().sort().values,
                               torch.linalg.eigvalsh(torch.kron(g_sum, a_sum) / N),
                               rtol=1e-8, atol=1e-10)
    # θ = 0: every H_n = diag(1/C) − 1/C², so KFAC is exact
    zero = torch.zeros(C, D, dtype=torch.float64)
    kron = build_ggn("kron", phi, (phi @ zero.T).softmax(-1))
    torch.testing.assert_close(kron.ggn_matrix(), nll_hessian(phi, zero, y), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("structure", HESSIAN_STRUCTURES)
def test_function_covariance_is_j_inverse_precision_jt(structure):
    phi, theta, _ = linear_softmax_problem(3)
    ggn = build_ggn(structure, phi, (phi @ theta.T).softmax(-1))
    ggn.prior_precision = 0.5
    cov = torch.linalg.inv(ggn.precision_matrix())
    for n in (0, 7):
        jac = torch.kron(torch.eye(C, dtype=torch.float64), phi[n][None])  # [C, C·D]
        torch.testing.assert_close(ggn.function_covariance(phi[n:n + 1])[0],
                                   jac @ cov @ jac.T, rtol=1e-8, atol=1e-10)


def test_probit_matches_monte_carlo_for_small_variance():
    g = torch.Generator().manual_seed(0)
    mean = 2 * torch.randn(6, C, generator=g, dtype=torch.float64)
    root = 0.05 * torch.randn(6, C, C, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(1, 2)  # correlated logits, variances <= 0.035
    mc = monte_carlo_predictive(mean, cov, 100_000, g).mean(0)
    assert (mc - probit_predictive(mean, cov)).abs().max() < 2e-3


def test_probit_is_mackays_approximation_for_two_classes():
    # one logit fixed at 0: softmax = sigmoid(f1), probit = sigmoid(μ1 / sqrt(1 + π v / 8))
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([torch.linspace(-4, 4, 9), torch.zeros(9)], 1).double()
    cov = torch.diag_embed(torch.tensor([2.0, 0.0]).double().expand(9, 2))
    mc = monte_carlo_predictive(mean, cov, 200_000, g).mean(0)
    probit = probit_predictive(mean, cov)
    assert (mc - probit).abs().max() < 0.01
    assert (mc - mean.softmax(-1)).abs().max() > 0.05  # the plug-in is far off


def test_monte_carlo_draws_have_the_function_covariance():
    g = torch.Generator().manual_seed(1)
    mean = torch.zeros(1, 3, dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 0.5]]],
                       dtype=torch.float64)
    chol = torch.linalg.cholesky(cov[0])
    eps = torch.randn(50_000, 1, 3, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64)
    f = (chol @ eps[:, 0, :, None])[..., 0]
    probs = monte_carlo_predictive(mean, cov, 50_000, g)  # same draws: softmax of f
    torch.testing.assert_close(probs[:, 0], f.softmax(-1))
    torch.testing.assert_close(torch.cov(f.T), cov[0], atol=0.03, rtol=0.03)


def test_prior_precision_is_the_evidence_argmax_on_a_grid():
    phi, theta, y = linear_softmax_problem(4, scale=0.5)
    ggn = build_ggn("full", phi, (phi @ theta.T).softmax(-1))
    log_lik = -float(F.cross_entropy(phi @ theta.T, y, reduction="sum"))
    sq = float(theta.square().sum())
    lam = ggn.eigenvalues()
    best = optimize_prior_precision(sq, lam)
    grid = torch.logspace(-4, 4, 801, dtype=torch.float64).tolist()
    values = [log_marginal_likelihood(log_lik, sq, lam, delta) for delta in grid]
    i = max(range(len(grid)), key=values.__getitem__)
    assert 0 < i < len(grid) - 1  # an interior maximum
    assert abs(math.log10(best) - math.log10(grid[i])) <= 0.01
    assert log_marginal_likelihood(log_lik, sq, lam, best) >= max(values) - 1e-12
    # P equal eigenvalues λ: the root of Pλ/(λ+δ) = δ s is a quadratic's
    lam_, s_, p_ = 3.0, 4.0, 8
    closed = (-s_ * lam_ + math.sqrt((s_ * lam_) ** 2 + 4 * s_ * p_ * lam_)) / (2 * s_)
    assert math.isclose(optimize_prior_precision(s_, torch.full((p_,), lam_)), closed,
                        rel_tol=1e-9)
    # no curvature at all: the evidence only falls with δ, so the lower bound is chosen
    assert optimize_prior_precision(s_, torch.zeros(p_)) == 1e-6


CTX = FitContext(training=TrainingConfig(epochs=2), seed=5)


@pytest.mark.parametrize("hessian,link", [("kron", "probit"), ("full", "mc"),
                                          ("diag", "probit")])
def test_laplace_fit_on_digits(digits_small, hessian, link):
    x = digits_small.test.x
    a = Laplace(hessian=hessian, link=link, samples=3)
    a.fit(digits_small, CTX)
    p = a.predict(x)
    s = 1 if link == "probit" else 3
    assert p.shape == (s, len(x), digits_small.num_classes)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(s, len(x)), atol=1e-5)
    assert 1e-6 < a.ggn.prior_precision < 1e6 and math.isfinite(a.log_evidence)
    if link == "probit":  # logits shrunk towards 0: less confident than the MAP on average
        plug_in = a.logits(x).softmax(-1)
        assert p[0].max(-1).values.mean() < plug_in.max(-1).values.mean()
    b = Laplace(hessian=hessian, link=link, samples=3)
    b.fit(digits_small, CTX)
    assert torch.equal(p, b.predict(x))
    assert torch.equal(p, a.predict(x))  # predict is deterministic


def test_laplace_rejects_bad_parameters():
    with pytest.raises(ValueError, match="hessian"):
        Laplace(hessian="block")
    with pytest.raises(ValueError, match="link"):
        Laplace(link="logit")
    with pytest.raises(ValueError, match="prior_precision"):
        Laplace(prior_precision=0.0)


def test_laplace_head_on_a_dirichlet_attention_backbone(digits_small):
    """Attention-space VI + last-layer Laplace: the head's posterior sits on the Dirichlet
    model's features (at the mean rows), so predictions are deterministic and differ from the
    plain Dirichlet predictive only through the head's uncertainty."""
    from bayesbench.methods.base import FitContext, TrainingConfig
    from bayesbench.methods.dirichlet_attention import LatentAttentionRows
    from bayesbench.methods.laplace import Laplace

    ctx = FitContext(training=TrainingConfig(epochs=2), seed=4)
    m = Laplace(backbone="dirichlet_attention", backbone_params={"kl_weight": 0.001})
    m.fit(digits_small, ctx)
    assert m.model is m.backbone.model
    assert any(isinstance(r, LatentAttentionRows) for r in m.model.modules())
    p = m.predict(digits_small.test.x)
    assert p.shape == (1, len(digits_small.test), digits_small.num_classes)
    assert torch.allclose(p.sum(-1), torch.ones(1, len(digits_small.test)), atol=1e-5)
    assert torch.equal(p, m.predict(digits_small.test.x))  # mean rows: no sampling noise
    assert m.ggn.prior_precision > 0


def test_laplace_backbone_parameters_are_checked():
    from bayesbench.methods.laplace import Laplace

    with pytest.raises(ValueError, match="backbone must be one of"):
        Laplace(backbone="swag")
    with pytest.raises(ValueError, match="backbone_params for dirichlet_attention"):
        Laplace(backbone="dirichlet_attention", backbone_params={"nope": 1})
    with pytest.raises(ValueError, match="map takes none"):
        Laplace(backbone_params={"kl_weight": 1.0})
