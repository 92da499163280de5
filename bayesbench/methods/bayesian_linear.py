"""A mean-field Gaussian linear layer (shared by weight-space methods; not a method itself).

Posterior ``q(W, b) = prod_ij N(mu_ij, sigma_ij^2) * prod_j N(mu_j, sigma_j^2)`` with
``sigma = softplus(rho)``, so sigma stays positive under unconstrained optimisation. The bias
is Bayesian too, under the same prior as the weights (every parameter of the layer has a
posterior; a deterministic bias would be a MAP parameter without a prior term).

Ways to run the layer:

- ``sample = True`` with ``estimator = "local"`` (default): the local reparameterization trick
  (Kingma, Salimans & Welling, 2015). For ``y = x W^T + b`` with independent Gaussian weights,
  each output is Gaussian with ``E[y] = x mu_W^T + mu_b`` and
  ``Var[y] = x^2 (sigma_W^2)^T + sigma_b^2``, so ``y = E[y] + sqrt(Var[y]) * eps``,
  ``eps ~ N(0, 1)`` drawn per output: lower-variance gradients, as if every row of ``x`` had
  its own weight draw. For token inputs ``x: [B, T, in]`` every token gets its own noise: each
  activation's marginal is exact, but the correlation between tokens of one sequence, which
  share one weight draw in the model, is dropped (a biased estimate of the ELBO's expected
  log-likelihood, the usual price of LRT in sequence models). Costs a second matmul and
  ``B*T*out`` normal draws per layer.
- ``sample = True`` with ``estimator = "shared"``: Blundell et al.'s original estimator, one
  draw ``W = mu + sigma * eps`` per forward pass shared by every example and token: unbiased
  for sequences and cheap (one matmul, ``out*in`` draws), but noisier gradients.
- ``sample = False``: the posterior mean, ``y = x mu_W^T + mu_b``.
- :meth:`freeze_sample`: one explicit draw used for every input and token until
  :meth:`unfreeze`, i.e. one network from q (how predictions are made).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bayesbench.priors import Prior

ESTIMATORS = ("local", "shared")
"""How a training forward pass samples: local reparameterization, or one shared weight draw."""


def inverse_softplus(sigma: float) -> float:
    """``rho`` with ``softplus(rho) = sigma`` (``log(expm1(sigma))``)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    return math.log(math.expm1(sigma))


class BayesianLinear(nn.Module):
    """Mean-field Gaussian ``in_features -> out_features`` layer (module docstring).

    Means are initialised like :class:`torch.nn.Linear` (U(-1/sqrt(in), 1/sqrt(in))), so the
    posterior mean starts where a MAP network starts; every sigma starts at ``init_sigma``.

    x: ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, prior: Prior,
                 init_sigma: float = 1e-3, estimator: str = "local") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
        self.estimator = estimator
        self.in_features, self.out_features = in_features, out_features
        self.prior = prior
        bound = 1.0 / math.sqrt(in_features)
        rho = inverse_softplus(init_sigma)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound,
                                                                                      bound))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho))
        self.sample = True
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def weight_sigma(self) -> torch.Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor:
        return F.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:
            return F.linear(x, *self._frozen)
        if not self.sample:
            return F.linear(x, self.weight_mu, self.bias_mu)
        if self.estimator == "shared":
            weight = self.weight_mu + self.weight_sigma * torch.randn_like(self.weight_mu)
            bias = self.bias_mu + self.bias_sigma * torch.randn_like(self.bias_mu)
            return F.linear(x, weight, bias)
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        # the tiny constant keeps sqrt's gradient finite should a sigma underflow to zero
        var = F.linear(x.square(), self.weight_sigma.square(), self.bias_sigma.square() + 1e-16)
        return mean + var.sqrt() * torch.randn_like(mean)

    def kl(self, num_samples: int = 1) -> torch.Tensor:
        """``KL(q || prior)`` summed over weights and biases (closed form for a Gaussian
        prior, else a fresh ``num_samples``-draw Monte Carlo estimate; see
        :mod:`bayesbench.priors`)."""
        return (self.prior.kl(self.weight_mu, self.weight_sigma, num_samples)
                + self.prior.kl(self.bias_mu, self.bias_sigma, num_samples))

    @torch.no_grad()
    def freeze_sample(self, generator: torch.Generator | None = None) -> None:
        """Draw ``W = mu + sigma * eps`` (and b) once and use it until :meth:`unfreeze`."""
        def draw(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return mu + sigma * eps

        self._frozen = (draw(self.weight_mu, self.weight_sigma),
                        draw(self.bias_mu, self.bias_sigma))

    def unfreeze(self) -> None:
        self._frozen = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"prior={self.prior!r}, estimator={self.estimator}"
