"""Attention-space VI on padded token inputs: each row is a distribution over its sequence's
real keys, and the KL covers the rows of real queries over real keys only.

Checked against the trimmed sequences (what the padded batch must equal), against the
reference path (``torch.distributions``), and by Monte Carlo for the sampled rows."""

from __future__ import annotations

import pytest
import torch

from bayesbench.config import EvaluationConfig, ModelConfig, TrainingConfig
from bayesbench.methods.bam_attention import BAMAttention, BAMRows
from bayesbench.methods.base import FitContext
from bayesbench.methods.dirichlet_attention import (
    DirichletAttention,
    DirichletRows,
    dirichlet_kl,
    dirichlet_rows_and_kl,
    sample_dirichlet,
)
from bayesbench.task import Split, Task


def _padding(lengths: list[int], t: int) -> torch.Tensor:
    """bool ``[B, 1, 1, T]``, True at the padded keys of right-padded sequences."""
    return (torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None])[:, None, None, :]


def _rows_module(kind: str, prior: str, heads: int = 2, d_head: int = 4):
    torch.manual_seed(3)
    if kind == "dirichlet":
        rows = DirichletRows(heads, d_head, prior=prior, init_concentration=2.0)
    else:
        rows = BAMRows(heads, d_head, distribution=kind, prior=prior)
    if prior == "contextual":  # move the prior away from its uniform initialisation
        with torch.no_grad():
            rows.prior_weight.normal_()
    return rows


CASES = [("dirichlet", "uniform"), ("dirichlet", "contextual"), ("weibull", "uniform"),
         ("weibull", "contextual"), ("lognormal", "uniform"), ("lognormal", "contextual")]


@pytest.mark.parametrize("kind,prior", CASES)
def test_the_kl_of_a_padded_batch_is_the_kl_of_its_trimmed_sequences(kind: str, prior: str):
    """Sum over sequences of the KL computed on each sequence alone (no padding) equals the KL
    of the padded batch; so do its gradients with respect to the scores and the keys."""
    rows = _rows_module(kind, prior).train()
    lengths, t = [5, 2, 7], 7
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, t, t, generator=g).requires_grad_()
    keys = torch.randn(3, 2, t, 4, generator=g).requires_grad_()
    rows(scores, keys, _padding(lengths, t))
    kl = rows.pop_kl()
    grads = torch.autograd.grad(kl, (scores, keys) if prior == "contextual" else (scores,))
    want = 0.0
    want_grads = [torch.zeros_like(scores), torch.zeros_like(keys)]
    for i, n in enumerate(lengths):
        s = scores.detach()[i:i + 1, :, :n, :n].clone().requires_grad_()
        k = keys.detach()[i:i + 1, :, :n].clone().requires_grad_()
        rows(s, k)
        kl_i = rows.pop_kl()
        want = want + kl_i.detach()
        gi = torch.autograd.grad(kl_i, (s, k) if prior == "contextual" else (s,))
        want_grads[0][i:i + 1, :, :n, :n] = gi[0]
        if prior == "contextual":
            want_grads[1][i:i + 1, :, :n] = gi[1]
    assert torch.isfinite(kl) and kl > 0
    assert torch.allclose(kl, want, rtol=1e-5), (kl, want)
    for got, exp in zip(grads, want_grads):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, exp, atol=1e-5, rtol=1e-4), (got - exp).abs().max()


