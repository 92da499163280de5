"""A mean-field Gaussian linear layer (shared by weight-space methods; not a method itself).

Posterior ``q(W, b) = prod_ij N(mu_ij, sigma_ij^2) * prod_j N(mu_j, sigma_j^2)`` with
``sigma = exp(log_sigma)``, so sigma stays positive under unconstrained optimisation. (For the
small sigmas a posterior over network weights has, ``softplus(rho) ~= exp(rho)``, so this is
the usual ``softplus`` parameterisation in the regime that matters, minus two elementwise
operations per use.) The bias is Bayesian too, under the same prior as the weights (every
parameter of the layer has a posterior; a deterministic bias would be a MAP parameter without a
prior term).

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
  ``B*T*out`` normal draws per layer. Forward and backward are written out in
  :class:`LocalReparameterization` (same numbers as autograd through the formula above, about
  half the elementwise passes; ``tests/test_mfvi.py`` checks its gradients against autograd).
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
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from bayesbench.priors import Prior

ESTIMATORS = ("local", "shared")
"""How a training forward pass samples: local reparameterization, or one shared weight draw."""

VARIANCE_FLOOR = 1e-16
"""Added to every output variance so ``1/sqrt(Var[y])`` stays finite for an all-zero input."""


class LocalReparameterization(torch.autograd.Function):
    """``y = x mu^T + mu_b + sqrt(x^2 s2^T + s2_b) * eps`` with ``s2 = exp(2 log_sigma)`` and a
    fresh ``eps ~ N(0, 1)`` per output (global torch RNG), differentiable in ``x``, the means
    and the log-stds.

    Backward, with ``t = g * eps / sqrt(Var[y])`` (saved from the forward as ``eps / std``):
    ``dx = g mu + x * (t s2)``, ``dmu = g^T x``, ``dmu_b = sum g``,
    ``dlog_sigma = (t^T x^2) * s2``, ``dlog_sigma_b = (sum t) * s2_b`` (the 1/2 of the square
    root's derivative cancels the 2 of ``d s2 / d log_sigma = 2 s2``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor,
                weight_log_sigma: torch.Tensor, bias_log_sigma: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        weight_var = weight_log_sigma.mul(2).exp_()
        bias_var = bias_log_sigma.mul(2).exp_()
        out = torch.addmm(bias_mu, x2d, weight_mu.t())
        x_sq = x2d.square()
        std = torch.addmm(bias_var + VARIANCE_FLOOR, x_sq, weight_var.t()).sqrt_()
        eps = torch.randn_like(out)
        out.addcmul_(std, eps)
        eps_over_std = eps.div_(std)
        ctx.save_for_backward(x2d, x_sq, eps_over_std, weight_mu, weight_var, bias_var)
        ctx.x_shape = x.shape
        return out.view(*batch_shape, out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2d, x_sq, eps_over_std, weight_mu, weight_var, bias_var = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        t = g * eps_over_std
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight_mu).addcmul_(x2d, t @ weight_var).view(ctx.x_shape)
        grad_weight_mu = g.t() @ x2d
        grad_bias_mu = g.sum(0)
        grad_weight_log_sigma = (t.t() @ x_sq).mul_(weight_var)
        grad_bias_log_sigma = t.sum(0).mul_(bias_var)
        return grad_x, grad_weight_mu, grad_bias_mu, grad_weight_log_sigma, grad_bias_log_sigma


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
        if not init_sigma > 0:
            raise ValueError(f"init_sigma must be positive, got {init_sigma!r}")
        self.estimator = estimator
        self.in_features, self.out_features = in_features, out_features
        self.prior = prior
        bound = 1.0 / math.sqrt(in_features)
        log_sigma = math.log(init_sigma)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound,
                                                                                      bound))
        self.weight_log_sigma = nn.Parameter(torch.full((out_features, in_features), log_sigma))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_log_sigma = nn.Parameter(torch.full((out_features,), log_sigma))
        self.sample = True
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def weight_sigma(self) -> torch.Tensor:
        return self.weight_log_sigma.exp()

    @property
    def bias_sigma(self) -> torch.Tensor:
        return self.bias_log_sigma.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:
            return F.linear(x, *self._frozen)
        if not self.sample:
            return F.linear(x, self.weight_mu, self.bias_mu)
        if self.estimator == "shared":
            weight = self.weight_mu + self.weight_sigma * torch.randn_like(self.weight_mu)
            bias = self.bias_mu + self.bias_sigma * torch.randn_like(self.bias_mu)
            return F.linear(x, weight, bias)
        return LocalReparameterization.apply(x, self.weight_mu, self.bias_mu,
                                             self.weight_log_sigma, self.bias_log_sigma)

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_mu, self.bias_mu

    def log_sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_log_sigma, self.bias_log_sigma

    def kl(self, num_samples: int = 1) -> torch.Tensor:
        """``KL(q || prior)`` summed over weights and biases (closed form for a Gaussian
        prior, else a fresh ``num_samples``-draw Monte Carlo estimate; see
        :mod:`bayesbench.priors`)."""
        return self.prior.kl_log_sigma(self.means(), self.log_sigmas(), num_samples)

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
