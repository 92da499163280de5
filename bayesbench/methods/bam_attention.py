r"""Bayesian Attention Modules (Fan et al., 2020): stochastic unnormalised attention weights.

In the chosen layers, each unnormalised attention weight ``W_hij > 0`` is a sample of a
reparameterizable distribution whose mean follows the scores, and the row is its
normalisation onto the simplex:

.. math::

    E[W_{hij}] = \mathrm{softmax}_j(s_{hi\cdot})_j = \exp(s_{hij}) / \textstyle\sum_l \exp(s_{hil}),
    \qquad a_{hij} = W_{hij} / \textstyle\sum_l W_{hil}.

The mean is ``exp(scores)`` up to a per-row constant, which the normalisation cancels; fixing
it at the softmax makes the KL below well defined (as in the BAM code, which uses the log
softmax as ``phi``).

- ``weibull`` (default): ``W ~ Weibull(k, lambda)``, ``lambda = mean / Gamma(1 + 1/k)``, drawn by
  the inverse CDF of a uniform, ``W = lambda (-log(1 - U))^{1/k}`` (reparameterized; computed
  as ``log W`` and normalised by a softmax). ``k = weibull_shape`` is a fixed hyperparameter:
  the standard deviation of ``log W`` is ``pi / (k sqrt 6)``. Prior ``Gamma(shape = c T m_j,
  rate = c T)`` with prior mean ``m_j`` and ``c = prior_concentration``; normalised
  independent Gammas of a common rate are ``Dir(c T m)``, so the implied prior on the row is
  the Dirichlet ``dirichlet_attention`` uses (``Dir(c, ..., c)`` for the uniform prior).
  KL(Weibull || Gamma) is closed form (:func:`weibull_gamma_kl`, from Zhang et al., 2018, as
  used by BAM).
- ``lognormal``: ``log W ~ N(log mean - sigma^2 / 2, sigma^2)``, ``sigma = lognormal_sigma``;
  prior ``log W ~ N(log m_j - sigma_p^2 / 2, sigma_p^2)``, ``sigma_p = prior_sigma`` (prior mean
  ``m_j`` too); Gaussian KL (:func:`lognormal_kl`).

Prior mean per key: ``uniform``: ``m_j = 1/T``; ``contextual`` (BAM's contextual prior):
``m_hj = softmax_j(w_h . k_hj + b_h)``, a learnt linear map of the keys alone (the same for
every query), initialised at ``w = 0``, i.e. uniform.

Loss, KL scaling and predictive as in :mod:`bayesbench.methods.dirichlet_attention`:
``CE + kl_weight * sum(KL of every weight of the batch) / B`` (the minibatch estimate of the
per-example negative ELBO; the weights are local latent variables), one sample per step;
the predictive is the mean of S sampled passes, or with ``deterministic`` one pass with the
rows at the softmax (BAM's test-time choice).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bayesbench.methods.dirichlet_attention import (
    PRIORS,
    LatentAttentionRows,
    VariationalAttentionMethod,
)

DISTRIBUTIONS = ("weibull", "lognormal")
"""Variational family of the unnormalised weights."""

EULER_GAMMA = 0.5772156649015329


def weibull_gamma_kl(
    k: float | torch.Tensor,
    log_scale: torch.Tensor,
    prior_shape: torch.Tensor,
    prior_rate: float | torch.Tensor,
) -> torch.Tensor:
    r"""``KL(Weibull(k, lambda) || Gamma(alpha, beta))`` elementwise (alpha shape, beta rate).

    .. math::

        \frac{\gamma \alpha}{k} - \alpha \log\lambda + \log k + \beta \lambda \Gamma(1 + 1/k)
        - \gamma - 1 - \alpha \log\beta + \log\Gamma(\alpha)

    with gamma the Euler–Mascheroni constant; ``log_scale = log lambda``.
    """
    k = torch.as_tensor(k, dtype=log_scale.dtype, device=log_scale.device)
    rate = torch.as_tensor(prior_rate, dtype=log_scale.dtype, device=log_scale.device)
    mean = torch.exp(log_scale + torch.lgamma(1 + 1 / k))  # lambda Gamma(1 + 1/k)
    return (
        EULER_GAMMA * prior_shape / k - prior_shape * log_scale + torch.log(k)
        + rate * mean - EULER_GAMMA - 1 - prior_shape * torch.log(rate)
        + torch.lgamma(prior_shape)
    )


def lognormal_kl(
    mu: torch.Tensor, sigma: float, prior_mu: torch.Tensor, prior_sigma: float
) -> torch.Tensor:
    """KL between log-normals = KL between the normals of ``log W``, elementwise."""
    return (
        math.log(prior_sigma / sigma)
        + (sigma**2 + (mu - prior_mu) ** 2) / (2 * prior_sigma**2)
        - 0.5
    )


def log_weibull_sample(log_scale: torch.Tensor, k: float) -> torch.Tensor:
    """``log W`` with ``W ~ Weibull(k, exp(log_scale))`` elementwise, by the inverse CDF of a
    uniform: ``W = lambda (-log(1 - U))^(1/k)`` (reparameterized in ``log_scale``)."""
    exponential = torch.log1p(-torch.rand_like(log_scale)).neg_()
    return log_scale + exponential.clamp_min_(torch.finfo(log_scale.dtype).tiny).log_() / k


class BAMRows(LatentAttentionRows):
    """Rows ``W / sum(W)`` with ``W`` Weibull or log-normal around ``softmax(scores)``."""

    def __init__(
        self,
        heads: int,
        d_head: int,
        distribution: str = "weibull",
        weibull_shape: float = 10.0,
        lognormal_sigma: float = 0.1,
        prior: str = "uniform",
        prior_concentration: float = 1.0,
        prior_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        self.distribution = distribution
        self.weibull_shape = weibull_shape
        self.lognormal_sigma = lognormal_sigma
        self.prior = prior
        self.prior_concentration = prior_concentration
        self.prior_sigma = prior_sigma
        if prior == "contextual":
            self.prior_weight = nn.Parameter(torch.zeros(heads, d_head))
            self.prior_bias = nn.Parameter(torch.zeros(heads))

    def log_prior_mean(
        self,
        keys: torch.Tensor | None,
        t: int | torch.Tensor,
        like: torch.Tensor,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log m, ``[1]`` / ``[B, 1, 1, 1]`` (uniform over ``t`` keys, ``t`` per sequence when
        padded) or ``[B, H, 1, T]`` (contextual, from the keys; a softmax over the real keys
        with log m = 0 as a finite placeholder at padded ones)."""
        if self.prior == "uniform":
            return like.new_full((1,), -math.log(t)) if padding is None else -t.log()
        if keys is None:
            raise ValueError("the contextual prior needs the keys")
        logits = torch.einsum("bhtd,hd->bht", keys, self.prior_weight) + self.prior_bias[:, None]
        if padding is None:
            return logits.log_softmax(-1).unsqueeze(-2)
        lowest = torch.finfo(logits.dtype).min
        return logits.unsqueeze(-2).masked_fill(padding, lowest).log_softmax(-1) \
            .masked_fill(padding, 0.0)

    supports_padding = True

    def forward(
        self,
        scores: torch.Tensor,
        keys: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows ``[B, H, T, T]``. With ``padding`` (bool ``[B, 1, 1, T]``, True at padded keys)
        the weights of padded keys are exactly 0, T counts each sequence's real keys, and the
        KL covers the weights of real (query, key) pairs only: padded entries are computed on
        a finite placeholder (log mean 0, so no inf * 0 reaches a gradient), then their row
        entries are set to exactly 0 and their KL terms dropped, as are padded queries' rows.
        Without ``padding`` nothing is masked (the unpadded operations, bit for bit)."""
        if padding is None:
            log_mean = scores.log_softmax(-1)
        else:
            log_mean = scores.masked_fill(padding, torch.finfo(scores.dtype).min).log_softmax(-1)
        if self.use_mean:
            self.kl = None
            return log_mean.exp()
        if padding is None:
            t: int | torch.Tensor = scores.shape[-1]
        else:
            log_mean = log_mean.masked_fill(padding, 0.0)
            t = (~padding).sum(-1, keepdim=True).to(scores.dtype)  # per sequence, [B, 1, 1, 1]
        if self.distribution == "weibull":
            k = self.weibull_shape
            log_scale = log_mean - math.lgamma(1 + 1 / k)
            log_w = log_weibull_sample(log_scale, k)
        else:
            mu = log_mean - self.lognormal_sigma**2 / 2
            log_w = mu + self.lognormal_sigma * torch.randn_like(scores)
        if self.training:
            log_m = self.log_prior_mean(keys, t, scores, padding)
            if self.distribution == "weibull":
                rate = self.prior_concentration * t
                kl = weibull_gamma_kl(k, log_scale, rate * log_m.exp(), rate)
            else:
                prior_mu = log_m - self.prior_sigma**2 / 2
                kl = lognormal_kl(mu, self.lognormal_sigma, prior_mu, self.prior_sigma)
            if padding is not None:
                kl = kl.masked_fill(padding | padding.transpose(-1, -2), 0.0)  # [B, 1, T, T]
            self.kl = kl.sum()
        else:
            self.kl = None
        if padding is not None:
            log_w = log_w.masked_fill(padding, -math.inf)
        return log_w.softmax(-1)


class BAMAttention(VariationalAttentionMethod):
    """Bayesian Attention Modules in the chosen layers: Weibull or log-normal unnormalised
    weights, Gamma or log-normal prior (module docstring for the maths).

    ``layers``: indices of the layers whose rows are random (None = all).
    ``distribution``: ``weibull`` (shape ``weibull_shape`` = k, fixed) or ``lognormal``
    (log-scale ``lognormal_sigma``, fixed).
    ``prior``: ``uniform`` or ``contextual`` (prior mean from the keys).
    ``prior_concentration``: c of the Gamma prior ``Gamma(c T m_j, c T)`` (the row prior is then
    ``Dir(c T m)``); ``prior_sigma``: log-scale of the log-normal prior.
    ``kl_weight``, ``samples``, ``deterministic``: as in ``dirichlet_attention``.
    """

    name = "bam_attention"
    description = (
        "Bayesian attention modules: Weibull/log-normal attention weights normalised onto the "
        "simplex, contextual prior (Fan et al., 2020)"
    )

    def __init__(
        self,
        layers: list[int] | None = None,
        distribution: str = "weibull",
        weibull_shape: float = 10.0,
        lognormal_sigma: float = 0.1,
        prior: str = "uniform",
        prior_concentration: float = 1.0,
        prior_sigma: float = 1.0,
        kl_weight: float = 1.0,
        samples: int | None = None,
        deterministic: bool = False,
    ) -> None:
        super().__init__(layers, kl_weight, samples, deterministic)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}"
            )
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        for param, value in (("weibull_shape", weibull_shape),
                             ("lognormal_sigma", lognormal_sigma),
                             ("prior_concentration", prior_concentration),
                             ("prior_sigma", prior_sigma)):
            if not value > 0:
                raise ValueError(f"{param} must be positive, got {value!r}")
        self.distribution = distribution
        self.weibull_shape = float(weibull_shape)
        self.lognormal_sigma = float(lognormal_sigma)
        self.prior = prior
        self.prior_concentration = float(prior_concentration)
        self.prior_sigma = float(prior_sigma)

    def build_rows(self, heads: int, d_head: int) -> LatentAttentionRows:
        return BAMRows(
            heads,
            d_head,
            distribution=self.distribution,
            weibull_shape=self.weibull_shape,
            lognormal_sigma=self.lognormal_sigma,
            prior=self.prior,
            prior_concentration=self.prior_concentration,
            prior_sigma=self.prior_sigma,
        )
