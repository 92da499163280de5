"""Last-layer Laplace: MAP, then a Gaussian posterior over the head (MacKay, 1992;
Daxberger et al., 2021), written on torch directly.

Notation. φ̃ = [φ(x), 1] ∈ R^D (D = d + 1) is the pooled feature of the trained MAP network
with a 1 appended for the bias; the head is W̃ = [W, b] ∈ R^{C×D} and θ = vec(W̃) ∈ R^P,
P = C·D, flattened row-major (class-major: index c·D + i). Logits f = W̃ φ̃, so the Jacobian
is J = ∂f/∂θ = I_C ⊗ φ̃ᵀ ∈ R^{C×P}.

Posterior precision (generalized Gauss-Newton = Fisher for the softmax likelihood, which
equals the Hessian of the NLL here because f is linear in θ)::

    Λ(δ) = Σ_n J_nᵀ H_n J_n + δ I = Σ_n H_n ⊗ φ̃_n φ̃_nᵀ + δ I,   H_n = diag(p_n) − p_n p_nᵀ

``hessian`` picks the structure of the GGN term:

- ``full``: the exact GGN, dense P×P.
- ``diag``: its diagonal, ``h[c, i] = Σ_n H_n[c, c] φ̃_{n,i}²``.
- ``kron``: KFAC, ``(G ⊗ A) / N`` with ``G = Σ_n H_n`` (C×C) and ``A = Σ_n φ̃_n φ̃_nᵀ``
  (D×D), i.e. ``N · E[H] ⊗ E[φ̃φ̃ᵀ]``: exact when H_n or φ̃_n is the same for every n
  (laplace-torch's scaling). The prior δ I is added exactly through the eigenbases of G and A.

Prior precision δ (one scalar for all head weights, bias included) maximises the Laplace
evidence of the *training* data, with θ* held at the MAP (as laplace-torch does post hoc)::

    log Z(δ) = log p(D | θ*) − ½ δ ‖θ*‖² + ½ P log δ − ½ log det Λ(δ)

(the 2π terms cancel). With λ_k the eigenvalues of the GGN term, 2δ · d log Z/dδ =
Σ_k λ_k / (λ_k + δ) − δ ‖θ*‖² is strictly decreasing in δ, so log Z is unimodal and the
maximiser is found by bisection of that derivative in log δ. The evidence is a training-data
quantity, so this post-hoc step needs no validation data (and never sees the test set).

Predictive: f(x) ~ N(μ, Σ_f), μ = W̃* φ̃, Σ_f = J Λ⁻¹ Jᵀ (C×C per input).
``link="probit"``: softmax(μ / sqrt(1 + π/8 · diag Σ_f)) (the multi-class probit
approximation), S = 1. ``link="mc"``: S draws f ~ N(μ, Σ_f) → softmax.

The features stay deterministic (eval mode, dropout off): only the head is Bayesian.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod

import torch
from torch.nn import functional as F

from bayesbench.backbones import Backbone
from bayesbench.methods.base import FitContext, Method, predict_batched
from bayesbench.methods.map import MAP
from bayesbench.task import Inputs, Split, Task

HESSIAN_STRUCTURES = ("diag", "kron", "full")
LINKS = ("probit", "mc")
PRIOR_PRECISION_BOUNDS = (1e-6, 1e6)
"""Search range for δ; a maximiser outside it is clamped to the nearest end."""


def augment(features: torch.Tensor) -> torch.Tensor:
    """``[N, d] -> [N, d + 1]`` with a column of ones (the bias input)."""
    return torch.cat([features, features.new_ones(len(features), 1)], dim=1)


def softmax_hessians(probs: torch.Tensor) -> torch.Tensor:
    """Hessians of the softmax NLL w.r.t. the logits, ``diag(p) − ppᵀ``: ``[N, C] -> [N, C, C]``."""
    return torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]


class LastLayerGGN(ABC):
    """The GGN term of the last-layer precision in one structure; the prior is added later.

    Built from ``phi``: augmented features ``[N, D]`` and ``probs``: MAP softmax ``[N, C]``
    (float64). ``prior_precision`` δ must be set before :meth:`function_covariance`.
    """

    structure: str

    def __init__(self, phi: torch.Tensor, probs: torch.Tensor) -> None:
        self.num_data, self.dim = phi.shape
        self.num_classes = probs.shape[1]
        self.prior_precision = 1.0

    @property
    def num_params(self) -> int:
        return self.num_classes * self.dim

    @abstractmethod
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues ``[P]`` of the GGN term (≥ 0), for the evidence."""

    @abstractmethod
    def ggn_matrix(self) -> torch.Tensor:
        """The GGN term as a dense ``[P, P]`` matrix (for tests and inspection)."""

    def precision_matrix(self) -> torch.Tensor:
        """Λ = GGN term + δ I, dense ``[P, P]``."""
        return self.ggn_matrix() + self.prior_precision * torch.eye(
            self.num_params, dtype=torch.float64)

    @abstractmethod
    def function_covariance(self, phi: torch.Tensor) -> torch.Tensor:
        """Σ_f = J Λ⁻¹ Jᵀ for augmented features ``[N, D]``: ``[N, C, C]``."""