@pytest.mark.parametrize("kind,prior", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_padded_keys_get_exactly_zero_weight(kind: str, prior: str, training: bool) -> None:
    rows = _rows_module(kind, prior).train(training)
    padding = _padding([4, 1, 6], 6)
    scores = torch.randn(3, 2, 6, 6, requires_grad=True)
    out = rows(scores, torch.randn(3, 2, 6, 4), padding)
    assert torch.all(out.masked_select(padding.expand_as(out)) == 0)
    assert torch.allclose(out.sum(-1), torch.ones(3, 2, 6), atol=1e-6)
    if training:  # no NaN reaches any gradient from the padded entries
        (out[..., 0].sum() + rows.pop_kl()).backward()
        assert torch.isfinite(scores.grad).all()
        assert torch.all(scores.grad.masked_select(padding.expand_as(scores)) == 0)


@pytest.mark.parametrize("kind", ["dirichlet", "weibull", "lognormal"])
def test_mean_rows_of_a_padded_batch_equal_the_trimmed_sequences(kind: str) -> None:
    rows = _rows_module(kind, "uniform").eval()
    rows.use_mean = True
    lengths, t = [3, 6], 6
    scores = torch.randn(2, 2, t, t)
    out = rows(scores, None, _padding(lengths, t))
    for i, n in enumerate(lengths):
        alone = rows(scores[i:i + 1, :, :n, :n])
        assert torch.allclose(out[i, :, :n, :n], alone[0], atol=1e-6)


def test_the_fused_padded_kl_matches_the_reference() -> None:
    """dirichlet_rows_and_kl with ``keep`` against torch's KL of each real row's Dirichlet."""
    g = torch.Generator().manual_seed(1)
    lengths, t = [4, 7, 1], 7
    alpha = torch.rand(3, 2, t, t, generator=g) * 3 + 0.05
    beta = torch.rand(3, 2, 1, t, generator=g) + 0.5
    keep = ~_padding(lengths, t)
    rows, kl = dirichlet_rows_and_kl(alpha, beta, keep)
    want = sum(
        torch.distributions.kl_divergence(
            torch.distributions.Dirichlet(alpha[i, :, :n, :n]),
            torch.distributions.Dirichlet(beta[i, :, :, :n].expand(2, n, n)),
        ).sum()
        for i, n in enumerate(lengths)
    )
    assert torch.allclose(kl, want, rtol=1e-5)
    assert torch.all(rows.masked_select(~keep.expand_as(rows)) == 0)
    # and against the closed form of this module on the trimmed rows
    assert torch.allclose(
        kl, sum(dirichlet_kl(alpha[i, :, :n, :n], beta[i, :, :, :n]).sum()
                for i, n in enumerate(lengths)), rtol=1e-5)


def test_the_torch_sampler_path_agrees_on_padded_batches() -> None:
    fused = DirichletRows(2, 4, init_concentration=2.0).train()
    reference = DirichletRows(2, 4, init_concentration=2.0, sampler="torch").train()
    reference.load_state_dict(fused.state_dict())
    padding = _padding([3, 5], 5)
    scores = torch.randn(2, 2, 5, 5)
    fused(scores, None, padding)
    reference(scores, None, padding)
    assert torch.allclose(fused.pop_kl(), reference.pop_kl(), rtol=1e-5)


def test_padded_samples_are_the_dirichlet_of_the_real_keys() -> None:
    """Monte Carlo: mean and variance of the sampled rows (both samplers, and the gradient-free
    path) against Dir(alpha_real)'s closed forms."""
    alpha = torch.tensor([2.0, 0.5, 1.5, 0.7, 3.0])
    keep = torch.tensor([True, True, True, False, False])
    real = alpha[:3]
    a0 = real.sum()
    mean = real / a0
    var = mean * (1 - mean) / (a0 + 1)
    n = 40_000
    torch.manual_seed(0)
    batch = alpha.expand(n, 5)
    draws = {
        "fused": dirichlet_rows_and_kl(batch.clone().requires_grad_(), None, keep)[0].detach(),
        "no_grad": sample_dirichlet(batch, keep),
    }
    for name, x in draws.items():
        assert torch.all(x[:, 3:] == 0), name
        se = (var / n).sqrt()
        assert torch.all((x[:, :3].mean(0) - mean).abs() < 4 * se), name
        assert torch.allclose(x[:, :3].var(0), var, rtol=0.05), name


def _padded_task() -> Task:
    g = torch.Generator().manual_seed(0)
    n, t = 48, 8
    x = torch.randint(1, 12, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    x[torch.arange(t)[None, :] >= lengths[:, None]] = 0
    y = (x[:, 0] % 3).long()
    split = Split(x, y)
    return Task("toy", "tokens", 3, split, split, split, vocab_size=12, padding_id=0)


@pytest.mark.parametrize("method", [DirichletAttention(), BAMAttention(),
                                    DirichletAttention(prior="contextual", sampler="torch"),
                                    BAMAttention(distribution="lognormal", prior="contextual")])
def test_attention_space_methods_fit_and_predict_on_padded_text(method) -> None:
    task = _padded_task()
    ctx = FitContext(
        model=ModelConfig(d_model=16, depth=2, heads=2),
        training=TrainingConfig(epochs=2, batch_size=16),
        evaluation=EvaluationConfig(mc_samples=3),
        seed=0,
    )
    method.fit(task, ctx)
    probs = method.predict(task.test.x)
    assert probs.shape == (3, 48, 3) and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(-1), torch.ones(3, 48), atol=1e-5)
    # a padded sequence predicts what its trimmed self predicts (at the mean rows)
    method.deterministic = True
    trimmed_len = int((task.test.x[0] != 0).sum())
    full = method.predict(task.test.x[:1])
    alone = method.predict(task.test.x[:1, :trimmed_len])
    assert torch.allclose(full, alone, atol=1e-5)
