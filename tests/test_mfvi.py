"""MFVI: the Bayesian linear layer's sampling and KL, subsets, the tempered loss, a tiny fit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from bayesbench.config import expand, parse_config
from bayesbench.data.digits import Digits
from bayesbench.errors import ConfigError
from bayesbench.methods.base import EvaluationConfig, FitContext, TrainingConfig
from bayesbench.methods.bayesian_linear import (
    BayesianLinear,
    LocalReparameterization,
    inverse_softplus,
)
from bayesbench.methods.mfvi import MFVI
from bayesbench.models import ModelConfig
from bayesbench.priors import make_prior

CTX = FitContext(model=ModelConfig(d_model=32, heads=2), training=TrainingConfig(epochs=2),
                 seed=5)


@pytest.fixture(scope="module")
def tiny_digits():
    return Digits().build(0).limited(256, 128)


def _layer(estimator: str = "local") -> BayesianLinear:
    torch.manual_seed(0)
    layer = BayesianLinear(3, 2, make_prior("gaussian", 1.0), init_sigma=0.1,
                           estimator=estimator).double()
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]))
        layer.bias_mu.copy_(torch.tensor([0.1, -0.4]))
        layer.weight_rho.copy_(torch.tensor([[0.2, 0.5, 0.1], [0.3, 0.05, 0.4]]).expm1().log())
        layer.bias_rho.fill_(inverse_softplus(0.25))
    return layer


def test_inverse_softplus_round_trips():
    for sigma in (1e-4, 1e-3, 0.1, 2.0):
        assert F.softplus(torch.tensor(inverse_softplus(sigma), dtype=torch.float64)).item() \
            == pytest.approx(sigma, rel=1e-9)


def _local_reparameterization_by_autograd(x, weight_mu, bias_mu, weight_rho, bias_rho, eps):
    """The local reparameterization formula written with plain torch ops, for autograd."""
    var = F.linear(x.square(), F.softplus(weight_rho).square(), F.softplus(bias_rho).square())
    return F.linear(x, weight_mu, bias_mu) + var.sqrt() * eps


@pytest.mark.parametrize("x_shape", [(5, 3), (2, 4, 3)])
def test_local_reparameterization_gradients_match_autograd(x_shape):
    """The hand-written forward and backward give autograd's output and gradients for the
    same noise (the RNG state is replayed), for matrix and token-batch inputs."""
    layer = _layer()
    torch.manual_seed(3)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*x_shape[:-1], 2, dtype=torch.float64)
    params = [layer.weight_mu, layer.bias_mu, layer.weight_rho, layer.bias_rho]
    state = torch.get_rng_state()
    out = LocalReparameterization.apply(x, *params, torch.float64)
    fast = torch.autograd.grad(out, [x, *params], upstream)
    torch.set_rng_state(state)
    eps = torch.randn(*x_shape[:-1], 2, dtype=torch.float64)
    ref_out = _local_reparameterization_by_autograd(x, *params, eps)
    ref = torch.autograd.grad(ref_out, [x, *params], upstream)
    assert torch.allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for got, want in zip(fast, ref):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    # the layer takes this path when training with the local estimator
    torch.set_rng_state(state)
    assert torch.equal(layer(x), out)


def test_bf16_variance_path_stays_within_a_fraction_of_a_percent_of_float32():
    """The variance matmuls in bfloat16 (forced here, whatever the CPU) against float32 for the
    same noise, on activations and stds of the sizes MFVI trains with: the sampled noise and
    the rho gradients agree to well under 1 %, the mean path is untouched."""
    torch.manual_seed(4)
    layer = BayesianLinear(64, 96, make_prior("gaussian", 1.0), init_sigma=0.01)
    with torch.no_grad():
        layer.weight_rho.add_(torch.rand_like(layer.weight_rho) * 2)  # sigmas 0.01 to 0.07
    x = torch.randn(8, 17, 64, requires_grad=True)
    upstream = torch.randn(8, 17, 96)
    params = [layer.weight_mu, layer.bias_mu, layer.weight_rho, layer.bias_rho]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(5)
        out = LocalReparameterization.apply(x, *params, dtype)
        results[dtype] = (out, *torch.autograd.grad(out, [x, *params], upstream))
    mean = F.linear(x, layer.weight_mu, layer.bias_mu).detach()
    exact, low = results[torch.float32], results[torch.bfloat16]
    noise_exact, noise_low = exact[0] - mean, low[0] - mean
    assert noise_exact.abs().mean() > 0.01  # the noise is not negligible here
    assert ((noise_low - noise_exact).abs() / noise_exact.abs()).max() < 0.01
    assert ((noise_low - noise_exact).abs() / noise_exact.abs()).mean() < 2e-3
    for got, want in zip(low[1:], exact[1:]):  # dx, dmu, dmu_b, drho, drho_b
        assert (got - want).norm() < 5e-3 * want.norm()
    assert torch.equal(low[2], exact[2]) and torch.equal(low[3], exact[3])  # mean path exact


def test_local_reparameterization_skips_the_input_gradient_when_not_needed():
    layer = _layer()
    x = torch.randn(4, 3, dtype=torch.float64)  # no requires_grad: the first layer's input
    layer(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("estimator", ["local", "shared"])
def test_sampled_outputs_match_weight_sampling_moments(estimator):
    """Both training estimators give each output the moments of y = x W^T + b under q:
    E[y] = x mu^T + mu_b, Var[y] = x^2 (sigma^2)^T + sigma_b^2, checked by Monte Carlo against
    explicit weight draws (freeze_sample) and against those formulas."""
    layer = _layer(estimator)
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    mean = x @ layer.weight_mu.detach().T + layer.bias_mu.detach()
    var = x.square() @ layer.weight_sigma.detach().square().T + layer.bias_sigma.detach() ** 2
    assert torch.allclose(var, torch.tensor([[0.04 + 4 * 0.25 + 0.01 + 0.0625,
                                              0.09 + 0.01 + 0.16 + 0.0625],
                                             [0.01 + 0.09 + 0.0625,
                                              0.0225 + 1.44 + 0.0625]], dtype=torch.float64))
    n = 20_000
    torch.manual_seed(1)
    with torch.no_grad():
        sampled = torch.stack([layer(x) for _ in range(n)])  # [n, 2, 2]
        explicit = []
        for _ in range(n):
            layer.freeze_sample()
            explicit.append(layer(x))
        layer.unfreeze()
        explicit = torch.stack(explicit)
    for draws in (sampled, explicit):
        se = (var / n).sqrt()
        assert ((draws.mean(0) - mean).abs() < 4 * se).all()
        assert torch.allclose(draws.var(0), var, rtol=0.05)
    assert torch.allclose(sampled.var(0), explicit.var(0), rtol=0.07)
    layer.sample = False  # the switch: posterior mean, deterministic
    assert torch.equal(layer(x), mean)


def test_local_reparameterization_draws_noise_per_row_and_token():
    layer = _layer("local").float()
    x = torch.ones(2, 3, 3)  # identical rows and tokens
    torch.manual_seed(0)
    y = layer(x)
    assert not torch.allclose(y[0, 0], y[0, 1]) and not torch.allclose(y[0, 0], y[1, 0])
    shared = _layer("shared").float()
    y = shared(x)  # one weight draw: identical inputs give identical outputs
    assert torch.allclose(y[0, 0], y[1, 2])


def test_layer_kl_is_the_sum_of_per_weight_closed_form_kls():
    layer = _layer()
    s = 1.0
    by_hand = 0.0
    for mu, sigma in zip(
        [*layer.weight_mu.detach().flatten().tolist(), *layer.bias_mu.detach().tolist()],
        [*layer.weight_sigma.detach().flatten().tolist(), *layer.bias_sigma.detach().tolist()],
    ):
        by_hand += math.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5
    assert layer.kl().item() == pytest.approx(by_hand, rel=1e-9)
    # first weight: log(1 / 0.2) + (0.04 + 0.25) / 2 - 0.5
    assert math.log(5) + 0.29 / 2 - 0.5 == pytest.approx(
        make_prior("gaussian", 1.0).kl(torch.tensor([0.5]), torch.tensor([0.2])).item(),
        rel=1e-6)


@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        ("all", {"attention.qkv", "attention.out", "mlp.fc_in", "mlp.fc_out", "head"}),
        ("attention", {"attention.qkv", "attention.out"}),
        ("mlp", {"mlp.fc_in", "mlp.fc_out"}),
        ("last_layer", {"head"}),
    ],
)
def test_each_subset_makes_exactly_its_linear_layers_bayesian(tiny_digits, subset, expected):
    m = MFVI(subset=subset)
    model = m.build(tiny_digits, FitContext(model=ModelConfig(depth=3)))
    bayesian = {name for name, mod in model.named_modules() if isinstance(mod, BayesianLinear)}
    plain = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    per_block = {e for e in expected if e != "head"}
    want = {f"blocks.{i}.{e}" for i in range(3) for e in per_block} | (expected & {"head"})
    assert bayesian == want
    assert len(bayesian) == {"all": 13, "attention": 6, "mlp": 6, "last_layer": 1}[subset]
    assert bayesian.isdisjoint(plain) and "embedding.proj" in plain
    assert len(bayesian) + len(plain) == 13 + 1  # every linear layer, plus the input embedding


def test_temperature_and_kl_weight_scale_the_kl_term(tiny_digits):
    x, y = tiny_digits.train.x[:16], tiny_digits.train.y[:16]
    terms = {}
    for kl_weight, temperature in [(1.0, 1.0), (0.5, 0.2), (2.0, 1.0), (0.0, 1.0)]:
        m = MFVI(kl_weight=kl_weight, temperature=temperature)
        torch.manual_seed(0)
        m.model = m.build(tiny_digits, CTX).eval()
        for layer in m.bayesian_layers():
            layer.sample = False  # deterministic NLL, so the difference is the KL term
        nll = F.cross_entropy(m.model(x), y)
        kl = m.kl()
        loss = m.loss(m.model, x, y, num_train=256)
        terms[(kl_weight, temperature)] = (loss - nll).item()
        assert terms[(kl_weight, temperature)] == pytest.approx(
            kl_weight * temperature * kl.item() / 256, rel=1e-5)
    base = terms[(1.0, 1.0)]
    assert base > 0
    assert terms[(0.5, 0.2)] == pytest.approx(0.1 * base, rel=1e-5)
    assert terms[(2.0, 1.0)] == pytest.approx(2 * base, rel=1e-5)
    assert terms[(0.0, 1.0)] == 0.0


def test_tiny_fit_predicts_distinct_samples_on_the_simplex(tiny_digits):
    m = MFVI(samples=4, init_sigma=0.05)
    m.fit(tiny_digits, CTX)
    p = m.predict(tiny_digits.test.x)
    n, c = len(tiny_digits.test), tiny_digits.num_classes
    assert p.shape == (4, n, c) and n == 128
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(4, n), atol=1e-5)
    assert not torch.allclose(p[0], p[1], atol=1e-4)
    assert len(m.history) == 2 and all(math.isfinite(h) for h in m.history)
    # the prediction is deterministic: the same S networks every call
    assert torch.equal(p, m.predict(tiny_digits.test.x))
    # split predictions agree with whole predictions (one network per sample across batches)
    m.ctx = dataclasses.replace(CTX, evaluation=EvaluationConfig(batch_size=50))
    assert torch.allclose(p, m.predict(tiny_digits.test.x), atol=1e-6)
    # parameters: (mu, rho) of every Bayesian weight and bias + the deterministic rest
    bayes = sum(p.numel() for layer in m.bayesian_layers() for p in layer.parameters())
    rest = sum(p.numel() for n_, p in m.model.named_parameters()
               if "_mu" not in n_ and "_rho" not in n_)
    assert m.num_parameters() == bayes + rest and bayes % 2 == 0


def test_same_seed_same_numbers(tiny_digits):
    a, b = MFVI(samples=3, prior="laplace"), MFVI(samples=3, prior="laplace")
    a.fit(tiny_digits, CTX)
    b.fit(tiny_digits, CTX)
    assert a.history == b.history
    assert torch.equal(a.predict(tiny_digits.test.x), b.predict(tiny_digits.test.x))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"subset": "heads"}, "subset 'heads' is not one of all, attention, mlp, last_layer"),
        ({"prior": "cauchy"}, "unknown prior 'cauchy'"),
        ({"prior_scale": 0}, "positive"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"kl_weight": -1}, "kl_weight must be >= 0"),
        ({"init_sigma": 2.0}, "init_sigma must be in"),
        ({"estimator": "flipout"}, "estimator 'flipout' is not one of local, shared"),
        ({"samples": 0}, "samples must be at least 1"),
    ],
)
def test_bad_parameters_fail_at_config_load(params, message):
    raw = {"datasets": ["digits"], "methods": [{"name": "mfvi", "params": params}]}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, "b.yaml")


def test_sweep_members_carry_group_and_swept_values():
    raw = {"datasets": ["digits"],
           "methods": [{"name": "mfvi", "params": {"prior": "laplace"},
                        "sweep": {"prior_scale": [0.1, 1.0], "temperature": [1.0, 0.1]}}]}
    specs = expand(parse_config(raw, "b.yaml"))
    assert [s.label for s in specs] == [
        "mfvi@prior_scale=0.1+temperature=1.0", "mfvi@prior_scale=0.1+temperature=0.1",
        "mfvi@prior_scale=1.0+temperature=1.0", "mfvi@prior_scale=1.0+temperature=0.1"]
    assert {s.group for s in specs} == {"mfvi"}
    assert specs[1].swept == {"prior_scale": 0.1, "temperature": 0.1}
    assert specs[1].method_params["prior"] == "laplace"


def test_dropout_is_off_unless_asked_for(tiny_digits):
    """q's weight noise is MFVI's randomness; the shared model's dropout stays off unless
    ``dropout=True`` (then the ELBO would be that of an MC-dropout hybrid)."""
    def rates(model):
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    ctx = FitContext(model=ModelConfig(d_model=32, heads=2, dropout=0.3, attention_dropout=0.2))
    assert rates(MFVI().build(tiny_digits, ctx)) == {0.0}
    assert rates(MFVI(dropout=True).build(tiny_digits, ctx)) == {0.3, 0.2}


def test_cached_weight_samples_are_the_draws_of_a_fresh_generator(tiny_digits):
    """predict reuses S weight draws across calls (evaluation splits); they are exactly the
    draws of freeze_sample with a generator seeded from the fit's seed, sample-major."""
    m = MFVI(samples=3, init_sigma=0.05)
    m.fit(tiny_digits, CTX)
    first = m.predict(tiny_digits.test.x)
    layers = m.bayesian_layers()
    gen = torch.Generator().manual_seed(CTX.seed)
    reference = []
    m.model.eval()
    with torch.no_grad():
        for _ in range(3):
            for layer in layers:
                layer.freeze_sample(gen)
            reference.append(m.model(tiny_digits.test.x).softmax(-1))
    for layer in layers:
        layer.unfreeze()
    assert torch.equal(first, torch.stack(reference))
    assert torch.equal(m.predict(tiny_digits.test.x[:40]), first[:, :40])
    assert m.predict(tiny_digits.test.x).shape[0] == 3
    m.samples = 2  # another S: drawn again, the first two draws of the same stream
    assert torch.equal(m.predict(tiny_digits.test.x), first[:2])
    m.fit(tiny_digits, dataclasses.replace(CTX, seed=CTX.seed + 1))  # a new fit: new draws
    assert not torch.equal(m.predict(tiny_digits.test.x), first[:2])
