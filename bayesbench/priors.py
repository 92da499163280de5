"""Weight priors: a first-class axis of the benchmark (Cinquin et al., 2021, claim 2).

Every prior here is a zero-mean, factorised, symmetric density over single weights, and
``scale`` scales it: ``w = scale * w0`` with ``w0`` from the unit-scale base density. So
sweeping ``prior_scale`` means the same thing for every family.

- ``gaussian(scale)``: ``N(0, scale^2)``.
- ``laplace(scale)``: ``p(w) = exp(-|w| / b) / (2 b)``, ``b = scale`` (std ``scale * sqrt(2)``).
- ``student_t(df, scale)``: location 0, scale ``scale``, ``df`` degrees of freedom (heavy
  tails; std ``scale * sqrt(df / (df - 2))`` for ``df > 2``).
- ``gaussian_mixture(scale_small, scale_large, weight)``: Blundell et al.'s (2015) scale
  mixture ``weight * N(0, scale_large^2) + (1 - weight) * N(0, scale_small^2)``; ``weight``
  is the probability of the *large* (slab) component, Blundell's pi.

KL from a diagonal Gaussian ``q = prod_i N(mu_i, sigma_i^2)`` (summed over weights):

- Gaussian prior: closed form
  ``KL = sum_i log(s / sigma_i) + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2``.
- Every other prior: Monte Carlo. ``KL = -H[q] - E_q[log p(w)]`` with the Gaussian entropy
  ``H[q] = sum_i 1/2 log(2 pi e sigma_i^2)`` exact and the cross term estimated with
  ``K`` reparameterised draws ``w = mu + sigma * eps``:
  ``KL_hat = -H[q] - (1/K) sum_k sum_i log p(mu_i + sigma_i eps_ik)``.
  It is unbiased and differentiable in (mu, sigma); only the cross term is noisy, so the
  estimate is exact in sigma's entropy and has low variance when sigma is small.

>>> p = make_prior("laplace", 0.5)
>>> round(float(p.log_prob(torch.tensor(1.0))), 4)  # -log(2 * 0.5) - 1 / 0.5
-2.0
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import distributions as D
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

PRIOR_FAMILIES = ("gaussian", "laplace", "student_t", "gaussian_mixture")
"""Names :func:`make_prior` accepts."""


class Prior(ABC):
    """A factorised zero-mean prior over weights.

    ``log_prob(w)`` is elementwise (same shape as ``w``); ``sample(shape)`` draws from the
    global torch RNG (seed it with ``torch.manual_seed``); ``kl(mu, sigma)`` is
    ``KL(N(mu, diag sigma^2) || prior)`` summed over all elements, closed form when
    :attr:`has_closed_form_kl` else Monte Carlo (module docstring).
    """

    name: str
    has_closed_form_kl: bool = False

    @abstractmethod
    def distribution(self, device: torch.device | None = None) -> D.Distribution:
        """The scalar torch distribution (batch shape ``[]``), parameters on ``device``."""

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """Elementwise log-density ``log p(w)``, shaped like ``w``."""
        return self.distribution(w.device).log_prob(w)

    def sample(self, shape: Sequence[int] | torch.Size) -> torch.Tensor:
        """Independent draws shaped ``shape`` (float32)."""
        return self.distribution().sample(torch.Size(shape)).float()

    def kl(self, mu: torch.Tensor, sigma: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``KL(q || p)`` summed over elements, ``q = N(mu, sigma^2)`` elementwise.

        Closed form where it exists, else :meth:`kl_monte_carlo` with ``num_samples`` draws.
        """
        return self.kl_monte_carlo(mu, sigma, num_samples)

    def kl_softplus(self, mus: Sequence[torch.Tensor], rhos: Sequence[torch.Tensor],
                    num_samples: int = 1) -> torch.Tensor:
        """``KL(q || p)`` summed over several tensors of a mean-field Gaussian ``q``, each
        ``N(mu, softplus(rho)^2)`` elementwise (how :class:`BayesianLinear` stores q)."""
        if len(mus) != len(rhos):
            raise ValueError(f"{len(mus)} means but {len(rhos)} rhos")
        return torch.stack([self.kl(mu, F.softplus(rho), num_samples)
                            for mu, rho in zip(mus, rhos)]).sum()

    def kl_monte_carlo(self, mu: torch.Tensor, sigma: torch.Tensor,
                       num_samples: int = 1) -> torch.Tensor:
        """Unbiased estimate ``-H[q] - (1/K) sum_k sum_i log p(mu_i + sigma_i eps_ik)``
        (exact Gaussian entropy, Monte Carlo cross term; differentiable in mu and sigma)."""
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        entropy = (0.5 * math.log(2 * math.pi * math.e) + torch.log(sigma)).sum()
        eps = torch.randn((num_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        cross = self.log_prob(mu + sigma * eps).sum() / num_samples
        return -entropy - cross

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in vars(self).items()
                         if isinstance(v, (int, float)))
        return f"{self.name}({args})"


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


class GaussianPrior(Prior):
    """``N(0, scale^2)``; closed-form KL from a Gaussian."""

    name = "gaussian"
    has_closed_form_kl = True

    def __init__(self, scale: float) -> None:
        self.scale = _positive(scale, "gaussian prior scale")

    def distribution(self, device: torch.device | None = None) -> D.Distribution:
        return D.Normal(0.0, self.scale, validate_args=False)

    def kl(self, mu: torch.Tensor, sigma: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``sum_i log(s / sigma_i) + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2`` (exact)."""
        s2 = self.scale**2
        return (math.log(self.scale) - torch.log(sigma)
                + (sigma.square() + mu.square()) / (2 * s2) - 0.5).sum()


    def kl_softplus(self, mus: Sequence[torch.Tensor], rhos: Sequence[torch.Tensor],
                    num_samples: int = 1) -> torch.Tensor:
        """The closed form of :meth:`kl`, over all tensors at once (:class:`GaussianKL`)."""
        if len(mus) != len(rhos):
            raise ValueError(f"{len(mus)} means but {len(rhos)} rhos")
        return GaussianKL.apply(self.scale, len(mus), *mus, *rhos)


class GaussianKL(torch.autograd.Function):
    """``sum log(s / sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2`` with ``sigma = softplus(rho)``,
    over every element of several (mu, rho) tensor pairs, in one pass over their
    concatenation.

    Same value and gradients as autograd through :meth:`GaussianPrior.kl` per tensor, whose
    chain of small operations (forward and backward, for each of a model's dozens of weight
    and bias tensors, every step) cost MFVI about a tenth of its training time. The gradients
    are closed-form: ``d/dmu = mu / s^2`` (the prior acts as weight decay on the means) and
    ``d/drho = (sigma / s^2 - 1 / sigma) * sigmoid(rho)``.

    ``apply(scale, n, *mus, *rhos)`` with ``n`` tensors of each.
    """

    @staticmethod
    def forward(ctx, scale: float, n: int, *tensors: torch.Tensor) -> torch.Tensor:
        mus, rhos = tensors[:n], tensors[n:]
        mu = torch.cat([t.reshape(-1) for t in mus])
        rho = torch.cat([t.reshape(-1) for t in rhos])
        sigma = F.softplus(rho)
        kl = ((sigma.dot(sigma) + mu.dot(mu)) / (2 * scale**2) - sigma.log().sum()
              + mu.numel() * (math.log(scale) - 0.5))
        ctx.save_for_backward(mu, rho, sigma)
        ctx.scale = scale
        ctx.shapes = [t.shape for t in mus]
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        mu, rho, sigma = ctx.saved_tensors
        c = grad / ctx.scale**2
        grad_mu = mu * c
        grad_rho = (sigma * c).sub_(grad / sigma).mul_(rho.sigmoid())
        sizes = [math.prod(shape) for shape in ctx.shapes]

        def unflatten(flat: torch.Tensor) -> list[torch.Tensor]:
            return [part.view(shape) for part, shape in zip(flat.split(sizes), ctx.shapes)]

        return None, None, *unflatten(grad_mu), *unflatten(grad_rho)


class LaplacePrior(Prior):
    """``exp(-|w| / scale) / (2 scale)``; Monte Carlo KL."""

    name = "laplace"

    def __init__(self, scale: float) -> None:
        self.scale = _positive(scale, "laplace prior scale")

    def distribution(self, device: torch.device | None = None) -> D.Distribution:
        return D.Laplace(0.0, self.scale, validate_args=False)


class StudentTPrior(Prior):
    """Student-t with ``df`` degrees of freedom, location 0, scale ``scale``; Monte Carlo KL."""

    name = "student_t"

    def __init__(self, df: float, scale: float) -> None:
        self.df = _positive(df, "student_t prior df")
        self.scale = _positive(scale, "student_t prior scale")

    def distribution(self, device: torch.device | None = None) -> D.Distribution:
        return D.StudentT(self.df, 0.0, self.scale, validate_args=False)


class GaussianMixturePrior(Prior):
    """``weight * N(0, scale_large^2) + (1 - weight) * N(0, scale_small^2)`` (Blundell et al.,
    2015: a spike at ``scale_small`` and a slab at ``scale_large``); Monte Carlo KL."""

    name = "gaussian_mixture"

    def __init__(self, scale_small: float, scale_large: float, weight: float) -> None:
        self.scale_small = _positive(scale_small, "gaussian_mixture scale_small")
        self.scale_large = _positive(scale_large, "gaussian_mixture scale_large")
        if self.scale_small > self.scale_large:
            raise ValueError(f"gaussian_mixture needs scale_small <= scale_large, got "
                             f"{scale_small!r} > {scale_large!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not 0.0 < weight < 1.0:
            raise ValueError(f"gaussian_mixture weight (probability of the large component) "
                             f"must be in (0, 1), got {weight!r}")
        self.weight = float(weight)

    def distribution(self, device: torch.device | None = None) -> D.Distribution:
        return D.MixtureSameFamily(
            D.Categorical(probs=torch.tensor([1.0 - self.weight, self.weight], device=device),
                          validate_args=False),
            D.Normal(torch.zeros(2, device=device),
                     torch.tensor([self.scale_small, self.scale_large], device=device),
                     validate_args=False),
            validate_args=False,
        )


def gaussian(scale: float) -> GaussianPrior:
    return GaussianPrior(scale)


def laplace(scale: float) -> LaplacePrior:
    return LaplacePrior(scale)


def student_t(df: float, scale: float) -> StudentTPrior:
    return StudentTPrior(df, scale)


def gaussian_mixture(scale_small: float, scale_large: float, weight: float
                     ) -> GaussianMixturePrior:
    return GaussianMixturePrior(scale_small, scale_large, weight)


def make_prior(name: str, scale: float = 1.0, *, df: float = 3.0, mixture_ratio: float = 0.01,
               mixture_weight: float = 0.5) -> Prior:
    """The prior ``name`` at ``scale``.

    ``df``: Student-t degrees of freedom. For ``gaussian_mixture``, ``scale`` is the large
    (slab) component's scale, ``mixture_ratio`` = scale_small / scale_large in (0, 1] and
    ``mixture_weight`` the large component's probability; other families ignore these.
    Raises :class:`ValueError` naming the bad argument.

    >>> make_prior("gaussian_mixture", 1.0, mixture_ratio=0.1, mixture_weight=0.25)
    gaussian_mixture(scale_small=0.1, scale_large=1, weight=0.25)
    """
    if name == "gaussian":
        return gaussian(scale)
    if name == "laplace":
        return laplace(scale)
    if name == "student_t":
        return student_t(df, scale)
    if name == "gaussian_mixture":
        scale = _positive(scale, "gaussian_mixture scale")
        if isinstance(mixture_ratio, bool) or not isinstance(mixture_ratio, (int, float)) \
                or not 0.0 < mixture_ratio <= 1.0:
            raise ValueError(f"gaussian_mixture mixture_ratio (scale_small / scale_large) must "
                             f"be in (0, 1], got {mixture_ratio!r}")
        return gaussian_mixture(scale * mixture_ratio, scale, mixture_weight)
    import difflib

    close = difflib.get_close_matches(str(name), PRIOR_FAMILIES, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"unknown prior {name!r}; {hint}choose one of {', '.join(PRIOR_FAMILIES)}")
