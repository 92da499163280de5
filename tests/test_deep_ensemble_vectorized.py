from __future__ import annotations

import torch

from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.deep_ensemble import DeepEnsemble
from bayesbench.models import ModelConfig

NO_DROPOUT = FitContext(model=ModelConfig(d_model=32, heads=2, dropout=0.0,
                                          attention_dropout=0.0),
                        training=TrainingConfig(epochs=2), seed=3)


def test_vectorized_members_equal_sequential_ones_without_dropout(digits_small):
    x = digits_small.test.x
    seq = DeepEnsemble(members=3)
    seq.fit(digits_small, NO_DROPOUT)
    vec = DeepEnsemble(members=3, vectorized=True)
    vec.fit(digits_small, NO_DROPOUT)
    torch.testing.assert_close(vec.predict(x), seq.predict(x), atol=1e-5, rtol=0)
    assert vec.num_parameters() == seq.num_parameters()


def test_vectorized_with_dropout_is_seeded_and_members_differ(digits_small):
    ctx = FitContext(model=ModelConfig(d_model=32, heads=2), training=TrainingConfig(epochs=2),
                     seed=4)
    a, b = DeepEnsemble(members=2, vectorized=True), DeepEnsemble(members=2, vectorized=True)
    a.fit(digits_small, ctx)
    b.fit(digits_small, ctx)
    p = a.predict(digits_small.test.x)
    assert torch.equal(p, b.predict(digits_small.test.x))
    assert not torch.allclose(p[0], p[1])
    assert torch.allclose(p.sum(-1), torch.ones(2, len(digits_small.test)), atol=1e-5)
