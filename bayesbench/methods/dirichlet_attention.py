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

Sampling. ``Dir(alpha) = G / sum(G)`` with independent ``G_j ~ Gamma(alpha_j, 1)``. We draw
every Gamma of every row, head and layer in one vectorized pass (:func:`sample_dirichlet`):
``G = Z U^{1/alpha}`` with ``Z ~ Gamma(alpha + 1)`` by Marsaglia & Tsang (2000) and
``U ~ U(0, 1)`` (exact, Marsaglia & Tsang's boost for small shapes), kept in log space,
``log G = log Z - E / alpha`` with ``E = -log U ~ Exp(1)``, and normalised by a softmax, so no
Gamma underflows even for ``alpha = 1e-9``. The gradient is pathwise through ``E / alpha`` and
implicit through Z: ``dZ/d alpha = -(dF/d alpha)(Z; alpha + 1) / p(Z; alpha + 1)``
(``torch._standard_gamma_grad``, the same routine torch's Gamma ``rsample`` uses).
``sampler="torch"`` uses ``torch.distributions.Dirichlet.rsample`` instead (same
distribution, slower on CPU).

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
    >>> float(dirichlet_kl(a, b)) == float(torch.distributions.kl_divergence(
    ...     torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b)))
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


def gamma_functions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log Gamma(x), psi(x), psi'(x))`` for x > 0, vectorized, sharing one shift.

    With ``y = x + 6``: ``f(x) = f(y) - sum_{k<6} (term at x + k)`` by the recurrences
    ``Gamma(x + 1) = x Gamma(x)``, ``psi(x + 1) = psi(x) + 1/x``, ``psi'(x + 1) = psi'(x) - 1/x^2``,
    then the Stirling / asymptotic series at y >= 6 (truncation error < 1e-8). About 3x faster
    than ``torch.lgamma`` + ``torch.digamma`` + ``torch.polygamma`` on CPU.
    """
    s1 = x.reciprocal()
    s2 = s1 * s1
    for k in range(1, 6):
        r = (x + k).reciprocal_()
        s1 += r
        s2 += r.mul_(r)
    y = x + 6.0
    iy = y.reciprocal()
    iy2 = iy * iy
    log_y = torch.log(y)
    # log(x (x+1) ... (x+5)) in two halves, so that the products stay finite up to x ~ 1e12
    log_prod = torch.log(x * (x + 1.0) * (x + 2.0)) + torch.log((x + 3.0) * (x + 4.0) * (x + 5.0))
    stirling = iy * (1 / 12 - iy2 * (1 / 360 - iy2 * (1 / 1260 - iy2 / 1680)))
    lgamma = (y - 0.5) * log_y - y + (0.5 * math.log(2 * math.pi)) + stirling - log_prod
    digamma = log_y - 0.5 * iy - iy2 * (
        1 / 12 - iy2 * (1 / 120 - iy2 * (1 / 252 - iy2 * (1 / 240 - iy2 / 132)))
    ) - s1
    trigamma = s2 + iy * (1 + iy * (0.5 + iy * (1 / 6 - iy2 * (1 / 30 - iy2 * (1 / 42 - iy2 / 30)))))
    return lgamma, digamma, trigamma


# Bivariate rational approximation of dZ/dalpha (Jankowiak & Obermeyer, 2018), the
# coefficients torch's _standard_gamma_grad uses: rows multiply u^0, u^1, u^2; columns 0-3 are
# the numerator's powers of v, 4-7 the denominator's.
_RATIONAL_UV = (
    (0.16009398, -0.094634809, 0.025146376, -0.0030648343,
     1.0, 0.32668115, 0.10406089, 0.0014179084),
    (0.53487893, 0.1298071, 0.065735949, -0.0015649758,
     0.16639465, 0.020070113, -0.0035938915, -0.00058392623),
    (0.040121004, -0.0065914022, -0.0026286047, -0.0013441777,
     0.017050642, -0.0021309326, 0.00085092367, -1.5247877e-07),
)


def _rational_part(v: torch.Tensor, u: torch.Tensor, first: int) -> torch.Tensor:
    """sum_i v^i (c0_i + u c1_i + u^2 c2_i), i = 0..3, for the columns first..first+3."""

    def cubic(row: tuple[float, ...]) -> torch.Tensor:
        c = row[first: first + 4]
        return (v * c[3]).add_(c[2]).mul_(v).add_(c[1]).mul_(v).add_(c[0])

    a0, a1, a2 = (cubic(row) for row in _RATIONAL_UV)
    return a2.mul_(u).add_(a1).mul_(u).add_(a0)


def _saddle_point_grad(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dZ/dalpha for alpha > 8 and x >= 0.8 (Rice saddle-point expansion), as torch."""
    u = torch.log(x / alpha)
    a2 = alpha * alpha
    near = (1 + 24 * alpha * (1 + 12 * alpha)) * (
        1440 * a2 + 6 * x * (53 - 120 * x) - 65 * x * x / alpha + alpha * (107 + 3600 * x)
    ) / (1244160 * a2 * a2)
    root = torch.sqrt(8 * alpha)
    diff = alpha - x
    term2 = root / diff
    term3 = (x - alpha - alpha * u).pow(-1.5)
    term23 = torch.where(x < alpha, term2 - term3, term2 + term3)
    term1 = u * term23 - torch.sqrt(2 / alpha) * (alpha + x) / (diff * diff)
    stirling = 1 + 1 / (12 * alpha) * (1 + 1 / (24 * alpha))
    far = -stirling * x * term1 / root
    return torch.where((0.9 * alpha <= x) & (x <= 1.1 * alpha), near, far)


def standard_gamma_grad(alpha: torch.Tensor, x: torch.Tensor, digamma_alpha: torch.Tensor
                        ) -> torch.Tensor:
    """Implicit reparameterization gradient ``dx/dalpha = -(dF/dalpha)(x) / p(x)`` of
    ``x ~ Gamma(alpha, 1)``, for ``alpha >= 1``; ``digamma_alpha = psi(alpha)``.

    The maths of ``torch._standard_gamma_grad`` (a Taylor series in x for x < 0.8, the
    saddle-point expansion for alpha > 8, a bivariate rational approximation otherwise; within
    about 2e-4 of the exact gradient), as vectorized tensor operations: about twice as fast
    on CPU, where torch's runs one element at a time.
    """
    log_x = torch.log(x)
    log_a = torch.log(alpha)
    u = log_x - log_a
    out = _rational_part(log_a, u, 0).div_(_rational_part(log_a, u, 4)).exp_()
    # Taylor series of the regularized lower incomplete gamma function in x
    small = x < 0.8
    xs = torch.where(small, x, 0.5)  # keeps the lanes that don't use the series finite
    numer = -xs
    denom = alpha + 1.0
    series1 = alpha.reciprocal()
    series2 = series1 * series1
    for i in range(1, 6):
        if i > 1:
            numer = numer * xs * (-1.0 / i)
        t = numer / denom
        series1 += t
        series2 += t / denom
        denom = denom + 1.0
    # -(dF/dalpha) / p with F = x^alpha series1 and p = x^(alpha - 1) e^-x: x^alpha cancels
    series = (series2 - (torch.log(xs) - digamma_alpha) * series1).mul_(xs).mul_(torch.exp(xs))
    out = torch.where(small, series, out)
    large = ((alpha > 8.0) & ~small).view(-1).nonzero().squeeze(-1)
    if large.numel():  # few elements: float64 against the cancellations near x = alpha
        out.view(-1)[large] = _saddle_point_grad(
            alpha.view(-1)[large].double(), x.view(-1)[large].double()
        ).to(out.dtype)
    return out


def _marsaglia_tsang_candidates(
    d: torch.Tensor, c: torch.Tensor, draws: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``draws`` proposals per shape: ``(log v, E, accepted)``, each ``[draws, n]``."""
    x = torch.randn((draws, *d.shape), dtype=d.dtype, device=d.device)
    log_v = torch.log1p(c * x).mul_(3.0)  # NaN where 1 + c x <= 0: rejected below
    bound = (log_v - log_v.exp()).add_(1.0).mul_(d).add_(0.5 * x * x)  # log acceptance prob.
    e = bound - torch.rand_like(x).log_()
    return log_v, e, e > 0


@torch.no_grad()
def log_standard_gamma(shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log Z, E)``: ``Z ~ Gamma(shape, 1)`` for ``shape >= 1`` and an independent
    ``E ~ Exp(1)``, elementwise (no gradient).

    Marsaglia & Tsang (2000): with ``d = shape - 1/3``, ``c = 1 / sqrt(9 d)``, x standard
    normal and ``v = (1 + c x)^3``, accept ``Z = d v`` when ``v > 0`` and
    ``log U < b(x) = x^2/2 + d - d v + d log v`` (``b <= 0``). Given acceptance and x, U is
    uniform on ``(0, e^b)``, so ``E = b - log U`` is Exp(1) and independent of Z: the boost
    variable of :func:`sample_dirichlet` comes free. At least 95% of proposals are accepted
    for shape >= 1; the rejected shapes get 8 more proposals at a time (the first accepted
    one is kept) until all are accepted.
    """
    flat = shape.reshape(-1)
    d = flat - 1.0 / 3.0
    c = torch.rsqrt(9.0 * d)
    log_v, e, accepted = (t[0] for t in _marsaglia_tsang_candidates(d, c, 1))
    pending = (~accepted).nonzero().squeeze(-1)
    while pending.numel():
        more_log_v, more_e, more_ok = _marsaglia_tsang_candidates(d[pending], c[pending], 8)
        chosen_log_v, chosen_e = more_log_v[7], more_e[7]
        for i in range(6, -1, -1):  # the first accepted proposal wins
            chosen_log_v = torch.where(more_ok[i], more_log_v[i], chosen_log_v)
            chosen_e = torch.where(more_ok[i], more_e[i], chosen_e)
        log_v[pending] = chosen_log_v
        e[pending] = chosen_e
        pending = pending[~more_ok.any(0)]
    return log_v.add_(torch.log(d)).view(shape.shape), e.view(shape.shape)


def _prior_normaliser(beta: torch.Tensor) -> torch.Tensor:
    """``sum_j log Gamma(beta_j) - log Gamma(beta_0)`` per prior row (keepdim)."""
    return torch.lgamma(beta).sum(-1, keepdim=True) - torch.lgamma(beta.sum(-1, keepdim=True))


class _DirichletRowsFunction(torch.autograd.Function):
    """``(rows, KL)`` for ``alpha [..., K]``: one reparameterized ``Dir(alpha)`` sample per row
    and ``sum over rows of KL(Dir(alpha) || Dir(beta))`` (0 when beta is None).

    Forward: ``log G = log Z - E / alpha``, ``Z ~ Gamma(alpha + 1)``, ``E ~ Exp(1)``
    (:func:`log_standard_gamma`), ``rows = softmax(log G)``. Backward::

        d log G / d alpha = (dZ/d alpha') / Z + E / alpha^2     (alpha' = alpha + 1, implicit)
        dKL / d alpha_j   = (alpha_j - beta_j) psi'(alpha_j) - (alpha_0 - beta_0) psi'(alpha_0)
        dKL / d beta_j    = psi(beta_j) - psi(beta_0) - psi(alpha_j) + psi(alpha_0)

    psi(alpha) serves both the KL and the Gamma gradient's series (psi(alpha') = psi(alpha) +
    1/alpha), which is why sampling and KL share one function.
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, beta: torch.Tensor | None):  # type: ignore[override]
        log_z, e = log_standard_gamma(alpha + 1.0)
        rows = (log_z - e / alpha).softmax(-1)
        lgamma, digamma, trigamma = gamma_functions(alpha)
        ctx.has_prior = beta is not None
        if beta is None:
            ctx.save_for_backward(alpha, rows, log_z, e, digamma)
            return rows, alpha.new_zeros(())
        alpha0 = alpha.sum(-1, keepdim=True)
        lgamma0, digamma0, trigamma0 = gamma_functions(alpha0)
        kl = (
            lgamma0.sum() - lgamma.sum()
            + _prior_normaliser(beta).expand_as(alpha0).sum()
            + ((alpha - beta) * (digamma - digamma0)).sum()
        )
        ctx.save_for_backward(alpha, rows, log_z, e, digamma, beta, alpha0, digamma0,
                              trigamma, trigamma0)
        return rows, kl

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor | None, grad_kl: torch.Tensor | None):  # type: ignore[override]
        alpha, rows, log_z, e, digamma = ctx.saved_tensors[:5]
        grad_alpha = torch.zeros_like(alpha)
        if grad_rows is not None:
            grad_log_g = rows * (grad_rows - (rows * grad_rows).sum(-1, keepdim=True))
            z = log_z.exp().clamp_min_(torch.finfo(log_z.dtype).tiny)
            inv_alpha = alpha.reciprocal()
            dz = standard_gamma_grad(alpha + 1.0, z, digamma + inv_alpha)
            # grad first, so entries with zero weight (grad 0) stay 0 at tiny alpha
            grad_alpha += grad_log_g * dz.div_(z)
            grad_alpha += (grad_log_g * e).mul_(inv_alpha).mul_(inv_alpha)
        grad_beta = None
        if ctx.has_prior and grad_kl is not None:
            beta, alpha0, digamma0, trigamma, trigamma0 = ctx.saved_tensors[5:]
            beta0 = beta.sum(-1, keepdim=True)
            grad_alpha += grad_kl * ((alpha - beta) * trigamma - (alpha0 - beta0) * trigamma0)
            if ctx.needs_input_grad[1]:
                g = torch.digamma(beta) - torch.digamma(beta0) - digamma + digamma0
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
    (Marsaglia–Tsang), computed as ``softmax(log Z - E/alpha)``, ``E = -log U``: exact, and no
    Gamma underflows even at ``alpha = 1e-9``. Gradients: implicit through Z, pathwise
    through ``E / alpha``. Without gradients it skips the backward's bookkeeping.
    """
    if torch.is_grad_enabled() and alpha.requires_grad:
        return dirichlet_rows_and_kl(alpha)[0]
    log_z, e = log_standard_gamma(alpha + 1.0)
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
        init_concentration: float = 1.0,
        min_concentration: float = 1e-4,
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
        init_concentration: float = 1.0,
        min_concentration: float = 1e-4,
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
