r"""Attention-space variational inference with Dirichlet rows (Cinquin et al., 2021).

Each attention row is a point on the simplex, so it gets a Dirichlet posterior. In the chosen
layers, the softmax row of query i in head h is replaced by a sample

.. math::

    a_{hi} \sim q(a_{hi} \mid x) = \mathrm{Dir}(\alpha_{hi}), \qquad
    \alpha_{hij} = \kappa_h \, \mathrm{softmax}_j(s_{hi\cdot})_j + \epsilon, \qquad
    \kappa_h = T \, \mathrm{softplus}(\rho_h),

with ``s`` the scaled dot-product scores ``[B, H, T, T]``, T the number of keys, ``rho_h`` a
learnt scale per head (initialised so that ``softplus(rho_h) = init_concentration``) and
``epsilon = min_concentration`` a floor that keeps every concentration positive. The
posterior mean is ``(kappa softmax(s) + epsilon) / (kappa + T epsilon)`` (softmax attention
as ``epsilon -> 0``); ``kappa`` sets the spread (per key, ``kappa / T`` is the concentration a
uniform row would have). Scaling by T keeps that meaning across sequence lengths.

Prior per row, ``p(a_{hi}) = Dir(beta)``:

- ``uniform``: ``beta_j = prior_concentration`` for every key (1 = uniform on the simplex);
- ``contextual``: ``beta_{hj} = softplus(w_h . k_{hj} + b_h) + epsilon``, a learnt linear map
  of key j alone (the same prior for every query of the row's head; it depends on the input
  through the keys, never on the query). Initialised at ``w = 0``,
  ``softplus(b) = prior_concentration``, i.e. at the uniform prior.

Objective. The rows are *local* latent variables (one set per input), so the ELBO of the
training set is ``sum_n E_q[log p(y_n | x_n, a_n)] - KL(q(a_n | x_n) || p(a_n | x_n))``.
Divided by N_train it is a mean over examples, and its minibatch estimate (one sample of the
rows per step, gradients by implicit reparameterization) is

.. math::

    \mathcal{L} = \frac{1}{B} \sum_{n \in \text{batch}} \mathrm{CE}_n
        + \lambda \, \frac{1}{B} \sum_{\text{rows of the batch}} \mathrm{KL}(q \,\|\, p)
    \;=\; \text{CE} + \lambda \, \frac{\sum_{\text{all training rows}} \mathrm{KL}}{N_\text{train}}
    \text{ in expectation,}

``lambda = kl_weight`` (1 = the ELBO; less down-weights the prior). Note the batch's KL is
divided by the batch size B, not by N_train: dividing a minibatch's KL by N_train is the
scaling for *global* (weight-space) variables and would temper the KL by B / N_train.

The KL between Dirichlets is closed form (:func:`dirichlet_kl`).

Sampling (:func:`dirichlet_rows_and_kl`, the same distribution as
``torch.distributions.Dirichlet``, about 2-3x cheaper on CPU). ``Dir(alpha) = G / sum(G)``
with independent ``G_j ~ Gamma(alpha_j, 1)``, and ``G = Z U^{1/alpha}`` with
``Z ~ Gamma(alpha + 1)`` and ``U ~ U(0, 1)`` (exact; Marsaglia & Tsang's boost for small
shapes). All Gammas of a layer are drawn in one vectorized Marsaglia–Tsang pass
(:func:`marsaglia_tsang`), whose acceptance test also yields ``E = -log U`` for free; the rows
are ``softmax(log Z - E / alpha)``, in log space, so no Gamma underflows even at
``alpha = 1e-9``. Gradients are pathwise through ``E / alpha`` and implicit through Z,
``dZ/d alpha' = -(dF/d alpha')(Z) / p(Z)`` at ``alpha' = alpha + 1`` (the maths of
``torch._standard_gamma_grad``, vectorized: :func:`standard_gamma_grad`). The closed-form KL
and its gradient share psi(alpha) and the reciprocals ``1/(alpha + k)`` with that gradient
(:func:`gamma_functions`), so sampling and KL are one autograd function.
``sampler="torch"`` uses ``Dirichlet.rsample`` and autograd through :func:`dirichlet_kl`
instead (the reference; slower on CPU).

Predictive: the mean of S sampled forward passes (``samples``, default the evaluation's
``mc_samples``), ``probs: [S, N, C]``; ``deterministic=True`` predicts once with every row at
its Dirichlet mean (S = 1).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bayesbench.methods.base import (
    FitContext,
    Method,
    count_parameters,
    predict_batched,
    train_classifier,
)
from bayesbench.models import SoftmaxRows, TransformerClassifier, build_model
from bayesbench.task import Task

SAMPLERS = ("marsaglia_tsang", "torch")
"""``marsaglia_tsang``: our vectorized normalised-Gamma sampler (:func:`sample_dirichlet`);
``torch``: ``torch.distributions.Dirichlet.rsample``."""

PRIORS = ("uniform", "contextual")
"""``uniform``: the same Dirichlet for every row; ``contextual``: learnt from the keys."""


# --------------------------------------------------------------------------- maths


def dirichlet_kl(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    r"""Closed-form ``KL(Dir(alpha) || Dir(beta))`` over the last dimension.

    .. math::

        \log\Gamma(\alpha_0) - \sum_j \log\Gamma(\alpha_j) - \log\Gamma(\beta_0)
        + \sum_j \log\Gamma(\beta_j) + \sum_j (\alpha_j - \beta_j)(\psi(\alpha_j) - \psi(\alpha_0))

    with ``alpha_0 = sum_j alpha_j``, ``beta_0 = sum_j beta_j``. alpha: ``[..., K]``; beta
    broadcastable to alpha and full-sized in the last dimension (e.g. ``[K]`` for one prior
    shared by every row, ``[B, H, 1, K]`` for one per head). Returns ``[...]``.

    >>> a, b = torch.tensor([2.0, 1.0, 0.5]), torch.ones(3)
    >>> bool(torch.isclose(dirichlet_kl(a, b), torch.distributions.kl_divergence(
    ...     torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b))))
    True
    """
    if beta.shape[-1] != alpha.shape[-1]:
        raise ValueError(f"beta's last dimension {beta.shape[-1]} must match {alpha.shape[-1]}")
    alpha0 = alpha.sum(-1)
    beta0 = beta.sum(-1)
    cross = ((alpha - beta) * (torch.digamma(alpha) - torch.digamma(alpha0)[..., None])).sum(-1)
    return (
        torch.lgamma(alpha0) - torch.lgamma(alpha).sum(-1)
        - torch.lgamma(beta0) + torch.lgamma(beta).sum(-1)
        + cross
    )


_SHIFT = 6
"""Recurrence steps before the asymptotic series of the gamma functions (truncation < 1e-8)."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _shifted_reciprocals(x: torch.Tensor) -> list[torch.Tensor]:
    """``[1 / (x + k) for k = 0 .. 6]``, shared by the gamma functions and the Gamma gradient."""
    return [x.reciprocal()] + [(x + k).reciprocal_() for k in range(1, _SHIFT + 1)]


