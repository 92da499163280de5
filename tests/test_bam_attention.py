"""bam_attention: Weibull / log-normal attention weights, their KLs, and the method end to end."""

from __future__ import annotations

import math

import pytest
import scipy.stats as st
import torch

from bayesbench.methods.bam_attention import (
    BAMAttention,
    BAMRows,
    log_weibull_sample,
    lognormal_kl,
    weibull_gamma_kl,
)
from bayesbench.methods.base import EvaluationConfig, FitContext, TrainingConfig
from bayesbench.models import SoftmaxRows
from bayesbench.registry import METHODS


def tiny_ctx(epochs: int = 2, mc_samples: int = 4) -> FitContext:
    return FitContext(
        training=TrainingConfig(epochs=epochs, batch_size=64),
        evaluation=EvaluationConfig(mc_samples=mc_samples),
        seed=5,
    )


@pytest.mark.parametrize(
    "k, scale, shape, rate",
    [(10.0, 0.06, 1.0, 17.0), (2.0, 1.5, 0.5, 1.0), (1.0, 0.3, 3.0, 4.0), (50.0, 2.0, 0.1, 0.2)],
)
def test_weibull_gamma_kl_matches_monte_carlo(k, scale, shape, rate):
    torch.manual_seed(0)
    q = torch.distributions.Weibull(torch.tensor(scale, dtype=torch.float64),
                                    torch.tensor(k, dtype=torch.float64))
    p = torch.distributions.Gamma(torch.tensor(shape, dtype=torch.float64),
                                  torch.tensor(rate, dtype=torch.float64))
    w = q.sample((400000,))
    log_ratio = q.log_prob(w) - p.log_prob(w)
    mc, se = log_ratio.mean(), log_ratio.std() / math.sqrt(len(w))
    ours = weibull_gamma_kl(k, torch.tensor(math.log(scale), dtype=torch.float64),
                            torch.tensor(shape, dtype=torch.float64), rate)
    assert abs(float(ours - mc)) < 4 * float(se) + 1e-4, (float(ours), float(mc), float(se))


def test_lognormal_kl_matches_torch():
    mu, prior_mu = torch.randn(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, 0.3),
                                            torch.distributions.Normal(prior_mu, 1.5))
    torch.testing.assert_close(lognormal_kl(mu, 0.3, prior_mu, 1.5), ref)


def test_weibull_sample_follows_the_weibull():
    torch.manual_seed(1)
    k, scale = 3.0, 0.4
    w = log_weibull_sample(torch.full((20000,), math.log(scale), dtype=torch.float64), k).exp()
    assert st.kstest(w.numpy(), st.weibull_min(c=k, scale=scale).cdf).pvalue > 1e-3
    # reparameterized: d log W / d log scale = 1
    log_scale = torch.zeros(5, requires_grad=True)
    log_weibull_sample(log_scale, k).sum().backward()
    torch.testing.assert_close(log_scale.grad, torch.ones(5))


@pytest.mark.parametrize("distribution", ["weibull", "lognormal"])
@pytest.mark.parametrize("prior", ["uniform", "contextual"])
def test_rows_on_the_simplex_with_their_kl(distribution, prior):
    torch.manual_seed(2)
    rows = BAMRows(heads=4, d_head=8, distribution=distribution, prior=prior).train()
    scores, keys = torch.randn(3, 4, 7, 7) * 3, torch.randn(3, 4, 7, 8)
    out = rows(scores, keys=keys)
    assert (out >= 0).all() and (out.sum(-1) - 1).abs().max() < 1e-5
    kl = rows.pop_kl()
    assert kl.shape == () and torch.isfinite(kl)
    rows.eval()
    assert rows(scores, keys=keys).sum(-1).sub(1).abs().max() < 1e-5 and rows.kl is None
    rows.use_mean = True
    torch.testing.assert_close(rows(scores, keys=keys), scores.softmax(-1))


def test_weibull_row_kl_is_the_sum_of_elementwise_kls():
    """Uniform prior: Gamma(shape c, rate c T) per weight, posterior mean softmax(scores)."""
    rows = BAMRows(heads=2, d_head=4, weibull_shape=5.0, prior_concentration=0.5).train()
    scores = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    rows(scores)
    log_scale = scores.log_softmax(-1) - math.lgamma(1 + 1 / 5.0)
    expected = weibull_gamma_kl(5.0, log_scale, torch.tensor(0.5, dtype=torch.float64),
                                0.5 * 6).sum()
    torch.testing.assert_close(rows.pop_kl(), expected)


def test_contextual_prior_mean_comes_from_the_keys():
    rows = BAMRows(heads=2, d_head=4, prior="contextual")
    keys = torch.randn(3, 2, 5, 4)
    torch.testing.assert_close(rows.log_prior_mean(keys, 5, keys),
                               torch.full((3, 2, 1, 5), -math.log(5)))  # starts uniform
    with torch.no_grad():
        rows.prior_weight.normal_()
    log_m = rows.log_prior_mean(keys, 5, keys)
    torch.testing.assert_close(log_m.exp().sum(-1), torch.ones(3, 2, 1))
    assert not torch.equal(log_m, rows.log_prior_mean(torch.randn(3, 2, 5, 4), 5, keys))


def test_registered_and_validated():
    assert METHODS.get("bam_attention") is BAMAttention
    for bad in ({"distribution": "gamma"}, {"weibull_shape": 0.0}, {"lognormal_sigma": -1.0},
                {"prior": "flat"}, {"kl_weight": -0.5}, {"layers": []}, {"samples": 0}):
        with pytest.raises(ValueError):
            BAMAttention(**bad)


@pytest.mark.parametrize("distribution", ["weibull", "lognormal"])
def test_end_to_end_on_digits(digits_tiny, distribution):
    method = BAMAttention(distribution=distribution, prior="contextual", layers=[0], samples=3)
    method.fit(digits_tiny, tiny_ctx())
    assert [type(b.attention.rows) for b in method.model.blocks] == [BAMRows, SoftmaxRows]
    probs = method.predict(digits_tiny.test.x)
    assert probs.shape == (3, len(digits_tiny.test), digits_tiny.num_classes)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert not torch.equal(probs[0], probs[1])


def test_same_seed_same_numbers(digits_tiny):
    def fit_predict() -> torch.Tensor:
        method = BAMAttention()
        method.fit(digits_tiny, tiny_ctx(epochs=1, mc_samples=2))
        return method.predict(digits_tiny.test.x)

    assert torch.equal(fit_predict(), fit_predict())
