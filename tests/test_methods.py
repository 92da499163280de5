from __future__ import annotations

import torch

from bayesbench.methods.base import FitContext, NonFiniteLossError, TrainingConfig
from bayesbench.methods.deep_ensemble import DeepEnsemble
from bayesbench.methods.map import MAP
from bayesbench.methods.mc_dropout import MCDropout
from bayesbench.methods.temperature_scaling import TemperatureScaling, fit_temperature
from bayesbench.models import ModelConfig

CTX = FitContext(model=ModelConfig(d_model=32, heads=2), training=TrainingConfig(epochs=2),
                 seed=3)


def assert_probability_samples(p: torch.Tensor, s: int, n: int, c: int) -> None:
    assert p.shape == (s, n, c)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(s, n), atol=1e-5)


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=g) * 3
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(logits, labels) - 2.5) < 0.1


def test_map_and_temperature_scaling(digits_small):
    n, c = len(digits_small.test), digits_small.num_classes
    m = MAP()
    m.fit(digits_small, CTX)
    assert_probability_samples(m.predict(digits_small.test.x), 1, n, c)
    ts = TemperatureScaling()
    ts.fit(digits_small, CTX)
    # same seed, same network: temperature scaling only rescales MAP's logits
    assert torch.allclose(ts.logits(digits_small.test.x), m.logits(digits_small.test.x))
    assert ts.temperature > 0 and ts.temperature != 1.0
    expected = (m.logits(digits_small.test.x) / ts.temperature).softmax(-1)
    assert torch.allclose(ts.predict(digits_small.test.x)[0], expected)
    assert ts.num_parameters() == m.num_parameters() + 1


def test_same_seed_same_numbers(digits_small):
    a, b = MAP(), MAP()
    a.fit(digits_small, CTX)
    b.fit(digits_small, CTX)
    assert torch.equal(a.predict(digits_small.test.x), b.predict(digits_small.test.x))


def test_mc_dropout_samples_differ(digits_small):
    m = MCDropout(samples=5, dropout=0.2)
    m.fit(digits_small, CTX)
    p = m.predict(digits_small.test.x)
    assert_probability_samples(p, 5, len(digits_small.test), digits_small.num_classes)
    assert not torch.allclose(p[0], p[1])
    assert m.model.config.attention_dropout == 0.2


def test_deep_ensemble_members_are_independent(digits_small):
    m = DeepEnsemble(members=3)
    m.fit(digits_small, CTX)
    p = m.predict(digits_small.test.x)
    assert_probability_samples(p, 3, len(digits_small.test), digits_small.num_classes)
    assert not torch.allclose(p[0], p[1])
    single = m.networks[0].num_parameters()
    assert m.num_parameters() == 3 * single


def test_diverging_training_raises(digits_small):
    import dataclasses

    import pytest

    ctx = dataclasses.replace(CTX, training=TrainingConfig(epochs=1, lr=1e30, grad_clip=0.0))
    with pytest.raises(NonFiniteLossError, match="loss became"):
        MAP().fit(digits_small, ctx)


def test_foreach_adamw_trains_bit_identically_to_the_per_parameter_loop(digits_small):
    """make_optimizer's foreach AdamW runs the same kernels with the same scalars as torch's
    per-parameter loop: the same network, bit for bit, after a few epochs with weight decay
    and clipping (what every AdamW method trains with)."""
    import dataclasses

    from bayesbench.methods import base

    ctx = dataclasses.replace(CTX, training=TrainingConfig(epochs=2, weight_decay=0.01))
    stock = base.make_optimizer
    nets = []
    for foreach in (True, False):
        def make(model, training, foreach=foreach):
            return torch.optim.AdamW(model.parameters(), lr=training.lr,
                                     weight_decay=training.weight_decay, foreach=foreach)
        base.make_optimizer = make
        try:
            m = MAP()
            m.fit(digits_small, ctx)
        finally:
            base.make_optimizer = stock
        nets.append(m)
    assert stock(nets[0].model, ctx.training).defaults["foreach"] is True
    for a, b in zip(nets[0].model.parameters(), nets[1].model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(nets[0].predict(digits_small.test.x), nets[1].predict(digits_small.test.x))