def _horner(x: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """``c0 + x (c1 + x (c2 + ...))``."""
    out = x * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        out.add_(c).mul_(x)
    return out.add_(coefficients[0])


def _gamma_functions(
    x: torch.Tensor, recips: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`gamma_functions` from :func:`_shifted_reciprocals` of x."""
    iy = recips[_SHIFT]  # 1 / y, y = x + 6
    iy2 = iy * iy
    y = x + float(_SHIFT)
    log_y = torch.log(y)
    s1 = recips[0].clone()
    s2 = recips[0] * recips[0]
    for r in recips[1:_SHIFT]:
        s1 += r
        s2.addcmul_(r, r)
    # log prod_{k<6} (x + k) as two logs of three factors: finite for 1e-38 < x < 1e12
    log_prod = torch.log(recips[0] * recips[1] * recips[2]).add_(
        torch.log(recips[3] * recips[4] * recips[5])
    )
    lgamma = (
        (y - 0.5).mul_(log_y).sub_(y).add_(_HALF_LOG_2PI).add_(log_prod)
        .addcmul_(iy, _horner(iy2, (1 / 12, -1 / 360, 1 / 1260, -1 / 1680)))
    )
    digamma = log_y.sub_(0.5 * iy).sub_(
        iy2 * _horner(iy2, (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132))
    ).sub_(s1)
    trigamma = s2.add_(iy * _horner(iy, (1.0, 0.5, 1 / 6))).sub_(
        iy2 * iy2 * iy * _horner(iy2, (1 / 30, -1 / 42, 1 / 30))
    )
    return lgamma, digamma, trigamma


def gamma_functions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log Gamma(x), psi(x), psi'(x))`` for x > 0, vectorized, sharing one shift.

    With ``y = x + 6``: ``f(x) = f(y) - sum_{k<6} (term at x + k)`` by the recurrences
    ``Gamma(x + 1) = x Gamma(x)``, ``psi(x + 1) = psi(x) + 1/x``, ``psi'(x + 1) = psi'(x) - 1/x^2``,
    then the Stirling and asymptotic series at y >= 6 (truncation error < 1e-8). About 2x
    faster on CPU than ``torch.lgamma`` + ``torch.digamma`` + ``torch.polygamma``.
    """
    return _gamma_functions(x, _shifted_reciprocals(x))


# Bivariate rational approximation of dZ/dalpha (Jankowiak & Obermeyer, 2018), the
# coefficients torch's _standard_gamma_grad uses: p = sum_i v^i (a_i + b_i u + c_i u^2) with
# the first four columns of the rows (a, b, c), q likewise with the last four.
_RATIONAL_UV = (
    (0.16009398, -0.094634809, 0.025146376, -0.0030648343,
     1.0, 0.32668115, 0.10406089, 0.0014179084),
    (0.53487893, 0.1298071, 0.065735949, -0.0015649758,
     0.16639465, 0.020070113, -0.0035938915, -0.00058392623),
    (0.040121004, -0.0065914022, -0.0026286047, -0.0013441777,
     0.017050642, -0.0021309326, 0.00085092367, -1.5247877e-07),
)


def _rational_part(v: torch.Tensor, u: torch.Tensor, first: int) -> torch.Tensor:
    a0, a1, a2 = (_horner(v, row[first: first + 4]) for row in _RATIONAL_UV)
    return a2.mul_(u).add_(a1).mul_(u).add_(a0)


def _standard_gamma_grad(
    alpha: torch.Tensor,
    x: torch.Tensor,
    log_x: torch.Tensor,
    log_alpha: torch.Tensor,
    digamma_alpha: torch.Tensor,
    recips: list[torch.Tensor],
) -> torch.Tensor:
    """:func:`standard_gamma_grad` given log x, log alpha, psi(alpha) and
    ``recips = [1 / (alpha + k) for k = 0..5]``.

    Lanes with alpha > 8 (Rice's saddle-point expansion in torch) go to
    ``torch._standard_gamma_grad``: on a subset when they are few, everything when they are
    most. The other two branches are evaluated on every lane, inputs clamped to each branch's
    domain so that both stay finite, and blended with a float mask (``torch.where`` and bool
    masks cost about 10x more than ``torch.lerp`` on CPU).
    """
    large = (alpha > 8.0).view(-1).nonzero().squeeze(-1)
    if 2 * large.numel() > alpha.numel():
        return torch._standard_gamma_grad(alpha, x)
    # rational approximation: alpha <= 8, x >= 0.8
    v = log_alpha.clamp(max=math.log(8.0))
    u = log_x.clamp(min=math.log(0.8)).sub_(v)
    out = _rational_part(v, u, 0).div_(_rational_part(v, u, 4)).exp_()
    # Taylor series of the lower incomplete gamma function, x < 0.8: F = x^alpha series1 and
    # -(dF/dalpha) / p = x e^x (series2 - (log x - psi(alpha)) series1) (x^alpha cancels)
    xs = x.clamp(max=0.8)
    series1 = recips[0].clone()
    series2 = recips[0] * recips[0]
    power = torch.ones_like(xs)
    factorial = 1.0
    for i in range(1, 6):
        factorial *= -i
        power.mul_(xs)  # x^i; the sign and 1/i! go into the coefficient
        t = power * recips[i]
        series1.add_(t, alpha=1.0 / factorial)
        series2.addcmul_(t, recips[i], value=1.0 / factorial)
    log_xs = log_x.clamp(max=math.log(0.8)).sub_(digamma_alpha)
    series = series1.mul_(log_xs).neg_().add_(series2).mul_(xs).mul_(torch.exp(xs))
    out = torch.lerp(out, series, torch.sign(0.8 - x).clamp_(min=0.0))  # x < 0.8: series
    if large.numel():
        out.view(-1)[large] = torch._standard_gamma_grad(
            alpha.reshape(-1)[large], x.reshape(-1)[large]
        )
    return out


def standard_gamma_grad(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Implicit reparameterization gradient ``dx/dalpha = -(dF/dalpha)(x) / p(x)`` of
    ``x ~ Gamma(alpha, 1)``, for ``alpha >= 1``.

    The maths of ``torch._standard_gamma_grad`` (Taylor series in x for x < 0.8, Rice's
    saddle-point expansion for alpha > 8, Jankowiak & Obermeyer's bivariate rational
    approximation otherwise; within about 2e-4 of the exact gradient), the last two as
    vectorized tensor operations (about twice as fast on CPU as torch's, which runs one element
    at a time); lanes with alpha > 8 still go to torch's routine.
    """
    recips = _shifted_reciprocals(alpha)
    _, digamma, _ = _gamma_functions(alpha, recips)
    return _standard_gamma_grad(alpha, x, torch.log(x), torch.log(alpha), digamma, recips)


@torch.no_grad()
def marsaglia_tsang(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log Z, Z, E)``: ``Z ~ Gamma(alpha + 1, 1)`` and an independent ``E ~ Exp(1)``,
    elementwise, for ``alpha > 0`` (no gradient).

    Marsaglia & Tsang (2000) for the shape ``a = alpha + 1 >= 1``: with ``d = a - 1/3``,
    ``c = 1 / sqrt(9 d)``, x standard normal and ``v = (1 + c x)^3``, accept ``Z = d v`` when
    ``v > 0`` and ``log U < b(x) = x^2/2 + d - d v + d log v`` (always ``b <= 0``). Given
    acceptance and x, U is uniform on ``(0, e^b)``, so ``E = b - log U`` is Exp(1) and
    independent of Z: the boost variable of :func:`sample_dirichlet` comes free. At least 95%
    of proposals are accepted for a >= 1; the rejected ones are redrawn by
    ``torch._standard_gamma`` (an exact Gamma sampler) with a fresh ``E``.
    """
    d = alpha + 2.0 / 3.0
    x = torch.randn_like(d)
    log_v = torch.log1p(torch.rsqrt(d).mul_(x).mul_(1.0 / 3.0)).mul_(3.0)  # NaN if 1 + cx <= 0
    v = torch.exp(log_v)
    e = (log_v - v).add_(1.0).mul_(d).addcmul_(x, x, value=0.5)  # b(x)
    e.sub_(torch.log1p(-torch.rand_like(d)))  # log U with U = 1 - rand in (0, 1]: finite
    z = v.mul_(d).clamp_min_(torch.finfo(d.dtype).tiny)
    log_z = log_v.add_(torch.log(d))
    rejected = (~(e > 0)).view(-1).nonzero().squeeze(-1)  # NaN compares False: rejected
    if rejected.numel():
        redrawn = torch._standard_gamma(alpha.reshape(-1)[rejected] + 1.0)
        redrawn.clamp_min_(torch.finfo(redrawn.dtype).tiny)
        z.view(-1)[rejected] = redrawn
        log_z.view(-1)[rejected] = redrawn.log()
        e.view(-1)[rejected] = torch.log1p(-torch.rand_like(redrawn)).neg_()
    return log_z, z, e


def _prior_normaliser(beta: torch.Tensor) -> torch.Tensor:
    """``sum_j log Gamma(beta_j) - log Gamma(beta_0)`` per prior row (keepdim)."""
    return torch.lgamma(beta).sum(-1, keepdim=True) - torch.lgamma(beta.sum(-1, keepdim=True))


class _DirichletRowsFunction(torch.autograd.Function):
    """``(rows, KL)`` for ``alpha [..., K]``: one reparameterized ``Dir(alpha)`` sample per row
    and ``sum over rows of KL(Dir(alpha) || Dir(beta))`` (0 when beta is None).

    Forward: ``rows = softmax(log Z - E / alpha)``, ``Z ~ Gamma(alpha + 1)``, ``E ~ Exp(1)``
    (:func:`marsaglia_tsang`). Backward::

        d log G / d alpha = (dZ/d alpha') / Z + E / alpha^2     (alpha' = alpha + 1, implicit)
        dKL / d alpha_j   = (alpha_j - beta_j) psi'(alpha_j) - (alpha_0 - beta_0) psi'(alpha_0)
        dKL / d beta_j    = psi(beta_j) - psi(beta_0) - psi(alpha_j) + psi(alpha_0)

    The KL's psi(alpha) and its reciprocals 1/(alpha + k) also serve the Gamma gradient
    (psi(alpha') = psi(alpha) + 1/alpha), which is why sampling and KL share one function.
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, beta: torch.Tensor | None):  # type: ignore[override]
        log_z, z, e = marsaglia_tsang(alpha)
        recips = _shifted_reciprocals(alpha)
        rows = torch.addcmul(log_z, e, recips[0], value=-1.0).softmax(-1)
        lgamma, digamma, trigamma = _gamma_functions(alpha, recips)
        ctx.has_prior = beta is not None
        if beta is None:
            kl = alpha.new_zeros(())
            beta = alpha0 = digamma0 = trigamma0 = alpha.new_zeros(())
        else:
            alpha0 = alpha.sum(-1, keepdim=True)
            digamma0 = torch.digamma(alpha0)
            trigamma0 = torch.polygamma(1, alpha0)
            kl = (
                torch.lgamma(alpha0).sum() - lgamma.sum()
                + _prior_normaliser(beta).expand_as(alpha0).sum()
                + ((alpha - beta) * (digamma - digamma0)).sum()
            )
        ctx.save_for_backward(alpha, rows, log_z, z, e, digamma, trigamma, beta, alpha0,
                              digamma0, trigamma0, *recips)
        return rows, kl

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor | None, grad_kl: torch.Tensor | None):  # type: ignore[override]
        (alpha, rows, log_z, z, e, digamma, trigamma, beta, alpha0, digamma0, trigamma0,
         *recips) = ctx.saved_tensors
        grad_alpha = torch.zeros_like(alpha)
        if grad_rows is not None:
            grad_log_g = rows * (grad_rows - (rows * grad_rows).sum(-1, keepdim=True))
            # Z ~ Gamma(alpha'), alpha' = alpha + 1: psi(alpha') = psi(alpha) + 1/alpha and
            # 1/(alpha' + k) = recips[k + 1]
            shape = alpha + 1.0
            dz = _standard_gamma_grad(shape, z, log_z, torch.log(shape),
                                      digamma + recips[0], recips[1:])
            # grad first, so that entries of zero weight (grad 0) stay 0 at tiny alpha
            grad_alpha.addcmul_(grad_log_g, dz.div_(z))
            grad_alpha.addcmul_(grad_log_g.mul_(e).mul_(recips[0]), recips[0])
        grad_beta = None
        if ctx.has_prior and grad_kl is not None:
            beta0 = beta.sum(-1, keepdim=True)
            kl_grad = (alpha - beta).mul_(trigamma).sub_((alpha0 - beta0) * trigamma0)
            grad_alpha.add_(kl_grad.mul_(grad_kl))
            if ctx.needs_input_grad[1]:
                g = (torch.digamma(beta) - torch.digamma(beta0)) - (digamma - digamma0)
                grad_beta = g.sum_to_size(beta.shape) * grad_kl
        return grad_alpha, grad_beta


def dirichlet_rows_and_kl(
    alpha: torch.Tensor, beta: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reparameterized ``Dir(alpha)`` sample per row and the summed closed-form KL to
    ``Dir(beta)`` (see :class:`_DirichletRowsFunction`); ``alpha [..., K]``, beta as in
    :func:`dirichlet_kl` or None (KL = 0)."""
    return _DirichletRowsFunction.apply(alpha, beta)


def sample_dirichlet(alpha: torch.Tensor) -> torch.Tensor:
    """One reparameterized sample of ``Dir(alpha)`` per row: ``alpha [..., K] -> [..., K]``.

    ``Dir(alpha) = G / sum G`` with ``G_j = Z_j U_j^(1/alpha_j)``, ``Z_j ~ Gamma(alpha_j + 1)``
    (:func:`marsaglia_tsang`), computed as ``softmax(log Z - E/alpha)``, ``E = -log U``: exact,
    and no Gamma underflows even at ``alpha = 1e-9``. Gradients: implicit through Z, pathwise
    through ``E / alpha``. Without gradients it skips the backward's bookkeeping.
    """
    if torch.is_grad_enabled() and alpha.requires_grad:
        return dirichlet_rows_and_kl(alpha)[0]
    log_z, _, e = marsaglia_tsang(alpha)
    return (log_z - e / alpha).softmax(-1)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0."""
    return y + math.log(-math.expm1(-y))


# --------------------------------------------------------------------------- rows modules


class LatentAttentionRows(nn.Module):
    """Attention rows drawn from a variational distribution q(a | x).

    ``forward(scores [B, H, T, T], keys [B, H, T, d_head]) -> rows [B, H, T, T]``. In training
    mode the forward also stores the summed KL(q || p) of its rows in :attr:`kl` (a scalar
    tensor); :meth:`pop_kl` hands it over and clears it, so no graph outlives its step. With
    :attr:`use_mean` the rows are the mean of q (no sampling, no KL).
    """

    def __init__(self) -> None:
        super().__init__()
        self.kl: torch.Tensor | None = None
        self.use_mean = False

    def pop_kl(self) -> torch.Tensor:
        if self.kl is None:
            raise RuntimeError("no KL stored: call the model in training mode first")
        kl, self.kl = self.kl, None
        return kl


class DirichletRows(LatentAttentionRows):
    """``q(a_hi | x) = Dir(kappa_h softmax(s_hi) + epsilon)`` (module docstring)."""

    def __init__(
        self,
        heads: int,
        d_head: int,
        prior: str = "uniform",
        prior_concentration: float = 1.0,
        init_concentration: float = 10.0,
        min_concentration: float = 0.1,
        sampler: str = "marsaglia_tsang",
    ) -> None:
        super().__init__()
        self.prior = prior
        self.prior_concentration = prior_concentration
        self.min_concentration = min_concentration
        self.sampler = sampler
        self.concentration_logit = nn.Parameter(
            torch.full((heads,), inverse_softplus(init_concentration))
        )
        if prior == "contextual":
            self.prior_weight = nn.Parameter(torch.zeros(heads, d_head))
            self.prior_bias = nn.Parameter(
                torch.full((heads,), inverse_softplus(prior_concentration))
            )

    def concentration(self, scores: torch.Tensor) -> torch.Tensor:
        """alpha ``[B, H, T, T]`` of the posterior rows."""
        t = scores.shape[-1]
        kappa = F.softplus(self.concentration_logit).view(1, -1, 1, 1) * t
        return kappa * scores.softmax(-1) + self.min_concentration

    def prior_concentrations(self, keys: torch.Tensor | None, t: int) -> torch.Tensor:
        """beta, ``[T]`` (uniform) or ``[B, H, 1, T]`` (contextual, from the keys)."""
        if self.prior == "uniform":
            return torch.full((t,), self.prior_concentration, device=self.concentration_logit.device)
        if keys is None:
            raise ValueError("the contextual prior needs the keys")
        logits = torch.einsum("bhtd,hd->bht", keys, self.prior_weight) + self.prior_bias[:, None]
        return (F.softplus(logits) + self.min_concentration).unsqueeze(-2)

    def forward(self, scores: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        alpha = self.concentration(scores)
        if self.use_mean:
            self.kl = None
            return alpha / alpha.sum(-1, keepdim=True)
        if self.training:
            beta = self.prior_concentrations(keys, scores.shape[-1])
            if self.sampler == "torch":
                self.kl = dirichlet_kl(alpha, beta).sum()
                return torch.distributions.Dirichlet(alpha).rsample()
            rows, self.kl = dirichlet_rows_and_kl(alpha, beta)
            return rows
        self.kl = None
        if self.sampler == "torch":
            return torch.distributions.Dirichlet(alpha).rsample()
        return sample_dirichlet(alpha)


# --------------------------------------------------------------------------- methods


class VariationalAttentionMethod(Method):
    """Shared fit / predict of attention-space VI: subclasses build the rows modules.

    Trains with :func:`train_classifier` on ``CE + kl_weight * sum(batch rows' KL) / B``
    (module docstring: the minibatch estimate of the per-example negative ELBO).
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(
        self,
        layers: list[int] | None,
        kl_weight: float,
        samples: int | None,
        deterministic: bool,
    ) -> None:
        if layers is not None:
            if not layers or any(type(i) is not int or i < 0 for i in layers):
                raise ValueError(f"layers must be a non-empty list of layer indices >= 0, "
                                 f"e.g. [0, 1], or null for all; got {layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers lists an index twice: {layers!r}")
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0 (1 = the ELBO), got {kl_weight!r}")
        if samples is not None and samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples!r}")
        self.layers = None if layers is None else list(layers)
        self.kl_weight = float(kl_weight)
        self.samples = samples
        self.deterministic = deterministic
        self.model: TransformerClassifier | None = None
        self.ctx: FitContext | None = None
        self.rows: list[LatentAttentionRows] = []

    def build_rows(self, heads: int, d_head: int) -> LatentAttentionRows:
        raise NotImplementedError

    def fit(self, task: Task, ctx: FitContext) -> None:
        depth = ctx.model.depth
        chosen = set(range(depth)) if self.layers is None else set(self.layers)
        if max(chosen) >= depth:
            raise ValueError(f"{self.name}: layers={self.layers} but the model has {depth} "
                             f"layers (indices 0..{depth - 1})")
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        d_head = ctx.model.d_model // ctx.model.heads

        def rows_factory(layer: int, heads: int) -> nn.Module:
            return self.build_rows(heads, d_head) if layer in chosen else SoftmaxRows()

        self.model = build_model(task, ctx.model, rows_factory=rows_factory)
        self.rows = [m for m in self.model.modules() if isinstance(m, LatentAttentionRows)]
        train_classifier(self.model, task.train, ctx, loss_fn=self.loss)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Minibatch negative ELBO per example (module docstring)."""
        nll = F.cross_entropy(model(x), y)
        kl = torch.stack([r.pop_kl() for r in self.rows]).sum()
        return nll + self.kl_weight * kl / len(y)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``[S, N, C]``: S sampled passes (S = 1 at the mean rows when deterministic).

        The sampling noise is seeded from the fit's seed, so a call is reproducible.
        """
        assert self.model is not None and self.ctx is not None, "call fit() first"
        model, ctx = self.model, self.ctx
        s = 1 if self.deterministic else (self.samples or ctx.evaluation.mc_samples)
        model.eval()
        for r in self.rows:
            r.use_mean = self.deterministic
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(ctx.seed)
                return predict_batched(
                    lambda xb: torch.stack([model(xb).softmax(-1) for _ in range(s)]),
                    x,
                    ctx.evaluation.batch_size,
                    ctx.device,
                )
        finally:
            for r in self.rows:
                r.use_mean = False

    def num_parameters(self) -> int:
        assert self.model is not None, "call fit() first"
        return count_parameters(self.model)


class DirichletAttention(VariationalAttentionMethod):
    """Variational Dirichlet posterior over every attention row of the chosen layers
    (``layers``, None = all), trained by implicit reparameterization (module docstring)."""

    name = "dirichlet_attention"
    description = (
        "attention-space VI: Dirichlet posterior on each attention row, implicit "
        "reparameterization gradients (Cinquin et al., 2021)"
    )

    def __init__(
        self,
        layers: list[int] | None = None,
        prior: str = "uniform",
        prior_concentration: float = 1.0,
        kl_weight: float = 1.0,
        init_concentration: float = 10.0,
        min_concentration: float = 0.1,
        samples: int | None = None,
        deterministic: bool = False,
        sampler: str = "marsaglia_tsang",
    ) -> None:
        super().__init__(layers, kl_weight, samples, deterministic)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        for param, value in (("prior_concentration", prior_concentration),
                             ("init_concentration", init_concentration),
                             ("min_concentration", min_concentration)):
            if not value > 0:
                raise ValueError(f"{param} must be positive, got {value!r}")
        self.prior = prior
        self.prior_concentration = float(prior_concentration)
        self.init_concentration = float(init_concentration)
        self.min_concentration = float(min_concentration)
        self.sampler = sampler

    def build_rows(self, heads: int, d_head: int) -> LatentAttentionRows:
        return DirichletRows(
            heads,
            d_head,
            prior=self.prior,
            prior_concentration=self.prior_concentration,
            init_concentration=self.init_concentration,
            min_concentration=self.min_concentration,
            sampler=self.sampler,
        )
