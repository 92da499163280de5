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
and its gradient share psi(alpha) with that gradient (:func:`gamma_functions`), so sampling
and KL are one autograd function.
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
    inverse_softplus,
    predict_batched,
    reusing_input_prefix,
    train_classifier,
)
from bayesbench.models import SoftmaxRows, TransformerClassifier
from bayesbench.task import Inputs, Task

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


_MIN_ASYMPTOTIC = 6.0
"""The asymptotic series of the gamma functions are used at y >= 6 (truncation < 1e-8)."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _horner(x: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """``c0 + x (c1 + x (c2 + ...))``."""
    out = x * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        out.add_(c).mul_(x)
    return out.add_(coefficients[0])


def gamma_functions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log Gamma(x), psi(x), psi'(x))`` for x > 0, vectorized, sharing one shift.

    With ``y = x + n`` (n the fewest steps making every y >= 6; none when ``min(x) >= 6``):
    ``f(x) = f(y) - sum_{k<n} (term at x + k)`` by the recurrences ``Gamma(x + 1) = x Gamma(x)``,
    ``psi(x + 1) = psi(x) + 1/x`` and ``psi'(x + 1) = psi'(x) - 1/x^2``, then the Stirling and
    asymptotic series at y (truncation error < 1e-8). About 2x faster on CPU than
    ``torch.lgamma`` + ``torch.digamma`` + ``torch.polygamma``.
    """
    n = max(0, math.ceil(_MIN_ASYMPTOTIC - float(x.min()))) if x.numel() else 0
    y = x + float(n)
    iy = y.reciprocal()
    iy2 = iy * iy
    log_y = torch.log(y)
    lgamma = (y - 0.5).mul_(log_y).sub_(y).add_(_HALF_LOG_2PI)
    lgamma.addcmul_(iy, _horner(iy2, (1 / 12, -1 / 360, 1 / 1260, -1 / 1680)))
    digamma = log_y.sub_(0.5 * iy).sub_(
        iy2 * _horner(iy2, (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132))
    )
    trigamma = iy * _horner(iy, (1.0, 0.5, 1 / 6))
    trigamma.sub_(iy2 * iy2 * iy * _horner(iy2, (1 / 30, -1 / 42, 1 / 30)))
    product = None
    for k in range(n):
        shifted = x + float(k)
        r = shifted.reciprocal()
        digamma.sub_(r)
        trigamma.addcmul_(r, r)
        # log prod (x + k) in logs of three factors at a time: finite for 1e-38 < x < 1e12
        product = shifted if product is None else product.mul_(shifted)
        if k % 3 == 2 or k == n - 1:
            lgamma.sub_(torch.log(product))
            product = None
    return lgamma, digamma, trigamma


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


