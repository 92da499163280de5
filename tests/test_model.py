from __future__ import annotations

import torch
from torch import nn

from bayesbench.models import LINEAR_ROLES, ModelConfig, build_model, enable_dropout
from bayesbench.task import Split, Task


def toy_task(kind: str) -> Task:
    g = torch.Generator().manual_seed(0)
    if kind == "vectors":
        x = torch.randn(20, 5, 3, generator=g)
    elif kind == "tokens":
        x = torch.randint(0, 7, (20, 9), generator=g)
    else:
        x = torch.randn(20, 6, generator=g)
    y = torch.arange(20) % 3
    split = Split(x, y)
    return Task("toy", kind, 3, split, split, split, vocab_size=7 if kind == "tokens" else None)


def test_every_input_kind_gives_logits_and_features():
    cfg = ModelConfig(d_model=16, depth=2, heads=2)
    for kind in ("vectors", "tokens", "features"):
        task = toy_task(kind)
        model = build_model(task, cfg).eval()
        assert model(task.train.x).shape == (20, 3)
        assert model.features(task.train.x).shape == (20, 16)


def test_longer_token_sequences_fit_the_position_embedding():
    task = toy_task("tokens")
    longer = Split(torch.randint(0, 7, (4, 15)), torch.zeros(4, dtype=torch.long))
    task.shifted = {"length": {1: longer}}
    model = build_model(task, ModelConfig(d_model=16, heads=2)).eval()
    assert model(longer.x).shape == (4, 3)


def test_linear_factory_sees_every_role_and_rows_factory_every_layer():
    roles, layers = [], []

    def linear(i, o, role):
        roles.append(role)
        return nn.Linear(i, o)

    class UniformRows(nn.Module):
        def forward(self, scores, keys=None):
            return torch.full_like(scores, 1.0 / scores.shape[-1])

    def rows(layer, heads):
        layers.append((layer, heads))
        return UniformRows()

    task = toy_task("vectors")
    model = build_model(task, ModelConfig(d_model=16, depth=3, heads=4), linear_factory=linear,
                        rows_factory=rows).eval()
    assert sorted(set(roles)) == sorted(LINEAR_ROLES)
    assert roles.count("attention.qkv") == 3 and roles.count("head") == 1
    assert layers == [(0, 4), (1, 4), (2, 4)]
    # uniform attention makes every token see the mean of the values: output is finite
    assert torch.isfinite(model(task.train.x)).all()


def test_softmax_rows_lie_on_the_simplex():
    from bayesbench.models import SoftmaxRows

    rows = SoftmaxRows()(torch.randn(2, 3, 5, 5) * 10)
    assert (rows >= 0).all() and torch.allclose(rows.sum(-1), torch.ones(2, 3, 5))


def test_enable_dropout_samples_differ_and_eval_is_deterministic():
    torch.manual_seed(0)
    task = toy_task("vectors")
    model = build_model(task, ModelConfig(d_model=16, heads=2, dropout=0.3,
                                          attention_dropout=0.3))
    model.eval()
    x = task.train.x
    assert torch.equal(model(x), model(x))
    enable_dropout(model)
    assert not torch.allclose(model(x), model(x))
    assert not any(m.training for m in model.modules() if not isinstance(m, nn.Dropout))


def _padded_token_task() -> Task:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 7, (30, 9), generator=g)
    lengths = torch.randint(2, 10, (30,), generator=g)
    x[torch.arange(9)[None, :] >= lengths[:, None]] = 0
    split = Split(x, torch.arange(30) % 3)
    return Task("toy", "tokens", 3, split, split, split, vocab_size=7, padding_id=0)


def test_reusing_the_input_prefix_gives_the_same_samples_bit_for_bit():
    """S sampled passes over one batch with the deterministic start computed once: the same
    numbers and the same random numbers drawn as S full passes (dropout on, Dirichlet rows),
    padded or not; a new input is computed afresh, and outside the context nothing is kept."""
    from bayesbench.methods.dirichlet_attention import DirichletRows

    for task in (toy_task("vectors"), toy_task("tokens"), _padded_token_task()):
        for rows in (None, lambda layer, heads: DirichletRows(heads, 8)):
            torch.manual_seed(0)
            model = build_model(task, ModelConfig(d_model=16, heads=2), rows_factory=rows)
            enable_dropout(model)
            x, other = task.test.x, task.test.x[:7].clone()

            def passes(m: nn.Module, x: torch.Tensor = x, other: torch.Tensor = other
                       ) -> list[torch.Tensor]:
                torch.manual_seed(3)
                return [m(x) for _ in range(3)] + [m(other), m(x)] + [torch.rand(2)]

            with torch.no_grad():
                plain = passes(model)
                with model.reusing_input_prefix():
                    reused = passes(model)
                    assert model._prefix_cache["x"] is x
                assert model._prefix_cache is None
            assert all(torch.equal(a, b) for a, b in zip(plain, reused))
            assert not torch.equal(plain[0], plain[1])  # the passes are random


def test_the_encoders_dropout_is_a_bernoulli_mask_like_torchs():
    """The fast mask (uniform >= p) against F.dropout: same keep rate within Monte Carlo
    error, same scaling, gradient equal to the mask / (1 - p), identity in eval mode, and
    found by isinstance(m, nn.Dropout) (what MC dropout and `dropout_off` switch)."""
    from bayesbench.models.transformer import Dropout

    torch.manual_seed(0)
    p, n = 0.1, 400_000
    x = torch.full((n,), 2.0, requires_grad=True)
    fast = Dropout(p)
    y = fast(x)
    ours = (y == 0).double().mean().item()
    theirs = (nn.functional.dropout(x, p, training=True) == 0).double().mean().item()
    se = (p * (1 - p) / n) ** 0.5
    assert abs(ours - p) < 4 * se and abs(theirs - p) < 4 * se
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 2.0 / (1 - p)]))
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() / (1 - p))
    assert isinstance(fast, nn.Dropout)
    fast.eval()
    assert fast(x) is x
    assert torch.equal(Dropout(0.0)(x), x)
    model = build_model(toy_task("vectors"), ModelConfig(d_model=16, depth=1, heads=2))
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Dropout)}
    assert kinds == {Dropout}


def test_short_row_softmax_equals_torchs_values_and_gradients():
    """softmax_rows writes the softmax out for rows under 16 keys (torch's CPU kernel is slow
    there): equal to Tensor.softmax within float rounding, padded keys exactly 0, same
    gradients, for every row length either side of the switch."""
    from bayesbench.models.transformer import SHORT_ROWS, SoftmaxRows, softmax_rows

    g = torch.Generator().manual_seed(1)
    for t in range(1, SHORT_ROWS + 3):
        s = (torch.randn(3, 2, t, t, generator=g) * 5).requires_grad_()
        w = torch.randn(3, 2, t, t, generator=g)
        ours = softmax_rows(s)
        (gs,) = torch.autograd.grad((ours * w).sum(), s)
        ref = s.softmax(-1)
        (gr,) = torch.autograd.grad((ref * w).sum(), s)
        assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
        assert torch.allclose(gs, gr, atol=1e-5, rtol=1e-5)
        if t > 1:
            padding = torch.zeros(3, 1, 1, t, dtype=torch.bool)
            padding[..., -1] = True
            rows = SoftmaxRows()(s.detach(), padding=padding)
            assert torch.all(rows[..., -1] == 0)
            assert torch.allclose(rows.sum(-1), torch.ones(3, 2, t), atol=1e-6)