class FullGGN(LastLayerGGN):
    """The exact GGN ``Σ_n H_n ⊗ φ̃_n φ̃_nᵀ``, dense, with its eigendecomposition."""

    structure = "full"

    def __init__(self, phi: torch.Tensor, probs: torch.Tensor, chunk: int = 4096) -> None:
        super().__init__(phi, probs)
        c, d = self.num_classes, self.dim
        acc = torch.zeros(c * c, d * d, dtype=torch.float64)
        for p_chunk, f_chunk in zip(probs.split(chunk), phi.split(chunk)):
            h = softmax_hessians(p_chunk).reshape(len(p_chunk), c * c)
            outer = (f_chunk[:, :, None] * f_chunk[:, None, :]).reshape(len(f_chunk), d * d)
            acc += h.T @ outer
        # [C, C, D, D] -> [C, D, C, D]: row index c·D + i, column c'·D + j
        self.ggn = acc.reshape(c, c, d, d).permute(0, 2, 1, 3).reshape(c * d, c * d)
        self.ggn = 0.5 * (self.ggn + self.ggn.T)
        self._eig, self._vec = torch.linalg.eigh(self.ggn)
        self._eig = self._eig.clamp_min(0.0)

    def eigenvalues(self) -> torch.Tensor:
        return self._eig

    def ggn_matrix(self) -> torch.Tensor:
        return self.ggn

    def covariance(self) -> torch.Tensor:
        """Λ⁻¹, dense ``[P, P]``."""
        return (self._vec / (self._eig + self.prior_precision)) @ self._vec.T

    def function_covariance(self, phi: torch.Tensor) -> torch.Tensor:
        c, d = self.num_classes, self.dim
        cov = self.covariance().reshape(c, d, c, d)
        return torch.einsum("ni,aibj,nj->nab", phi, cov, phi)


class DiagGGN(LastLayerGGN):
    """The diagonal of the GGN: ``h[c, i] = Σ_n H_n[c, c] φ̃_{n,i}²``."""

    structure = "diag"

    def __init__(self, phi: torch.Tensor, probs: torch.Tensor) -> None:
        super().__init__(phi, probs)
        self.diag = (probs * (1 - probs)).T @ phi.square()  # [C, D]

    def eigenvalues(self) -> torch.Tensor:
        return self.diag.reshape(-1)

    def ggn_matrix(self) -> torch.Tensor:
        return torch.diag(self.diag.reshape(-1))

    def function_covariance(self, phi: torch.Tensor) -> torch.Tensor:
        var = phi.square() @ (1.0 / (self.diag + self.prior_precision)).T  # [N, C]
        return torch.diag_embed(var)


class KronGGN(LastLayerGGN):
    """KFAC: ``(G ⊗ A) / N``, ``G = Σ_n H_n``, ``A = Σ_n φ̃_n φ̃_nᵀ`` (module docstring)."""

    structure = "kron"

    def __init__(self, phi: torch.Tensor, probs: torch.Tensor) -> None:
        super().__init__(phi, probs)
        self.G = softmax_hessians(probs).sum(0)
        self.A = phi.T @ phi
        g, self._u = torch.linalg.eigh(0.5 * (self.G + self.G.T))
        a, self._v = torch.linalg.eigh(0.5 * (self.A + self.A.T))
        self._g, self._a = g.clamp_min(0.0), a.clamp_min(0.0)

    def eigenvalues(self) -> torch.Tensor:
        return (torch.outer(self._g, self._a) / self.num_data).reshape(-1)

    def ggn_matrix(self) -> torch.Tensor:
        return torch.kron(self.G, self.A) / self.num_data

    def function_covariance(self, phi: torch.Tensor) -> torch.Tensor:
        # Σ_f = U diag(m) Uᵀ, m_i = Σ_j (φ̃·v_j)² / (g_i a_j / N + δ)
        inv = 1.0 / (torch.outer(self._g, self._a) / self.num_data + self.prior_precision)
        m = (phi @ self._v).square() @ inv.T  # [N, C]
        return (self._u * m[:, None, :]) @ self._u.T


