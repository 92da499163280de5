"""SNGP: bounded spectral norm, random-feature RBF kernel, Laplace covariance, links, fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from bayesbench.data.digits import Digits
from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.sngp import (
    SNGP,
    BoundedSpectralNorm,
    RandomFeatureGPHead,
    bounded_spectral_norm,
    exact_spectral_norms,
    mean_field_probs,
    sampled_logit_probs,
)
from bayesbench.registry import METHODS

BOUND = 0.95


def spectral(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach(), ord=2))


@pytest.fixture(scope="module")
def digits():
    return Digits().build(0).limited(256, 128)


@pytest.fixture(scope="module")
def fitted(digits):
    torch.manual_seed(0)
    m = SNGP(link="mc", samples=8)
    m.fit(digits, FitContext(training=TrainingConfig(epochs=2), seed=0))
    return m


# --- spectral normalization ------------------------------------------------------------------


def test_bound_holds_after_training_steps():
    torch.manual_seed(0)
    layer = bounded_spectral_norm(torch.nn.Linear(32, 48), BOUND)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(64, 32)
    for _ in range(50):  # push the spectral norm up: maximise the output energy
        loss = -(layer(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    exact_spectral_norms(layer)
    layer.eval()
    assert spectral(layer.parametrizations.weight.original) > 2.0  # the rescaling is active
    assert spectral(layer.weight) == pytest.approx(BOUND, abs=1e-3)


def test_weight_below_the_bound_is_unchanged():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    with torch.no_grad():
        layer.weight *= 0.5 / spectral(layer.weight)
    original = layer.weight.detach().clone()
    bounded_spectral_norm(layer, BOUND)
    for train in (True, False):
        layer.train(train)
        assert torch.equal(layer.weight, original)


def test_weight_above_the_bound_is_rescaled_to_it():
    torch.manual_seed(0)
    w = torch.randn(24, 16) * 3  # spectral norm ~ 3 * (4 + 5) = 27
    sn = BoundedSpectralNorm(w, BOUND)
    torch.testing.assert_close(sn(w), w * BOUND / spectral(w), atol=1e-4, rtol=1e-3)


def test_fitted_encoder_respects_the_bound_and_head_is_not_normalized(fitted):
    normalized = [m for m in fitted.model.modules()
                  if isinstance(m, torch.nn.Linear) and hasattr(m, "parametrizations")]
    assert len(normalized) == 4 * fitted.ctx.model.depth  # qkv, out, mlp.in, mlp.out per block
    assert all(spectral(m.weight) <= BOUND + 1e-3 for m in normalized)
    assert any(spectral(m.parametrizations.weight.original) > BOUND for m in normalized)
    assert not hasattr(fitted.head.beta, "parametrizations")


# --- random features, Laplace covariance, links --------------------------------------------


def test_random_features_approximate_the_rbf_kernel():
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    rbf = torch.exp(-torch.cdist(x, x) ** 2 / (2 * 1.5**2))
    errors = {}
    for d in (64, 8192):
        head = RandomFeatureGPHead(3, 2, num_inducing=d, length_scale=1.5, amplitude=3.0,
                                   normalize_input=False)
        phi = head.random_features(x)
        errors[d] = (phi @ phi.t() / 9.0 - rbf).abs()  # kernel a^2 exp(...), a = 3
    assert errors[8192].max() < 0.05
    assert errors[8192].mean() < 0.3 * errors[64].mean()  # error ~ 1/sqrt(D)


@pytest.mark.parametrize("weighting", ["max_prob", "unit"])
def test_laplace_precision_matches_direct_computation(weighting):
    torch.manual_seed(0)
    head = RandomFeatureGPHead(2, 3, num_inducing=16, length_scale=1.0, amplitude=2.0,
                               ridge_penalty=0.5, normalize_input=False,
                               precision_weight=weighting)
    x = torch.randn(7, 2)
    precision = head.fit_covariance([x[:3], x[3:]])  # two minibatches
    direct = 0.5 * torch.eye(16, dtype=torch.float64)
    for xn in x:
        phi = (2.0 * math.sqrt(2 / 16) * torch.cos(head.rff_weight @ xn + head.rff_bias)).double()
        p = F.softmax(head.beta.weight.double() @ phi, dim=0).max()
        w = 1.0 if weighting == "unit" else p * (1 - p)
        direct += w * torch.outer(phi, phi)
    torch.testing.assert_close(precision, direct, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.covariance @ precision, torch.eye(16, dtype=torch.float64))
    _, var = head.predictive(x[:2])
    phi = head.random_features(x[:2]).double()
    expected = (phi * torch.linalg.solve(direct, phi.t()).t()).sum(-1)
    torch.testing.assert_close(var.double(), expected, atol=1e-6, rtol=1e-5)


def test_mean_field_closed_form_and_against_monte_carlo():
    logits = torch.tensor([[2.0, 0.0]])
    torch.testing.assert_close(
        mean_field_probs(logits, torch.tensor([8 / math.pi])), (logits / math.sqrt(2)).softmax(-1)
    )
    torch.testing.assert_close(mean_field_probs(logits, torch.zeros(1)), logits.softmax(-1))
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(200, 5, generator=g) * 2
    var = torch.rand(200, generator=g) * 2
    mc = sampled_logit_probs(mu, var, 20000, g).mean(0)
    assert (mean_field_probs(mu, var) - mc).abs().max() < 0.05  # measured 0.040
    assert (mu.softmax(-1) - mc).abs().max() > 0.1  # ignoring the variance is much worse


@pytest.mark.parametrize("weighting", ["unit", "max_prob"])
def test_variance_grows_away_from_the_data(weighting):
    """Toy 2-D problem, two separable blobs: far away the variance is the prior a^2/ridge = 1.
    With unit weights the training points contract it; with p(1-p) weights confidently fitted
    points hardly count, so it stays near the prior (why "unit" is the default)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 2, generator=g) * 0.5 + torch.stack([4.0 * y - 2.0, 0 * y], -1)
    head = RandomFeatureGPHead(2, 2, num_inducing=512, length_scale=1.0, amplitude=1.0,
                               normalize_input=False, precision_weight=weighting)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.fit_covariance([x])
    angle = torch.linspace(0, 2 * math.pi, 50)
    far = 10 * torch.stack([angle.cos(), angle.sin()], -1)
    var_train, var_far = head.predictive(x)[1], head.predictive(far)[1]
    assert var_far.min() > 0.8  # prior variance k(x, x) = 1
    if weighting == "unit":
        assert var_train.mean() < 0.1 * var_far.min()
        assert var_train.max() < 0.5 * var_far.min()
    else:
        assert var_train.mean() > 0.8


