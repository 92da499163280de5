"""A mean-field Gaussian linear layer (shared by weight-space methods; not a method itself).

Posterior ``q(W, b) = prod_ij N(mu_ij, sigma_ij^2) * prod_j N(mu_j, sigma_j^2)`` with
``sigma = softplus(rho)``, so sigma stays positive under unconstrained optimisation. (An
``exp(log_sigma)`` parameterisation trains the same while sigma is small but lets sigma grow
faster once it passes about 0.5: on mnist1d, where MFVI's sigmas reach that, it ended with 40 %
larger sigmas and lower accuracy, so the layer keeps softplus.) The bias is Bayesian too,
under the same prior as the weights (every parameter of the layer has a posterior; a
deterministic bias would be a MAP parameter without a prior term).

Ways to run the layer:

- ``sample = True`` with ``estimator = "local"`` (the layer's default): the local
  reparameterization trick (Kingma, Salimans & Welling, 2015). For ``y = x W^T + b`` with
  independent Gaussian weights, each output is Gaussian with ``E[y] = x mu_W^T + mu_b`` and
  ``Var[y] = x^2 (sigma_W^2)^T + sigma_b^2``, so ``y = E[y] + sqrt(Var[y]) * eps``,
  ``eps ~ N(0, 1)`` drawn per output: lower-variance gradients, as if every row of ``x`` had
  its own weight draw. For token inputs ``x: [B, T, in]`` every token gets its own noise: each
  activation's marginal is exact, but the correlation between tokens of one sequence, which
  share one weight draw in the model, is dropped (a biased estimate of the ELBO's expected
  log-likelihood, the usual price of LRT in sequence models). Costs a second matmul and
  ``B*T*out`` normal draws per layer. Forward and backward are written out in
  :class:`LocalReparameterization` (same numbers as autograd through the formula above, about
  half the elementwise passes; ``tests/test_mfvi.py`` checks its gradients against autograd).
  With ``bf16_variance`` (default) the three matmuls of the variance path (``x^2 s2^T`` and its
  two gradients) run in bfloat16 where that is fast: float32 inputs on a CPU with AMX tiles
  (Intel Sapphire Rapids and later; about 3x faster than float32 there). CPUs with AVX512-BF16
  but no AMX (AMD Zen 4) multiply bfloat16 too, but at these widths the two conversions cost
  more than the faster matmul saves (mfvi on a width-32 BERT: 1.81x map with it, 1.53x
  without, on an AMD EPYC), so they stay in float32. The std they give
  differs from float32's by about 0.1 % (``tests/test_mfvi.py`` bounds it), far below the
  Monte Carlo noise it scales; means and their gradients stay in float32. Elsewhere (float64,
  CUDA, CPUs without AMX) everything stays in the input's precision.
- ``sample = True`` with ``estimator = "shared"``: Blundell et al.'s original estimator, one
  draw ``W = mu + sigma * eps`` per forward pass shared by every example and token: unbiased
  for sequences and cheap (one matmul, ``out*in`` draws), but noisier gradients. ``mfvi``'s
  default since its version 4 (:mod:`bayesbench.methods.mfvi` gives the measurements).
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

from bayesbench.methods.base import inverse_softplus
from bayesbench.priors import Prior

ESTIMATORS = ("local", "shared")
"""How a training forward pass samples: local reparameterization, or one shared weight draw."""

VARIANCE_FLOOR = 1e-16
"""Added to every output variance so ``1/sqrt(Var[y])`` stays finite for an all-zero input."""


def fast_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices fast enough to pay for the conversions:
    AMX tiles (AVX512-BF16 alone is not; module docstring)."""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return all(probe is not None and probe() for probe in probes)
    except RuntimeError:
        return False


FAST_BF16_MATMUL = fast_bf16_matmul()


def variance_dtype(x: torch.Tensor, bf16_variance: bool) -> torch.dtype:
    """The dtype the variance path's matmuls use for input ``x`` (module docstring)."""
    if (bf16_variance and FAST_BF16_MATMUL and x.dtype == torch.float32
            and x.device.type == "cpu"):
        return torch.bfloat16
    return x.dtype


