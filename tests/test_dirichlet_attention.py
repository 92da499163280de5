"""dirichlet_attention: the Dirichlet maths (KL, sampler, gradients) and the method end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from bayesbench.config import parse_config
from bayesbench.methods.base import EvaluationConfig, FitContext, TrainingConfig
from bayesbench.methods.dirichlet_attention import (
    DirichletAttention,
    DirichletRows,
    dirichlet_kl,
    dirichlet_rows_and_kl,
    gamma_functions,
    marsaglia_tsang,
    sample_dirichlet,
    standard_gamma_grad,
)
from bayesbench.models import SoftmaxRows
from bayesbench.registry import METHODS


def tiny_ctx(epochs: int = 2, mc_samples: int = 4) -> FitContext:
    return FitContext(
        training=TrainingConfig(epochs=epochs, batch_size=64),
        evaluation=EvaluationConfig(mc_samples=mc_samples),
        seed=3,
    )


# --------------------------------------------------------------------------- the maths


def test_kl_matches_torch_kl_divergence():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(50, 7, generator=g, dtype=torch.float64) * 5 + 0.05
    beta = torch.rand(50, 7, generator=g, dtype=torch.float64) * 3 + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(beta)
    )
    ours = dirichlet_kl(alpha, beta)
    assert ours.shape == (50,)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # a prior shared by every row ([K]) broadcasts like the full one
    shared = torch.full((7,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(dirichlet_kl(alpha, shared),
                               dirichlet_kl(alpha, shared.expand_as(alpha)))
    assert dirichlet_kl(alpha, alpha).abs().max() < 1e-10


def test_training_kl_and_its_gradients_match_the_reference():
    """The fused training path (own gamma functions, closed-form backward) against autograd
    through :func:`dirichlet_kl`, with a per-key prior broadcast over queries."""
    g = torch.Generator().manual_seed(1)
    alpha = (torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) * 4 + 1e-3).requires_grad_()
    beta = (torch.rand(2, 3, 1, 6, generator=g, dtype=torch.float64) * 2 + 0.1).requires_grad_()
    _, kl = dirichlet_rows_and_kl(alpha, beta)
    ref = dirichlet_kl(alpha, beta).sum()
    torch.testing.assert_close(kl, ref, atol=1e-6, rtol=1e-8)
    ours = torch.autograd.grad(kl, (alpha, beta))
    theirs = torch.autograd.grad(ref, (alpha, beta))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_gamma_functions_match_torch():
    x = torch.cat([torch.logspace(-6, 4, 400, dtype=torch.float64),
                   torch.rand(400, dtype=torch.float64) * 10])
    lgamma, digamma, trigamma = gamma_functions(x)
    torch.testing.assert_close(lgamma, torch.lgamma(x), atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(digamma, torch.digamma(x), atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(trigamma, torch.polygamma(1, x), atol=0, rtol=1e-8)


@pytest.mark.parametrize("low, high", [(1.0, 8.0), (1.0, 40.0), (8.0, 300.0)])
def test_standard_gamma_grad_matches_torch(low, high):
    """Every branch (series, rational, saddle point) and their mixtures, x < 0.8 at alpha > 8
    included."""
    torch.manual_seed(0)
    shape = torch.rand(8000) * (high - low) + low
    z = torch._standard_gamma(shape)
    z[:50] = torch.rand(50) * 0.8  # rare for large shapes, but they must take the series
    ours = standard_gamma_grad(shape, z)
    theirs = torch._standard_gamma_grad(shape, z)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("shape", [1.0, 1.05, 3.0, 40.0])
def test_marsaglia_tsang_draws_gamma_and_an_independent_exponential(shape):
    torch.manual_seed(2)
    log_z, z, e = marsaglia_tsang(torch.full((20000,), shape - 1.0, dtype=torch.float64))
    assert st.kstest(z.numpy(), st.gamma(shape).cdf).pvalue > 1e-3
    assert st.kstest(e.numpy(), st.expon.cdf).pvalue > 1e-3
    assert abs(np.corrcoef(log_z.numpy(), e.numpy())[0, 1]) < 4 / math.sqrt(20000)
    torch.testing.assert_close(log_z.exp(), z)


@pytest.mark.parametrize(
    "alpha", [[0.02, 0.5, 2.0], [0.05, 0.1, 5.0, 0.2], [30.0, 1.0, 0.05, 300.0], [1.0] * 17]
)
def test_sampler_marginals_follow_the_dirichlet(alpha):
    """Goodness of fit: each coordinate of Dir(alpha) is Beta(alpha_i, alpha_0 - alpha_i)."""
    torch.manual_seed(3)
    a = torch.tensor(alpha, dtype=torch.float64)
    w = sample_dirichlet(a.expand(20000, -1).contiguous())
    total = float(a.sum())
    p_values = [
        st.kstest(w[:, i].numpy(), st.beta(ai, total - ai).cdf).pvalue
        for i, ai in enumerate(alpha)
    ]
    assert min(p_values) > 1e-3 / len(alpha), p_values


def test_sampler_in_float32_follows_the_dirichlet():
    torch.manual_seed(4)
    alpha = [0.3, 1.0, 5.0, 2.0]
    w = sample_dirichlet(torch.tensor(alpha).expand(20000, -1).contiguous()).double()
    assert w.dtype == torch.float64
    for i, ai in enumerate(alpha):
        assert st.kstest(w[:, i].numpy(), st.beta(ai, sum(alpha) - ai).cdf).pvalue > 1e-3


def test_monte_carlo_mean_matches_the_dirichlet_mean():
    torch.manual_seed(5)
    alpha = torch.tensor([0.1, 0.7, 2.0, 6.0, 0.01])
    w = sample_dirichlet(alpha.expand(100000, -1).contiguous())
    mean = alpha / alpha.sum()
    se = torch.sqrt(mean * (1 - mean) / (alpha.sum() + 1) / len(w))
    assert ((w.mean(0) - mean).abs() < 5 * se + 1e-7).all()


def test_gradient_matches_the_analytic_gradient_of_the_mean():
    """d/dalpha E[c . w] = (c - c . E[w]) / alpha_0, estimated through rsample."""
    torch.manual_seed(6)
    alpha = torch.tensor([0.3, 1.2, 0.05, 2.0, 12.0], requires_grad=True)
    c = torch.tensor([1.0, 0.0, -0.5, 0.0, 0.5])
    grads = []
    for _ in range(20):
        w = sample_dirichlet(alpha.expand(20000, -1))
        (grad,) = torch.autograd.grad((w @ c).mean(), alpha)
        grads.append(grad)
    grads = torch.stack(grads)
    a = alpha.detach()
    analytic = (c - c @ (a / a.sum())) / a.sum()
    se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - analytic).abs() < 4 * se + 1e-5).all(), (grads.mean(0), analytic)
    # and the same as torch's own implicit reparameterization, statistically
    torch_grads = []
    for _ in range(20):
        w = torch.distributions.Dirichlet(alpha).rsample((20000,))
        torch_grads.append(torch.autograd.grad((w @ c).mean(), alpha)[0])
    torch_grads = torch.stack(torch_grads)
    se_both = (se**2 + torch_grads.var(0) / len(torch_grads)).sqrt()
    assert ((grads.mean(0) - torch_grads.mean(0)).abs() < 4 * se_both + 1e-5).all()


@pytest.mark.parametrize("tokens", [17, 256])
def test_gradients_finite_at_tiny_concentrations_and_long_rows(tokens):
    torch.manual_seed(7)
    rows = DirichletRows(heads=2, d_head=8, init_concentration=1e-6, min_concentration=1e-6,
                         prior="contextual").train()
    scores = (torch.randn(2, 2, tokens, tokens) * 30).requires_grad_()  # very peaked rows
    keys = torch.randn(2, 2, tokens, 8, requires_grad=True)
    alpha = rows.concentration(scores)
    assert alpha.min() < 1e-5
    out = rows(scores, keys=keys)
    loss = (out * torch.randn_like(out)).sum() + rows.pop_kl()
    assert torch.isfinite(loss)
    loss.backward()
    for t in (scores.grad, keys.grad, *(p.grad for p in rows.parameters())):
        assert t is not None and torch.isfinite(t).all()
    assert (out >= 0).all() and (out.sum(-1) - 1).abs().max() < 1e-5


# --------------------------------------------------------------------------- the rows module


@pytest.mark.parametrize("sampler", ["marsaglia_tsang", "torch"])
@pytest.mark.parametrize("prior", ["uniform", "contextual"])
def test_rows_are_on_the_simplex_and_store_their_kl(sampler, prior):
    torch.manual_seed(8)
    rows = DirichletRows(heads=4, d_head=16, prior=prior, sampler=sampler).train()
    scores, keys = torch.randn(3, 4, 9, 9) * 3, torch.randn(3, 4, 9, 16)
    out = rows(scores, keys=keys)
    assert out.shape == scores.shape
    assert (out >= 0).all() and (out.sum(-1) - 1).abs().max() < 1e-5
    kl = rows.pop_kl()
    assert kl.shape == () and kl > 0
    assert rows.kl is None  # handed over: no graph kept past the step
    with pytest.raises(RuntimeError, match="no KL stored"):
        rows.pop_kl()
    rows.eval()
    assert (rows(scores, keys=keys).sum(-1) - 1).abs().max() < 1e-5
    assert rows.kl is None  # no KL outside training
    rows.use_mean = True
    alpha = rows.concentration(scores)
    torch.testing.assert_close(rows(scores, keys=keys), alpha / alpha.sum(-1, keepdim=True))


def test_uniform_prior_kl_is_the_closed_form_against_dir_c():
    torch.manual_seed(9)
    rows = DirichletRows(heads=4, d_head=16, prior_concentration=0.5).train()
    scores = torch.randn(2, 4, 6, 6)
    rows(scores)
    expected = dirichlet_kl(rows.concentration(scores), torch.full((6,), 0.5)).sum()
    torch.testing.assert_close(rows.pop_kl(), expected, rtol=1e-5, atol=1e-4)


def test_contextual_prior_depends_on_the_keys_only():
    torch.manual_seed(10)
    rows = DirichletRows(heads=2, d_head=4, prior="contextual")
    with torch.no_grad():
        rows.prior_weight.normal_()
    keys = torch.randn(3, 2, 5, 4)
    beta = rows.prior_concentrations(keys, 5)
    assert beta.shape == (3, 2, 1, 5) and (beta > 0).all()
    assert not torch.equal(beta, rows.prior_concentrations(torch.randn(3, 2, 5, 4), 5))
    # starts at the uniform prior
    fresh = DirichletRows(heads=2, d_head=4, prior="contextual", prior_concentration=1.0)
    torch.testing.assert_close(fresh.prior_concentrations(keys, 5),
                               torch.full((3, 2, 1, 5), 1.0 + fresh.min_concentration))


def test_concentration_parameterisation():
    rows = DirichletRows(heads=3, d_head=4, init_concentration=2.0, min_concentration=1e-3)
    scores = torch.zeros(1, 3, 5, 5)  # uniform attention
    torch.testing.assert_close(rows.concentration(scores), torch.full((1, 3, 5, 5), 2.0 + 1e-3))


# --------------------------------------------------------------------------- the method


def test_registered_and_validated():
    assert METHODS.get("dirichlet_attention") is DirichletAttention
    cfg = parse_config({"datasets": ["digits"], "methods": [
        {"name": "dirichlet_attention",
         "params": {"layers": [1], "prior": "contextual", "kl_weight": 0.1, "samples": 8}}]})
    assert cfg.methods[0].params["layers"] == [1]
    for bad in ({"prior": "flat"}, {"kl_weight": -1.0}, {"layers": []}, {"layers": [-1]},
                {"layers": [0, 0]}, {"samples": 0}, {"min_concentration": 0.0},
                {"sampler": "numpy"}, {"prior_concentration": -2.0}):
        with pytest.raises(ValueError):
            DirichletAttention(**bad)


def test_layers_choose_where_rows_are_random(digits_tiny):
    method = DirichletAttention(layers=[1])
    method.fit(digits_tiny, tiny_ctx(epochs=1))
    kinds = [type(b.attention.rows) for b in method.model.blocks]
    assert kinds == [SoftmaxRows, DirichletRows]
    assert all(r.kl is None for r in method.rows)  # nothing left from the last step
    with pytest.raises(ValueError, match="layers"):
        DirichletAttention(layers=[2]).fit(digits_tiny, tiny_ctx(epochs=1))


def test_loss_is_cross_entropy_plus_scaled_kl(digits_tiny):
    method = DirichletAttention(kl_weight=0.25)
    method.fit(digits_tiny, tiny_ctx(epochs=1))
    model = method.model
    model.train()
    x, y = digits_tiny.train.x[:16], digits_tiny.train.y[:16]
    torch.manual_seed(0)
    loss = method.loss(model, x, y)
    torch.manual_seed(0)
    logits = model(x)
    kl = sum(r.pop_kl() for r in method.rows)
    expected = torch.nn.functional.cross_entropy(logits, y) + 0.25 * kl / 16
    torch.testing.assert_close(loss, expected)


def test_end_to_end_on_digits(digits_tiny):
    method = DirichletAttention(samples=5, prior="contextual")
    method.fit(digits_tiny, tiny_ctx())
    probs = method.predict(digits_tiny.test.x)
    assert probs.shape == (5, len(digits_tiny.test), digits_tiny.num_classes)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert not torch.equal(probs[0], probs[1])  # the samples differ
    assert method.num_parameters() > 0
    method.deterministic = True
    mean = method.predict(digits_tiny.test.x)
    assert mean.shape == (1, len(digits_tiny.test), digits_tiny.num_classes)
    torch.testing.assert_close(mean.sum(-1), torch.ones(mean.shape[:2]))


def test_same_seed_same_numbers(digits_tiny):
    def fit_predict() -> torch.Tensor:
        method = DirichletAttention()
        method.fit(digits_tiny, tiny_ctx(epochs=1, mc_samples=3))
        return method.predict(digits_tiny.test.x)

    first, second = fit_predict(), fit_predict()
    assert first.shape[0] == 3
    assert torch.equal(first, second)


def test_marsaglia_tsang_without_z_draws_the_same_log_z_and_e():
    """need_z=False (sampling without gradients) skips Z only: log Z, E and the random
    numbers drawn are those of the full call, rejected proposals included."""
    alpha = torch.cat([torch.full((3000,), 1e-3), torch.linspace(0.01, 50.0, 3000)])
    torch.manual_seed(7)
    log_z, z, e = marsaglia_tsang(alpha)
    after = torch.rand(3)
    torch.manual_seed(7)
    log_z2, z2, e2 = marsaglia_tsang(alpha, need_z=False)
    assert z2 is None and z is not None
    assert torch.equal(log_z, log_z2) and torch.equal(e, e2)
    assert torch.equal(torch.rand(3), after)  # the same amount of the stream consumed