# --- the method ------------------------------------------------------------------------------


def test_tiny_fit_gives_probability_samples(fitted, digits):
    n, c = len(digits.test), digits.num_classes
    probs = fitted.predict(digits.test.x)
    assert probs.shape == (8, n, c)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(8, n), atol=1e-5)
    assert (probs[0] != probs[1]).any()  # sampled logits differ
    fitted.link = "mean_field"
    try:
        mf = fitted.predict(digits.test.x)
    finally:
        fitted.link = "mc"
    assert mf.shape == (1, n, c) and torch.allclose(mf.sum(-1), torch.ones(1, n), atol=1e-5)
    assert fitted.num_parameters() == sum(
        p.numel() for p in fitted.model.parameters() if p.requires_grad
    )


def test_noise_inputs_get_more_variance_than_training_inputs(fitted, digits):
    var_train = fitted.predictive(digits.train.x)[1]
    var_noise = fitted.predictive(digits.ood["uniform_noise"])[1]
    assert var_noise.mean() > 5 * var_train.mean()  # measured ~24x


def test_same_seed_same_numbers(digits):
    ctx = FitContext(training=TrainingConfig(epochs=1), seed=5)
    a, b = SNGP(link="mc", samples=4), SNGP(link="mc", samples=4)
    a.fit(digits, ctx)
    b.fit(digits, ctx)
    pa = a.predict(digits.test.x)
    assert torch.equal(pa, b.predict(digits.test.x))
    assert torch.equal(pa, a.predict(digits.test.x))  # predict is a function of x and seed


@pytest.mark.parametrize("params", [
    {"spectral_bound": 0.0}, {"spectral_roles": ["head"]}, {"num_inducing": 0},
    {"length_scale": -1.0}, {"ridge_penalty": 0.0}, {"precision_weight": "full"},
    {"link": "probit"}, {"mean_field_factor": -0.1}, {"samples": 0},
])
def test_bad_parameters_raise(params):
    with pytest.raises(ValueError):
        SNGP(**params)


def test_registered_and_roles_accept_subset_names():
    assert METHODS.get("sngp") is SNGP
    assert SNGP(spectral_roles=["mlp", "attention.qkv"]).spectral_roles == (
        "mlp.in", "mlp.out", "attention.qkv")
    assert SNGP(spectral_roles=[]).spectral_roles == ()
