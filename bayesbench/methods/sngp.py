"""SNGP: spectral-normalized encoder + random-feature Gaussian-process output layer
(Liu et al., 2020, "Simple and principled uncertainty estimation with deterministic deep
learning via distance awareness").

Two changes to the MAP network make its uncertainty *distance-aware*:

1. **Spectral normalization** of the encoder's linear layers keeps the residual blocks
   (approximately) bi-Lipschitz, so distances between inputs survive into the features.
   SNGP uses a *bounded* normalization: ``W <- W * min(1, c / sigma(W))`` with ``c`` the norm
   bound and ``sigma`` the largest singular value estimated by power iteration; a weight whose
   spectral norm is already below ``c`` is left unchanged (torch's ``spectral_norm`` divides by
   ``sigma`` always, i.e. pins the norm at exactly 1).
2. **A random-feature GP output layer** replaces the dense head. Pooled features ``h`` (already
   layer-normed by the encoder; by default normalized again without an affine map, so the
   length scale keeps its meaning) go through ``D`` fixed random Fourier features
   ``phi(h) = a sqrt(2/D) cos(W h + b)``, ``W_ij ~ N(0, 1/l^2)``, ``b_j ~ U(0, 2 pi)``, so
   ``phi(x)^T phi(y) ~ a^2 exp(-|x-y|^2 / (2 l^2))`` (an RBF kernel of length scale ``l`` and
   amplitude ``a``; Rahimi & Recht, 2007). Logits are ``beta^T phi(h)`` with ``beta [D, C]``
   trained with the rest of the network (no bias: zero-mean GP prior).

After training, a Laplace approximation of the posterior over ``beta`` (prior
``beta_c ~ N(0, I / ridge)``) is computed in one pass over the training data. As in the SNGP
paper's multi-class implementation, every class shares one covariance:

    precision  P = ridge * I + sum_n w_n phi_n phi_n^T            [D, D]
    covariance Sigma = P^{-1}                                      (one Cholesky, float64)
    predictive logits  ~ N(beta^T phi(x), var(x) I_C),  var(x) = phi(x)^T Sigma phi(x)

with ``w_n = 1`` (``precision_weight="unit"``, the default: edward2's Gaussian-likelihood
update that the reference SNGP code uses for softmax classifiers) or ``w_n = p_n (1 - p_n)``
(``"max_prob"``: ``p_n`` the largest softmax probability, the binary-logistic Hessian applied
to the winning class). Far from the training data ``phi(x)`` is orthogonal to every ``phi_n``,
so ``var(x)`` returns to the prior ``k(x, x) / ridge = a^2 / ridge``; near it, ``var`` shrinks.
(edward2 multiplies ``Sigma`` by ``ridge`` as well; the two agree at ``ridge = 1``.)

Why these defaults (digits, default budget, 3 seeds): the reference code uses unscaled cosine
features (``a = sqrt(D/2)``); with ``a = 1`` the GP head's Jacobian is ~10x smaller than a
dense head's, and from the near-collapsed [CLS] features of a fresh encoder training stays on
the loss plateau (2 of 3 seeds at chance after 30 epochs), hence ``a = 20``. With ``a = 20``
``"max_prob"`` weights leave confidently fitted training points out of the precision, the
variance stays near the prior everywhere and the mean-field link flattens every prediction
(ECE ~0.4), hence ``"unit"``. ``l = 4`` beat ``l = 2`` (less stable) and ``l = 8``.

The predictive integrates the Gaussian logits through the softmax (:data:`LINKS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from bayesbench.backbones import Backbone
from bayesbench.methods.base import (
    FitContext,
    Method,
    count_parameters,
    predict_batched,
    train_classifier,
)
from bayesbench.models import LINEAR_SUBSETS, TransformerClassifier
from bayesbench.task import Inputs, Task

ENCODER_ROLES = ("attention.qkv", "attention.out", "mlp.in", "mlp.out")
"""Linear roles that may be spectrally normalized (the head is the GP layer instead)."""

LINKS = {
    "mean_field": "softmax(mu / sqrt(1 + factor * var)): one deterministic predictive, S = 1 "
    "(Lu et al., 2020; factor = pi/8 is the probit approximation)",
    "mc": "softmax of S logit samples ~ N(mu, var I_C) per input: [S, N, C]",
}
"""How Gaussian logits become class probabilities."""

PRECISION_WEIGHTS = {
    "unit": "w_n = 1 (edward2's Gaussian-likelihood update, as in the reference SNGP code)",
    "max_prob": "w_n = p_n (1 - p_n), p_n the largest softmax probability (Laplace, shared "
    "over classes)",
}
"""Per-example weight of ``phi_n phi_n^T`` in the Laplace precision."""


# --------------------------------------------------------------------------- spectral norm


class BoundedSpectralNorm(nn.Module):
    """Parametrization ``W -> W * min(1, bound / sigma)`` of a 2-D weight ``[out, in]``.

    ``sigma = u^T W v`` is the power-iteration estimate of the largest singular value; in
    training mode each forward runs ``power_iterations`` steps first (u, v are buffers, as in
    torch's ``spectral_norm``, and 15 steps run at construction). Gradients flow through
    ``sigma`` only while the weight is being rescaled.
    """

    def __init__(
        self, weight: torch.Tensor, bound: float = 0.95, power_iterations: int = 1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
        self.bound = bound
        self.power_iterations = power_iterations
        self.eps = eps
        out_features, in_features = weight.shape
        self.register_buffer("_u", F.normalize(weight.new_empty(out_features).normal_(), dim=0,
                                               eps=eps))
        self.register_buffer("_v", F.normalize(weight.new_empty(in_features).normal_(), dim=0,
                                               eps=eps))
        self._power_method(weight.detach(), 15)

    @torch.no_grad()
    def _power_method(self, weight: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            self._v = F.normalize(weight.t() @ self._u, dim=0, eps=self.eps)
            self._u = F.normalize(weight @ self._v, dim=0, eps=self.eps)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The current estimate ``u^T W v`` of the largest singular value of ``weight``."""
        return torch.dot(self._u, weight @ self._v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._power_method(weight.detach(), self.power_iterations)
        # u and v are rebound by each power step, never changed in place: no copies needed
        # for the graph of this step
        return weight * torch.clamp(self.bound / self.sigma(weight), max=1.0)


def bounded_spectral_norm(
    module: nn.Module, bound: float = 0.95, power_iterations: int = 1, name: str = "weight"
) -> nn.Module:
    """Register :class:`BoundedSpectralNorm` on ``module.<name>``; returns ``module``."""
    parametrize.register_parametrization(
        module, name, BoundedSpectralNorm(getattr(module, name), bound, power_iterations)
    )
    return module


@torch.no_grad()
def exact_spectral_norms(model: nn.Module) -> None:
    """Set u, v of every :class:`BoundedSpectralNorm` in ``model`` to the top singular pair of
    its current weight (one SVD each), so ``sigma`` is exact from then on.

    During training u, v trail the weight by an optimizer step and converge slowly when the
    top two singular values are close, so ``sigma`` is underestimated and the bound can be
    exceeded by a few percent; the encoder's matrices are small, so an SVD after training
    makes the bound hold exactly for the network that is evaluated.
    """
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            sn = plist[0]  # first in the chain: it sees `original`
            if isinstance(sn, BoundedSpectralNorm):
                u, _, vh = torch.linalg.svd(plist.original.detach(), full_matrices=False)
                sn._u, sn._v = u[:, 0].contiguous(), vh[0].contiguous()


# --------------------------------------------------------------------------- GP maths


def random_fourier_features(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, amplitude: float = 1.0
) -> torch.Tensor:
    """``phi(x) = a sqrt(2/D) cos(x W^T + b)``: x ``[N, d]``, weight ``[D, d]``, bias ``[D]`` ->
    ``[N, D]``. With ``W_ij ~ N(0, 1/l^2)`` and ``b ~ U(0, 2 pi)``,
    ``E[phi(x)^T phi(y)] = a^2 exp(-|x - y|^2 / (2 l^2))``."""
    return amplitude * math.sqrt(2.0 / weight.shape[0]) * torch.cos(x @ weight.t() + bias)


def laplace_precision_weights(logits: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-example weights ``w [N]`` of :data:`PRECISION_WEIGHTS` from logits ``[N, C]``."""
    if weighting == "unit":
        return logits.new_ones(logits.shape[0])
    p = logits.softmax(-1).amax(-1)
    return p * (1 - p)


def mean_field_probs(
    logits: torch.Tensor, variance: torch.Tensor, factor: float = math.pi / 8
) -> torch.Tensor:
    """``softmax(mu / sqrt(1 + factor * var))``: logits ``[N, C]``, variance ``[N]`` -> ``[N, C]``.

    Example: ``mean_field_probs(torch.tensor([[2., 0.]]), torch.tensor([8 / math.pi]))`` is
    ``softmax([2, 0] / sqrt(2))``.
    """
    return (logits / torch.sqrt(1.0 + factor * variance).unsqueeze(-1)).softmax(-1)


def sampled_logit_probs(
    logits: torch.Tensor, variance: torch.Tensor, samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Softmax of ``samples`` draws of ``z ~ N(mu, var I_C)``:
    logits ``[N, C]``, variance ``[N]`` -> ``[S, N, C]``."""
    noise = torch.randn((samples, *logits.shape), generator=generator, device=logits.device,
                        dtype=logits.dtype)
    return (logits + variance.sqrt().unsqueeze(-1) * noise).softmax(-1)


class RandomFeatureGPHead(nn.Module):
    """GP output layer: ``h [B, d] -> logits [B, C]`` through fixed random Fourier features and a
    trained linear map ``beta``; :meth:`fit_covariance` adds the Laplace covariance used by
    :meth:`predictive` (module docstring for the maths)."""

    def __init__(
        self, in_features: int, num_classes: int, num_inducing: int = 1024,
        length_scale: float = 4.0, ridge_penalty: float = 1.0, normalize_input: bool = True,
        precision_weight: str = "unit", amplitude: float = 20.0,
    ) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.ridge_penalty = ridge_penalty
        self.precision_weight = precision_weight
        self.input_norm = (
            nn.LayerNorm(in_features, elementwise_affine=False) if normalize_input
            else nn.Identity()
        )
        # fixed, not trained: buffers
        self.register_buffer("rff_weight", torch.randn(num_inducing, in_features) / length_scale)
        self.register_buffer("rff_bias", torch.rand(num_inducing) * 2 * math.pi)
        self.beta = nn.Linear(num_inducing, num_classes, bias=False)
        # before fit_covariance: the prior covariance I / ridge
        self.register_buffer(
            "covariance", torch.eye(num_inducing, dtype=torch.float64) / ridge_penalty
        )

    def random_features(self, h: torch.Tensor) -> torch.Tensor:
        """``phi(h) [B, D]``."""
        return random_fourier_features(self.input_norm(h), self.rff_weight, self.rff_bias,
                                       self.amplitude)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.beta(self.random_features(h))

    @torch.no_grad()
    def fit_covariance(self, features: Iterable[torch.Tensor]) -> torch.Tensor:
        """Laplace posterior over ``beta`` from batches of pooled training features ``[B, d]``.

        Accumulates ``P = ridge I + sum_n w_n phi_n phi_n^T`` in float64, stores
        ``covariance = P^{-1}`` (Cholesky) and returns ``P [D, D]``.
        """
        d = self.rff_weight.shape[0]
        precision = torch.eye(d, dtype=torch.float64, device=self.rff_weight.device)
        precision *= self.ridge_penalty
        for h in features:
            phi = self.random_features(h)
            w = laplace_precision_weights(self.beta(phi), self.precision_weight)
            phi = phi.double()
            precision += (phi * w.double().unsqueeze(-1)).t() @ phi
        self.covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        return precision

    @torch.no_grad()
    def predictive(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean logits ``[B, C]`` and the (class-shared) logit variance ``[B]``."""
        phi = self.random_features(h)
        phi64 = phi.double()
        var = ((phi64 @ self.covariance) * phi64).sum(-1).clamp_min(0.0)
        return self.beta(phi), var.to(phi.dtype)


# --------------------------------------------------------------------------- the method


def resolve_spectral_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Expand subset names (``attention``, ``mlp``) and check every role; ValueError otherwise."""
    out: list[str] = []
    for role in roles:
        if role in ("attention", "mlp"):
            out.extend(LINEAR_SUBSETS[role])
        elif role in ENCODER_ROLES:
            out.append(role)
        else:
            raise ValueError(
                f"spectral_roles: unknown role {role!r}; choose from "
                f"{', '.join(ENCODER_ROLES)} (or 'attention', 'mlp'); the head is the GP layer"
            )
    return tuple(dict.fromkeys(out))


class SNGP(Method):
    """Spectral-normalized transformer with a random-feature GP head and a Laplace covariance
    (module docstring for the maths).

    Parameters: ``spectral_bound`` c (rescale a weight only when its spectral norm exceeds c);
    ``spectral_roles`` the linear roles normalized (default all encoder linears; ``[]`` for
    the GP head alone); ``power_iterations`` per training step; ``num_inducing`` D random
    features; ``length_scale`` l and ``amplitude`` a of the RBF kernel; ``ridge_penalty`` prior
    precision of ``beta``; ``normalize_input`` a non-affine LayerNorm before the random
    features (fixes the feature scale so ``l`` keeps its meaning); ``precision_weight`` one of
    :data:`PRECISION_WEIGHTS`; ``link`` one of :data:`LINKS`; ``mean_field_factor`` lambda;
    ``samples`` S for ``link="mc"`` (None: the evaluation's ``mc_samples``).

    ``num_parameters`` counts trainable parameters (encoder and ``beta``); the fixed random
    features and the covariance are not counted.
    """

    name = "sngp"
    description = "spectral-normalized encoder + random-feature GP head with Laplace covariance"

    def __init__(
        self,
        spectral_bound: float = 0.95,
        spectral_roles: tuple[str, ...] = ENCODER_ROLES,
        power_iterations: int = 1,
        num_inducing: int = 1024,
        length_scale: float = 4.0,
        amplitude: float = 20.0,
        ridge_penalty: float = 1.0,
        normalize_input: bool = True,
        precision_weight: str = "unit",
        link: str = "mean_field",
        mean_field_factor: float = math.pi / 8,
        samples: int | None = None,
    ) -> None:
        if not spectral_bound > 0:
            raise ValueError(f"spectral_bound must be positive, got {spectral_bound}")
        if power_iterations < 1:
            raise ValueError("power_iterations must be at least 1")
        if num_inducing < 1:
            raise ValueError("num_inducing must be at least 1")
        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        if not amplitude > 0:
            raise ValueError(f"amplitude must be positive, got {amplitude}")
        if not ridge_penalty > 0:
            raise ValueError(f"ridge_penalty must be positive, got {ridge_penalty}")
        if precision_weight not in PRECISION_WEIGHTS:
            raise ValueError(f"precision_weight must be one of {', '.join(PRECISION_WEIGHTS)}, "
                             f"not {precision_weight!r}")
        if link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, not {link!r}")
        if mean_field_factor < 0:
            raise ValueError(f"mean_field_factor must be >= 0, got {mean_field_factor}")
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        self.spectral_bound = spectral_bound
        self.spectral_roles = resolve_spectral_roles(spectral_roles)
        self.power_iterations = power_iterations
        self.num_inducing = num_inducing
        self.length_scale = length_scale
        self.amplitude = amplitude
        self.ridge_penalty = ridge_penalty
        self.normalize_input = normalize_input
        self.precision_weight = precision_weight
        self.link = link
        self.mean_field_factor = mean_field_factor
        self.samples = samples
        self.model: TransformerClassifier | None = None
        self.ctx: FitContext | None = None

    def check_backbone(self, backbone: Backbone) -> str | None:
        needs = {"head", "features"} | ({"linear"} if self.spectral_roles else set())
        reason = backbone.unsupported(needs)
        if reason and self.spectral_roles and "linear" not in backbone.hooks():
            reason += "; spectral_roles: [] keeps the GP head alone"
        return reason

    def _linear(self, in_features: int, out_features: int, role: str) -> nn.Module:
        layer = nn.Linear(in_features, out_features)
        if role in self.spectral_roles:
            bounded_spectral_norm(layer, self.spectral_bound, self.power_iterations)
        return layer

    def _head(self, d_model: int, num_classes: int) -> RandomFeatureGPHead:
        return RandomFeatureGPHead(
            d_model, num_classes, self.num_inducing, self.length_scale, self.ridge_penalty,
            self.normalize_input, self.precision_weight, self.amplitude,
        )

    @property
    def head(self) -> RandomFeatureGPHead:
        assert self.model is not None, "call fit() first"
        return self.model.head  # type: ignore[return-value]

    def fit(self, task: Task, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        self.model = ctx.backbone.build(task, ctx.model, linear_factory=self._linear,
                                 head_factory=self._head)
        train_classifier(self.model, task.train, ctx)
        exact_spectral_norms(self.model)
        # one pass over the training data in eval mode (no dropout, u and v frozen)
        self.model.eval()
        with torch.no_grad():
            x = task.train.x.to(ctx.device)
            self.head.fit_covariance(
                self.model.features(xb) for xb in x.split(ctx.evaluation.batch_size)
            )

    def predictive(self, x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean logits ``[N, C]`` and logit variance ``[N]`` (on CPU)."""
        assert self.model is not None and self.ctx is not None, "call fit() first"
        self.model.eval()

        def stacked(xb: Inputs) -> torch.Tensor:  # [1, B, C + 1]: logits, then variance
            logits, var = self.head.predictive(self.model.features(xb))  # type: ignore[union-attr]
            return torch.cat([logits, var.unsqueeze(-1)], dim=-1)[None]

        out = predict_batched(stacked, x, self.ctx.evaluation.batch_size, self.ctx.device)
        return out[0, :, :-1], out[0, :, -1]

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None, "call fit() first"
        self.model.eval()
        s = self.samples or self.ctx.evaluation.mc_samples
        # a fresh generator per call: predict(x) is a function of x and the seed
        gen = torch.Generator(device=self.ctx.device).manual_seed(self.ctx.seed)

        def sample(xb: Inputs) -> torch.Tensor:
            logits, var = self.head.predictive(self.model.features(xb))  # type: ignore[union-attr]
            if self.link == "mean_field":
                return mean_field_probs(logits, var, self.mean_field_factor)[None]
            return sampled_logit_probs(logits, var, s, gen)

        return predict_batched(sample, x, self.ctx.evaluation.batch_size, self.ctx.device)

    def num_parameters(self) -> int:
        assert self.model is not None, "call fit() first"
        return count_parameters(self.model)