GGN_STRUCTURES: dict[str, type[LastLayerGGN]] = {
    "full": FullGGN, "diag": DiagGGN, "kron": KronGGN,
}


def build_ggn(structure: str, phi: torch.Tensor, probs: torch.Tensor) -> LastLayerGGN:
    """The last-layer GGN of ``structure`` (one of :data:`HESSIAN_STRUCTURES`)."""
    return GGN_STRUCTURES[structure](phi.double(), probs.double())


def log_marginal_likelihood(
    log_likelihood: float, theta_sq_norm: float, eigenvalues: torch.Tensor, delta: float
) -> float:
    """``log p(D|θ*) − ½ δ ‖θ*‖² + ½ P log δ − ½ Σ_k log(λ_k + δ)`` (2π terms cancel)."""
    lam = eigenvalues.double()
    return float(log_likelihood - 0.5 * delta * theta_sq_norm
                 + 0.5 * len(lam) * math.log(delta) - 0.5 * torch.log(lam + delta).sum())


def optimize_prior_precision(
    theta_sq_norm: float,
    eigenvalues: torch.Tensor,
    bounds: tuple[float, float] = PRIOR_PRECISION_BOUNDS,
    iterations: int = 100,
) -> float:
    """argmax_δ of :func:`log_marginal_likelihood` within ``bounds``.

    Bisection in log δ on ``q(δ) = Σ_k λ_k / (λ_k + δ) − δ ‖θ*‖²`` (= 2δ · d log Z / dδ),
    which is strictly decreasing, so its root is the unique maximiser.
    """
    lam = eigenvalues.double()

    def q(log_delta: float) -> float:
        delta = math.exp(log_delta)
        return float((lam / (lam + delta)).sum()) - delta * theta_sq_norm

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if q(lo) <= 0:
        return bounds[0]
    if q(hi) >= 0:
        return bounds[1]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if q(mid) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def probit_predictive(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Multi-class probit: ``softmax(μ / sqrt(1 + π/8 · diag Σ_f))``; ``[N, C], [N, C, C]``
    -> ``[N, C]``."""
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    return (mean / torch.sqrt(1 + math.pi / 8 * var)).softmax(-1)


def monte_carlo_predictive(
    mean: torch.Tensor, cov: torch.Tensor, samples: int, generator: torch.Generator
) -> torch.Tensor:
    """``samples`` draws ``f ~ N(μ, Σ_f)`` -> softmax: ``[S, N, C]``."""
    jitter = 1e-10 * torch.eye(cov.shape[-1], dtype=cov.dtype)
    chol, _ = torch.linalg.cholesky_ex(cov + jitter)
    eps = torch.randn(samples, *mean.shape, generator=generator, dtype=mean.dtype)
    return (mean + torch.einsum("nab,snb->sna", chol, eps)).softmax(-1)


BACKBONES = ("map", "dirichlet_attention", "bam_attention")


def _attention_backbone(name: str, params: dict) -> Method:
    from bayesbench.methods.bam_attention import BAMAttention
    from bayesbench.methods.dirichlet_attention import DirichletAttention

    cls = {"dirichlet_attention": DirichletAttention, "bam_attention": BAMAttention}[name]
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"backbone_params for {name}: {exc}") from None


class Laplace(MAP):
    """MAP, then a last-layer Laplace posterior (module docstring for the maths).

    ``hessian``: ``"kron"`` (KFAC), ``"diag"`` or ``"full"`` GGN.
    ``link``: ``"probit"`` (S = 1) or ``"mc"`` (S = ``samples``, default the evaluation's
    ``mc_samples``). ``prior_precision``: None maximises the training evidence; a number
    fixes δ. The fit's extra cost over MAP is kept in :attr:`posterior_seconds`.

    ``backbone``: the network the head sits on. ``"map"`` (default) trains a MAP network;
    ``"dirichlet_attention"`` or ``"bam_attention"`` trains that attention-space method
    (``backbone_params`` are its parameters) and puts the Laplace posterior on its head, with
    the features taken at the mean attention rows, so they stay deterministic as the Laplace
    maths assumes. This combines attention-space and last-layer weight-space inference.
    """

    name = "laplace"
    description = "MAP + last-layer Laplace (GGN: kron/diag/full), prior precision by evidence"

    def __init__(
        self,
        hessian: str = "kron",
        link: str = "probit",
        samples: int | None = None,
        prior_precision: float | None = None,
        backbone: str = "map",
        backbone_params: dict | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}")
        if backbone == "map" and backbone_params:
            raise ValueError("backbone_params needs an attention-space backbone; map takes none")
        # an attention-space backbone is built now so that its parameters are checked now
        self.backbone = None if backbone == "map" else _attention_backbone(
            backbone, dict(backbone_params or {}))
        if hessian not in HESSIAN_STRUCTURES:
            raise ValueError(f"hessian must be one of {', '.join(HESSIAN_STRUCTURES)}, "
                             f"not {hessian!r}")
        if link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, not {link!r}")
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        if prior_precision is not None and not prior_precision > 0:
            raise ValueError("prior_precision must be positive (or omitted to fit it)")
        self.hessian = hessian
        self.link = link
        self.samples = samples
        self.prior_precision = prior_precision
        self.ggn: LastLayerGGN | None = None
        self.posterior_seconds = 0.0
        self.log_evidence = float("nan")

    def check_backbone(self, backbone: Backbone) -> str | None:
        # the posterior sits on the head, over the pooled features
        return backbone.unsupported({"features"} | ({"rows"} if self.backbone else set()))

    def fit(self, task: Task, ctx: FitContext) -> None:
        if self.backbone is None:
            super().fit(task, ctx)
        else:
            self.backbone.fit(task, ctx)
            self.ctx, self.model = ctx, self.backbone.model
            for rows in self.backbone.rows:  # deterministic features: mean attention rows
                rows.use_mean = True
        t0 = time.perf_counter()
        self.fit_posterior(task.train)
        self.posterior_seconds = time.perf_counter() - t0

    @torch.no_grad()
    def _head_weights(self) -> torch.Tensor:
        """W̃ = [W, b] ``[C, D]``, float64 on CPU (the posterior maths runs there)."""
        head = self.model.head  # type: ignore[union-attr]
        return torch.cat([head.weight, head.bias[:, None]], dim=1).double().cpu()  # [C, D]

    def _features(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None, "call fit() first"
        self.model.eval()
        return predict_batched(lambda xb: self.model.features(xb)[None], x,
                               self.ctx.evaluation.batch_size, self.ctx.device)[0]

    def fit_posterior(self, train: Split) -> None:
        """GGN on the training split, then δ by the evidence (or the fixed value)."""
        phi = augment(self._features(train.x).double())
        theta = self._head_weights()
        logits = phi @ theta.T
        self.ggn = build_ggn(self.hessian, phi, logits.softmax(-1))
        log_lik = -float(F.cross_entropy(logits, train.y, reduction="sum"))
        sq_norm = float(theta.square().sum())
        delta = self.prior_precision or optimize_prior_precision(sq_norm, self.ggn.eigenvalues())
        self.ggn.prior_precision = delta
        self.log_evidence = log_marginal_likelihood(log_lik, sq_norm, self.ggn.eigenvalues(),
                                                    delta)

    def diagnostics(self) -> dict[str, float]:
        """The prior precision used (chosen by the evidence unless fixed), the training log
        evidence at it, and the posterior fit's seconds."""
        assert self.ggn is not None, "call fit() first"
        return {"prior_precision": float(self.ggn.prior_precision),
                "log_evidence": self.log_evidence, "posterior_seconds": self.posterior_seconds}

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.ggn is not None and self.model is not None and self.ctx is not None, \
            "call fit() first"
        theta = self._head_weights()
        gen = torch.Generator().manual_seed(self.ctx.seed)
        s = self.samples or self.ctx.evaluation.mc_samples
        self.model.eval()

        def sample_fn(xb: Inputs) -> torch.Tensor:
            phi = augment(self.model.features(xb).double().cpu())  # type: ignore[union-attr]
            mean, cov = phi @ theta.T, self.ggn.function_covariance(phi)  # type: ignore
            if self.link == "probit":
                return probit_predictive(mean, cov)[None]
            return monte_carlo_predictive(mean, cov, s, gen)

        return predict_batched(sample_fn, x, self.ctx.evaluation.batch_size, self.ctx.device)

    def num_parameters(self) -> int:
        # the MAP network, the unique entries of the head's posterior precision, and δ
        assert self.ggn is not None, "call fit() first"
        p, c, d = self.ggn.num_params, self.ggn.num_classes, self.ggn.dim
        extra = {"full": p * (p + 1) // 2, "diag": p,
                 "kron": c * (c + 1) // 2 + d * (d + 1) // 2}[self.hessian]
        return super().num_parameters() + extra + 1