def _variance_and_slope(rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``softplus(rho)^2`` and half its derivative, ``softplus(rho) * sigmoid(rho)``."""
    sigma = F.softplus(rho)
    return sigma.square(), sigma.mul_(rho.sigmoid())


class LocalReparameterization(torch.autograd.Function):
    """``y = x mu^T + mu_b + sqrt(x^2 s2^T + s2_b) * eps`` with ``s2 = softplus(rho)^2`` and a
    fresh ``eps ~ N(0, 1)`` per output (global torch RNG), differentiable in ``x``, the means
    and the rhos.

    Backward, with ``t = g * eps / sqrt(Var[y])`` (saved from the forward as ``eps / std``)
    and ``h = softplus(rho) * sigmoid(rho)`` (half of ``d s2 / d rho``):
    ``dx = g mu + x * (t s2)``, ``dmu = g^T x``, ``dmu_b = sum g``,
    ``drho = (t^T x^2) * h``, ``drho_b = (sum t) * h_b`` (the 1/2 of the square root's
    derivative cancels the 2 of ``d s2 / d rho``).

    ``variance_dtype``: the dtype of the three matmuls with ``x^2`` or ``s2`` (see
    :func:`variance_dtype`); their results return to ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor,
                weight_rho: torch.Tensor, bias_rho: torch.Tensor,
                variance_dtype: torch.dtype) -> torch.Tensor:
        batch_shape = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        weight_var, weight_slope = _variance_and_slope(weight_rho)
        bias_var, bias_slope = _variance_and_slope(bias_rho)
        out = torch.addmm(bias_mu, x2d, weight_mu.t())
        x_sq = x2d.square().to(variance_dtype)
        weight_var = weight_var.to(variance_dtype)
        std = (x_sq @ weight_var.t()).to(x.dtype).add_(bias_var.add_(VARIANCE_FLOOR)).sqrt_()
        eps = torch.randn_like(out)
        out.addcmul_(std, eps)
        eps_over_std = eps.div_(std)
        ctx.save_for_backward(x2d, x_sq, eps_over_std, weight_mu, weight_var, weight_slope,
                              bias_slope)
        ctx.x_shape = x.shape
        return out.view(*batch_shape, out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2d, x_sq, eps_over_std, weight_mu, weight_var, weight_slope, bias_slope = \
            ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        t = g * eps_over_std
        t_low = t.to(weight_var.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight_mu).addcmul_(x2d, (t_low @ weight_var).to(g.dtype))
            grad_x = grad_x.view(ctx.x_shape)
        grad_weight_mu = g.t() @ x2d
        grad_bias_mu = g.sum(0)
        grad_weight_rho = (t_low.t() @ x_sq).to(g.dtype).mul_(weight_slope)
        grad_bias_rho = t.sum(0).mul_(bias_slope)
        return grad_x, grad_weight_mu, grad_bias_mu, grad_weight_rho, grad_bias_rho, None


class BayesianLinear(nn.Module):
    """Mean-field Gaussian ``in_features -> out_features`` layer (module docstring).

    Means are initialised like :class:`torch.nn.Linear` (U(-1/sqrt(in), 1/sqrt(in))), so the
    posterior mean starts where a MAP network starts; every sigma starts at ``init_sigma``.

    ``bf16_variance``: the local estimator's variance path in bfloat16 where that is fast
    (module docstring).

    x: ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, prior: Prior,
                 init_sigma: float = 1e-3, estimator: str = "local",
                 bf16_variance: bool = True) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
        self.estimator = estimator
        self.bf16_variance = bf16_variance
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
        return LocalReparameterization.apply(x, self.weight_mu, self.bias_mu,
                                             self.weight_rho, self.bias_rho,
                                             variance_dtype(x, self.bf16_variance))

    @torch.no_grad()
    def load_linear(self, layer: nn.Linear) -> None:
        """Start the posterior mean at ``layer``'s weights (a pretrained layer this one
        replaces; no bias: 0), the sigmas where they are."""
        self.weight_mu.copy_(layer.weight)
        if layer.bias is None:
            self.bias_mu.zero_()
        else:
            self.bias_mu.copy_(layer.bias)

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_mu, self.bias_mu

    def rhos(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconstrained parameters of the stds, ``sigma = softplus(rho)``."""
        return self.weight_rho, self.bias_rho

    def kl(self, num_samples: int = 1) -> torch.Tensor:
        """``KL(q || prior)`` summed over weights and biases (closed form for a Gaussian
        prior, else a fresh ``num_samples``-draw Monte Carlo estimate; see
        :mod:`bayesbench.priors`)."""
        return self.prior.kl_softplus(self.means(), self.rhos(), num_samples)

    @torch.no_grad()
    def draw_sample(self, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw ``(W, b) = (mu + sigma * eps_W, mu_b + sigma_b * eps_b)`` (W's noise first)."""
        def draw(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return mu + sigma * eps

        return (draw(self.weight_mu, self.weight_sigma), draw(self.bias_mu, self.bias_sigma))

    def freeze(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Use this ``(W, b)`` (e.g. from :meth:`draw_sample`) until :meth:`unfreeze`."""
        self._frozen = (weight, bias)

    def freeze_sample(self, generator: torch.Generator | None = None) -> None:
        """Draw ``W = mu + sigma * eps`` (and b) once and use it until :meth:`unfreeze`."""
        self.freeze(*self.draw_sample(generator))

    def unfreeze(self) -> None:
        self._frozen = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"prior={self.prior!r}, estimator={self.estimator}"
