from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.swag import SWAG, SWAGMoments, collection_positions


def trajectory(num: int = 12, dim: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num, dim)) * rng.uniform(0.1, 2.0, size=dim) + rng.normal(size=dim)


def test_moments_match_numpy_on_a_known_trajectory():
    thetas = trajectory()
    m = SWAGMoments(5, rank=4)
    for t in thetas:
        m.collect(torch.from_numpy(t))
    assert m.count == 12
    np.testing.assert_allclose(m.mean.numpy(), thetas.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.variance().numpy(), thetas.var(0), rtol=1e-10)
    # D: the last 4 snapshots minus the running mean right after each was added
    running = np.cumsum(thetas, 0) / np.arange(1, 13)[:, None]
    np.testing.assert_allclose(m.deviation_matrix().numpy(), (thetas - running)[-4:].T,
                               rtol=1e-10, atol=1e-12)


def test_variance_is_clamped_at_zero_for_a_constant_parameter():
    m = SWAGMoments(2, rank=2)
    for _ in range(3):
        m.collect(torch.tensor([0.1, 1e8]))  # float cancellation could go negative
    assert (m.variance() >= 0).all() and m.variance()[0] < 1e-15


@pytest.mark.parametrize("rank", [0, 4])
def test_samples_have_the_papers_covariance(rank):
    """Maddox et al. (2019), Algorithm 1: θ_SWA + Σ_diag^½ z₁ / √2 + D z₂ / √(2(K − 1)), i.e.
    covariance ½ (Σ_diag + D Dᵀ / (K − 1)); the authors' code: scale = 0.5 times
    (σ z₁ + D z₂ / √(K − 1)). SWAG-diagonal at scale 0.5 is ½ Σ_diag (the authors' code)."""
    thetas = trajectory(seed=1)
    m = SWAGMoments(5, rank=rank)
    for t in thetas:
        m.collect(torch.from_numpy(t))
    var = thetas.var(0)
    if rank:
        dev = (thetas - np.cumsum(thetas, 0) / np.arange(1, 13)[:, None])[-rank:].T
        paper = 0.5 * (np.diag(var) + dev @ dev.T / (rank - 1))
    else:
        paper = 0.5 * np.diag(var)
    np.testing.assert_allclose(m.covariance(0.5).numpy(), paper, rtol=1e-10)
    np.testing.assert_allclose(m.covariance(1.0).numpy(), 2 * paper, rtol=1e-10)
    draws = m.sample(400_000, 0.5, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(draws.mean(0), thetas.mean(0), atol=0.01)
    empirical = np.cov(draws.T)
    np.testing.assert_allclose(empirical, paper, atol=0.01 * np.abs(paper).max())
    # the total variance, the quantity version 1 got wrong by a factor 2
    assert np.trace(empirical) / np.trace(paper) == pytest.approx(1.0, abs=0.01)


def test_collection_positions():
    assert collection_positions(28, 1) == {28}
    assert collection_positions(28, 4) == {7, 14, 21, 28}
    assert collection_positions(5, 10) == {1, 2, 3, 4, 5}


CTX = FitContext(training=TrainingConfig(epochs=2), seed=7)


def test_swag_fit_on_digits(digits_small):
    x = digits_small.test.x
    a = SWAG(start_fraction=0.5, collect_per_epoch=4, rank=3, samples=5)
    a.fit(digits_small, CTX)
    assert a.moments.count == 4  # 1 tail epoch of 256 / 32 = 8 steps, every 2 steps
    assert a.moments.deviation_matrix().shape[1] == 3
    p = a.predict(x)
    assert p.shape == (5, len(x), digits_small.num_classes)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(5, len(x)), atol=1e-5)
    assert not torch.allclose(p[0], p[1])
    # the network itself holds the SWA mean
    flat = torch.nn.utils.parameters_to_vector(a.model.parameters())
    torch.testing.assert_close(flat, a.moments.mean.float())
    b = SWAG(start_fraction=0.5, collect_per_epoch=4, rank=3, samples=5)
    b.fit(digits_small, CTX)
    assert torch.equal(p, b.predict(x))
    assert a.num_parameters() == flat.numel() * (2 + 3)


def test_swag_rejects_bad_parameters():
    for kwargs in ({"start_fraction": 1.0}, {"collect_per_epoch": 0}, {"rank": -1},
                   {"scale": 0.0}, {"swa_lr": 0.0}, {"tail_optimizer": "adam"}):
        with pytest.raises(ValueError):
            SWAG(**kwargs)