def _saddle_point_grad(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dZ/dalpha by Rice's saddle-point expansion, torch's formula for alpha > 8, x >= 0.8.

    Rewritten in ``d = x / alpha - 1`` and ``1 / alpha`` (fewer operations, and with log1p
    accurate in float32: within 2e-5 of torch's float64 evaluation). The lanes with
    ``|d| <= 0.1`` use a polynomial, the others a formula with a pole at d = 0 (moved off for
    the lanes that don't use it); the two are blended with a float mask.
    """
    inv_alpha = alpha.reciprocal()
    d = (x - alpha).mul_(inv_alpha)
    near = torch.sign(0.1 - d.abs()).clamp_(min=0.0)
    t = d + 1.0
    near_value = _horner(inv_alpha, (288.0, 24.0, 1.0)).mul_(
        _horner(t, (1440.0, 3600.0, -720.0)).addcmul_(inv_alpha, _horner(t, (107.0, 318.0, -65.0)))
    ).mul_(1 / 1244160.0)
    d = torch.lerp(d, torch.full_like(d, 0.5), near)
    t = d + 1.0
    r = d.reciprocal().neg_()  # 1 / (1 - t)
    u = torch.log1p(d)  # log t
    g = (d - u).rsqrt_()  # (t - 1 - log t)^(-1/2)
    # x term1 / sqrt(8 alpha) in torch's notation, the powers of sqrt(alpha) cancelled;
    # |u| = sign(t - 1) log t
    inner = u.abs().mul_(g).mul_(g).mul_(g).mul_(1 / math.sqrt(8.0))
    inner.sub_((1.0 + t).mul_(r).mul_(r).mul_(0.5))
    far_value = inner.mul_(inv_alpha).addcmul_(u, r).mul_(t)
    far_value.mul_(_horner(inv_alpha, (1.0, 1 / 12, 1 / 288))).neg_()  # Stirling's factor
    return torch.lerp(far_value, near_value, near)


def _standard_gamma_grad(
    alpha: torch.Tensor,
    x: torch.Tensor,
    log_x: torch.Tensor,
    log_alpha: torch.Tensor,
    digamma_alpha: torch.Tensor,
) -> torch.Tensor:
    """:func:`standard_gamma_grad` given log x, log alpha and psi(alpha).

    The branch that most lanes need is evaluated on every lane (the saddle point when most
    shapes exceed 8, else the rational approximation and the series blended with a float mask:
    ``torch.where`` and bool masks cost about 10x more than ``torch.lerp`` on CPU), inputs
    clamped to its domain so that it stays finite; the minority lanes are overwritten by
    ``torch._standard_gamma_grad`` on that subset.
    """
    large = alpha > 8.0
    if 2 * int(large.sum()) >= alpha.numel():
        out = _saddle_point_grad(alpha, x.clamp(min=0.8))
        others = ~large | (x < 0.8)
    else:
        # rational approximation: alpha <= 8, x >= 0.8
        v = log_alpha.clamp(max=math.log(8.0))
        u = log_x.clamp(min=math.log(0.8)).sub_(v)
        out = _rational_part(v, u, 0).div_(_rational_part(v, u, 4)).exp_()
        # Taylor series of the lower incomplete gamma function, x < 0.8: F = x^alpha series1
        # and -(dF/dalpha) / p = x e^x (series2 - (log x - psi(alpha)) series1)
        xs = x.clamp(max=0.8)
        series1 = alpha.reciprocal()
        series2 = series1 * series1
        power = torch.ones_like(xs)
        factorial = 1.0
        for i in range(1, 6):
            factorial *= -i
            power.mul_(xs)  # x^i; the sign and 1/i! go into the coefficient
            r = (alpha + float(i)).reciprocal_()
            t = power * r
            series1.add_(t, alpha=1.0 / factorial)
            series2.addcmul_(t, r, value=1.0 / factorial)
        log_xs = log_x.clamp(max=math.log(0.8)).sub_(digamma_alpha)
        series = series1.mul_(log_xs).neg_().add_(series2).mul_(xs).mul_(torch.exp(xs))
        out = torch.lerp(out, series, torch.sign(0.8 - x).clamp_(min=0.0))  # x < 0.8
        others = large & (x >= 0.8)
    others = others.view(-1).nonzero().squeeze(-1)
    if others.numel():
        out.view(-1)[others] = torch._standard_gamma_grad(
            alpha.reshape(-1)[others], x.reshape(-1)[others]
        )
    return out


def standard_gamma_grad(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Implicit reparameterization gradient ``dx/dalpha = -(dF/dalpha)(x) / p(x)`` of
    ``x ~ Gamma(alpha, 1)``, for ``alpha >= 1``.

    The maths of ``torch._standard_gamma_grad`` (Taylor series in x for x < 0.8, Rice's
    saddle-point expansion for alpha > 8, Jankowiak & Obermeyer's bivariate rational
    approximation otherwise; within about 2e-4 of the exact gradient) as vectorized tensor
    operations: about twice as fast on CPU as torch's, which runs one element at a time.
    """
    _, digamma, _ = gamma_functions(alpha)
    return _standard_gamma_grad(alpha, x, torch.log(x), torch.log(alpha), digamma)


@torch.no_grad()
def marsaglia_tsang(
    alpha: torch.Tensor, need_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(log Z, Z, E)``: ``Z ~ Gamma(alpha + 1, 1)`` and an independent ``E ~ Exp(1)``,
    elementwise, for ``alpha > 0`` (no gradient).

    Marsaglia & Tsang (2000) for the shape ``a = alpha + 1 >= 1``: with ``d = a - 1/3``,
    ``c = 1 / sqrt(9 d)``, x standard normal and ``v = (1 + c x)^3``, accept ``Z = d v`` when
    ``v > 0`` and ``log U < b(x) = x^2/2 + d - d v + d log v`` (always ``b <= 0``). Given
    acceptance and x, U is uniform on ``(0, e^b)``, so ``E = b - log U`` is Exp(1) and
    independent of Z: the boost variable of :func:`sample_dirichlet` comes free. At least 95%
    of proposals are accepted for a >= 1; the rejected ones are redrawn by
    ``torch._standard_gamma`` (an exact Gamma sampler) with a fresh ``E``.
    ``need_z=False`` returns None for Z (sampling without gradients reads log Z and E only);
    log Z and E, and the random numbers drawn, are the same either way.
    """
    d = alpha + 2.0 / 3.0
    x = torch.randn_like(d)
    log_v = torch.log1p(torch.rsqrt(d).mul_(x).mul_(1.0 / 3.0)).mul_(3.0)  # NaN if 1 + cx <= 0
    v = torch.exp(log_v)
    e = (log_v - v).add_(1.0).mul_(d).addcmul_(x, x, value=0.5)  # b(x)
    e.sub_(torch.log1p(-torch.rand_like(d)))  # log U with U = 1 - rand in (0, 1]: finite
    z = v.mul_(d).clamp_min_(torch.finfo(d.dtype).tiny) if need_z else None
    log_z = log_v.add_(torch.log(d))
    rejected = (~(e > 0)).view(-1).nonzero().squeeze(-1)  # NaN compares False: rejected
    if rejected.numel():
        redrawn = torch._standard_gamma(alpha.reshape(-1)[rejected] + 1.0)
        redrawn.clamp_min_(torch.finfo(redrawn.dtype).tiny)
        if z is not None:
            z.view(-1)[rejected] = redrawn
        log_z.view(-1)[rejected] = redrawn.log()
        e.view(-1)[rejected] = torch.log1p(-torch.rand_like(redrawn)).neg_()
    return log_z, z, e


def _prior_normaliser(beta: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_j log Gamma(beta_j) - log Gamma(beta_0)`` per prior row (keepdim), over the kept
    keys only when ``keep`` (bool, broadcastable to the rows, True at real keys) is given."""
    if keep is None:
        return torch.lgamma(beta).sum(-1, keepdim=True) - torch.lgamma(beta.sum(-1, keepdim=True))
    w = keep.to(beta.dtype)
    return ((torch.lgamma(beta) * w).sum(-1, keepdim=True)
            - torch.lgamma((beta * w).sum(-1, keepdim=True)))


class _DirichletRowsFunction(torch.autograd.Function):
    """``(rows, KL)`` for ``alpha [..., K]``: one reparameterized ``Dir(alpha)`` sample per row
    and ``sum over rows of KL(Dir(alpha) || Dir(beta))`` (0 when beta is None).

    Forward: ``rows = softmax(log Z - E / alpha)``, ``Z ~ Gamma(alpha + 1)``, ``E ~ Exp(1)``
    (:func:`marsaglia_tsang`). Backward::

        d log G / d alpha = (dZ/d alpha') / Z + E / alpha^2     (alpha' = alpha + 1, implicit)
        dKL / d alpha_j   = (alpha_j - beta_j) psi'(alpha_j) - (alpha_0 - beta_0) psi'(alpha_0)
        dKL / d beta_j    = psi(beta_j) - psi(beta_0) - psi(alpha_j) + psi(alpha_0)

    The KL's psi(alpha) also serves the Gamma gradient (psi(alpha') = psi(alpha) + 1/alpha),
    which is why sampling and KL share one function.

    ``keep`` (optional bool, broadcastable to alpha, True at real keys): padded keys get rows
    exactly 0 and stay out of the KL. The kept entries are then a sample of ``Dir(alpha_kept)``
    (normalised Gammas of a subset are the Dirichlet of that subset) and the KL is
    ``KL(Dir(alpha_kept) || Dir(beta_kept))``, summed over the rows of real queries only
    (``keep`` is ``[B, 1, 1, T]``: the same keys for every query, whose own padding it also
    gives); nothing reaches the padded alphas or the padded queries' rows through the KL.
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, beta: torch.Tensor | None,  # type: ignore[override]
                keep: torch.Tensor | None = None):
        log_z, z, e = marsaglia_tsang(alpha)
        inv_alpha = alpha.reciprocal()
        log_g = torch.addcmul(log_z, e, inv_alpha, value=-1.0)
        if keep is not None:  # a Dirichlet's subcomposition is the Dirichlet of the kept keys
            log_g = log_g.masked_fill(~keep, -math.inf)
        rows = log_g.softmax(-1)
        lgamma, digamma, trigamma = gamma_functions(alpha)
        ctx.has_prior = beta is not None
        ctx.has_keep = keep is not None
        real_rows = alpha.new_ones(())
        if keep is None:
            keep = alpha.new_ones((), dtype=torch.bool)
        elif beta is not None:  # the rows of padded queries are read by nothing: not in the KL
            real_rows = keep.transpose(-1, -2).to(alpha.dtype)  # [B, 1, T, 1]
        if beta is None:
            kl = alpha.new_zeros(())
            beta = alpha0 = digamma0 = trigamma0 = alpha.new_zeros(())
        else:
            if not ctx.has_keep:
                alpha0 = alpha.sum(-1, keepdim=True)
                digamma0 = torch.digamma(alpha0)
                trigamma0 = torch.polygamma(1, alpha0)
                kl = (
                    torch.lgamma(alpha0).sum() - lgamma.sum()
                    + _prior_normaliser(beta).expand_as(alpha0).sum()
                    + ((alpha - beta) * (digamma - digamma0)).sum()
                )
            else:
                w = keep.to(alpha.dtype)
                alpha0 = (alpha * w).sum(-1, keepdim=True)
                digamma0 = torch.digamma(alpha0)
                trigamma0 = torch.polygamma(1, alpha0)
                per_row = (
                    torch.lgamma(alpha0) - (lgamma * w).sum(-1, keepdim=True)
                    + _prior_normaliser(beta, keep)
                    + ((alpha - beta) * (digamma - digamma0) * w).sum(-1, keepdim=True)
                )
                kl = (per_row * real_rows).sum()
        ctx.save_for_backward(alpha, rows, log_z, z, e, digamma, trigamma, beta, alpha0,
                              digamma0, trigamma0, inv_alpha, keep, real_rows)
        return rows, kl

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor | None, grad_kl: torch.Tensor | None):  # type: ignore[override]
        (alpha, rows, log_z, z, e, digamma, trigamma, beta, alpha0, digamma0, trigamma0,
         inv_alpha, keep, real_rows) = ctx.saved_tensors
        if grad_rows is None:
            grad_alpha = torch.zeros_like(alpha)
        else:  # softmax's fused backward (the one autograd uses), then through log G
            grad_log_g = torch._softmax_backward_data(grad_rows, rows, -1, rows.dtype)
            # Z ~ Gamma(alpha'), alpha' = alpha + 1, psi(alpha') = psi(alpha) + 1/alpha
            shape = alpha + 1.0
            dz = _standard_gamma_grad(shape, z, log_z, torch.log(shape), digamma + inv_alpha)
            # grad first, so that entries of zero weight (grad 0) stay 0 at tiny alpha
            grad_alpha = grad_log_g * dz.div_(z)
            grad_alpha.addcmul_(grad_log_g.mul_(e).mul_(inv_alpha), inv_alpha)
        grad_beta = None
        if ctx.has_prior and grad_kl is not None:
            w = keep.to(alpha.dtype)
            beta0 = (beta * w).sum(-1, keepdim=True) if ctx.has_keep else beta.sum(-1, keepdim=True)
            kl_grad = (alpha - beta).mul_(trigamma).sub_((alpha0 - beta0) * trigamma0)
            if ctx.has_keep:
                kl_grad = kl_grad * (w * real_rows)
            grad_alpha.addcmul_(kl_grad, grad_kl)
            if ctx.needs_input_grad[1]:
                g = (torch.digamma(beta) - torch.digamma(beta0)) - (digamma - digamma0)
                if ctx.has_keep:
                    g = g * (w * real_rows)
                grad_beta = g.sum_to_size(beta.shape) * grad_kl
        return grad_alpha, grad_beta, None


def dirichlet_rows_and_kl(
    alpha: torch.Tensor, beta: torch.Tensor | None = None, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reparameterized ``Dir(alpha)`` sample per row and the summed closed-form KL to
    ``Dir(beta)`` (see :class:`_DirichletRowsFunction`); ``alpha [..., K]``, beta as in
    :func:`dirichlet_kl` or None (KL = 0); ``keep``: True at the real (unpadded) keys."""
    return _DirichletRowsFunction.apply(alpha, beta, keep)


def sample_dirichlet(alpha: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """One reparameterized sample of ``Dir(alpha)`` per row: ``alpha [..., K] -> [..., K]``.

    ``Dir(alpha) = G / sum G`` with ``G_j = Z_j U_j^(1/alpha_j)``, ``Z_j ~ Gamma(alpha_j + 1)``
    (:func:`marsaglia_tsang`), computed as ``softmax(log Z - E/alpha)``, ``E = -log U``: exact,
    and no Gamma underflows even at ``alpha = 1e-9``. Gradients: implicit through Z, pathwise
    through ``E / alpha``. Without gradients it skips the backward's bookkeeping. ``keep``
    (True at real keys): padded keys get 0 and the rest is a ``Dir(alpha_kept)`` sample.
    """
    if torch.is_grad_enabled() and alpha.requires_grad:
        return dirichlet_rows_and_kl(alpha, None, keep)[0]
    log_z, _, e = marsaglia_tsang(alpha, need_z=False)
    log_g = log_z - e / alpha
    if keep is not None:
        log_g = log_g.masked_fill(~keep, -math.inf)
    return log_g.softmax(-1)


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

    supports_padding = True

    def concentration(
        self, scores: torch.Tensor, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """alpha ``[B, H, T, T]`` of the posterior rows. With ``padding`` (bool ``[B, 1, 1, T]``,
        True at padded keys) the softmax and T count the real keys only (the padded entries
        are ``epsilon``, a placeholder that neither the sample nor the KL reads)."""
        t = scores.shape[-1]
        kappa = F.softplus(self.concentration_logit).view(1, -1, 1, 1)
        if padding is None:
            return kappa * t * scores.softmax(-1) + self.min_concentration
        real = (~padding).sum(-1, keepdim=True).to(scores.dtype)  # [B, 1, 1, 1]
        weights = scores.masked_fill(padding, torch.finfo(scores.dtype).min).softmax(-1)
        return kappa * real * weights + self.min_concentration

    def prior_concentrations(self, keys: torch.Tensor | None, t: int) -> torch.Tensor:
        """beta, ``[T]`` (uniform) or ``[B, H, 1, T]`` (contextual, from the keys)."""
        if self.prior == "uniform":
            return self.concentration_logit.new_full((t,), self.prior_concentration)
        if keys is None:
            raise ValueError("the contextual prior needs the keys")
        logits = torch.einsum("bhtd,hd->bht", keys, self.prior_weight) + self.prior_bias[:, None]
        return (F.softplus(logits) + self.min_concentration).unsqueeze(-2)

    def forward(
        self,
        scores: torch.Tensor,
        keys: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows ``[B, H, T, T]``; with ``padding`` (True at padded keys, ``[B, 1, 1, T]``) each
        row is a Dirichlet over its real keys (0 at padded ones), and so is its KL."""
        alpha = self.concentration(scores, padding)
        keep = None if padding is None else ~padding
        if self.use_mean:
            self.kl = None
            mean = alpha if keep is None else alpha.masked_fill(padding, 0.0)
            return mean / mean.sum(-1, keepdim=True)
        if self.training:
            beta = self.prior_concentrations(keys, scores.shape[-1])
            if self.sampler == "torch":
                return self._torch_rows(alpha, beta, keep)
            rows, self.kl = dirichlet_rows_and_kl(alpha, beta, keep)
            return rows
        self.kl = None
        if self.sampler == "torch":
            return self._torch_rows(alpha, None, keep)
        return sample_dirichlet(alpha, keep)

    def _torch_rows(
        self, alpha: torch.Tensor, beta: torch.Tensor | None, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """The reference path: ``Dirichlet.rsample`` and :func:`dirichlet_kl` (stores the KL
        when beta is given). Padded rows: the subcomposition of a full sample (renormalised
        over the real keys) and the KL of the real keys' Dirichlets, computed on each row's
        real keys alone."""
        rows = torch.distributions.Dirichlet(alpha).rsample()
        if keep is None:
            if beta is not None:
                self.kl = dirichlet_kl(alpha, beta).sum()
            return rows
        rows = rows.masked_fill(~keep, 0.0)
        if beta is not None:
            b, h, t, k = alpha.shape
            full_beta = beta.expand(b, h, 1, k)
            kl = alpha.new_zeros(())
            for i in range(b):  # reference only: each sequence's real queries and keys
                real = keep[i, 0, 0]
                kl = kl + dirichlet_kl(alpha[i][:, real][..., real],
                                       full_beta[i][..., real]).sum()
            self.kl = kl
        return rows / rows.sum(-1, keepdim=True)


# --------------------------------------------------------------------------- methods


class VariationalAttentionMethod(Method):
    """Shared fit / predict of attention-space VI: subclasses build the rows modules.

    Trains with :func:`train_classifier` on ``CE + kl_weight * sum(batch rows' KL) / B``
    (module docstring: the minibatch estimate of the per-example negative ELBO).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    requires = frozenset({"rows"})

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
        dims = ctx.backbone.dimensions(task, ctx.model)
        depth = dims.depth
        chosen = set(range(depth)) if self.layers is None else set(self.layers)
        if max(chosen) >= depth:
            raise ValueError(f"{self.name}: layers={self.layers} but the model has {depth} "
                             f"layers (indices 0..{depth - 1})")
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        d_head = dims.d_head

        def rows_factory(layer: int, heads: int) -> nn.Module:
            return self.build_rows(heads, d_head) if layer in chosen else SoftmaxRows()

        self.model = ctx.backbone.build(task, ctx.model, rows_factory=rows_factory)
        self.rows = [m for m in self.model.modules() if isinstance(m, LatentAttentionRows)]
        train_classifier(self.model, task.train, ctx, loss_fn=self.loss)

    def loss(self, model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """Minibatch negative ELBO per example (module docstring)."""
        nll = F.cross_entropy(model(x), y)
        kl = torch.stack([r.pop_kl() for r in self.rows]).sum()
        return nll + self.kl_weight * kl / len(y)

    def predict(self, x: Inputs) -> torch.Tensor:
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
            # the rows are the first random step: what comes before them is shared by the S
            with torch.random.fork_rng(devices=devices), reusing_input_prefix(model):
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
    """Variational Dirichlet posterior over every attention row of the chosen layers,
    trained by implicit reparameterization (module docstring for the maths).

    ``layers``: indices of the layers whose rows are random (None = all; others keep softmax).
    ``prior``: ``uniform`` (``Dir(prior_concentration)`` for every row) or ``contextual``
    (learnt from the keys, initialised at that uniform prior).
    ``kl_weight``: multiplies the per-example KL (1 = the ELBO; ``B / N_train`` reproduces a
    minibatch KL divided by N_train).
    ``init_concentration``: initial ``kappa / T``, the concentration of each key under uniform
    attention (10: a weight of 1/17 fluctuates by about 30%).
    ``min_concentration``: the floor epsilon; it also bounds the KL, which grows like
    ``1/alpha`` as a concentration goes to 0.
    ``samples``: S of the predictive (None = the evaluation's ``mc_samples``);
    ``deterministic``: predict once at the Dirichlet means instead.
    ``sampler``: ``marsaglia_tsang`` (ours) or ``torch`` (``Dirichlet.rsample``, the reference).
    """

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
