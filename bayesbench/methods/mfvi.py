"""Mean-field variational inference over transformer weights: Bayes by Backprop (Blundell et
al., 2015) with the local reparameterization trick (Kingma et al., 2015).

The tempered ELBO. With a prior ``p(theta)``, a mean-field Gaussian ``q(theta)`` over the
linear layers of ``subset`` and N training examples, the method targets the tempered posterior
``p_T(theta | D) ∝ p(D | theta)^(1/T) p(theta)`` (temperature T on the likelihood; T < 1 is a
"cold posterior", Wenzel et al., 2020) by maximising

    ELBO_T(q) = E_q[log p(D | theta)] - T * KL(q || p)

and, per minibatch B, minimising its unbiased per-example estimate

    loss = (1/|B|) sum_{i in B} -log p(y_i | x_i, theta~)  +  kl_weight * T * KL(q || p) / N

with ``theta~`` one weight draw per minibatch, shared by its examples and tokens
(``estimator = "shared"``, the default: Blundell et al.'s estimator, and the model that
predicts, one weight draw for every token of a sequence), or one local-reparameterization draw
per example and token (``"local"``: lower-variance gradients, but for sequences it drops the
correlation between the tokens of one input, which share one weight draw in the model, so it
estimates the expected log-likelihood of another model). ``kl_weight`` multiplies the
same term (a separate knob for KL down-weighting); ``kl_weight = T = 1`` is the plain ELBO,
``kl_weight * T = 0`` is maximum likelihood with weight noise. KL is closed form for the
Gaussian prior and a one-draw Monte Carlo estimate (fresh every step) for the others
(:mod:`bayesbench.priors`).

What stays deterministic: the input embedding, position embeddings, CLS token, LayerNorms and
any linear layer outside ``subset``; they are MAP-trained with the shared AdamW weight decay as
in ``map``. Variational parameters (mu, rho) get no weight decay: their regulariser is
the KL. The shared optimizer, learning rate, batch size and epochs are unchanged; the shared
model's dropout is off unless ``dropout=True`` (see :class:`MFVI`).

Prediction: S networks ``theta_s ~ q`` (each weight drawn once per network and shared by all
inputs and tokens; dropout off), the same S networks for every split (seeded from the run
seed), so ``predict`` is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from bayesbench.backbones import Backbone
from bayesbench.methods.base import (
    FitContext,
    Method,
    count_parameters,
    predict_batched,
    train_classifier,
)
from bayesbench.methods.bayesian_linear import ESTIMATORS, BayesianLinear
from bayesbench.models import LINEAR_SUBSETS, TransformerClassifier
from bayesbench.priors import make_prior
from bayesbench.task import Inputs, Task


def _dropout_hook(hooks: frozenset[str]) -> str:
    """How mfvi's ``dropout: false`` switches the model's dropout off on a backbone with
    ``hooks``: through ModelConfig (``dropout_rate``, the built-in encoder), else after
    building (``dropout_off``, hf)."""
    return "dropout_off" if "dropout_rate" not in hooks and "dropout_off" in hooks \
        else "dropout_rate"


class MFVI(Method):
    """Mean-field Gaussian posterior over the linear layers in ``subset`` (module docstring).

    ``subset``: one of ``LINEAR_SUBSETS`` (all, attention, mlp, last_layer).
    ``prior``: gaussian, laplace, student_t or gaussian_mixture, scaled by ``prior_scale``;
    ``prior_df`` (student_t); ``prior_mixture_ratio`` = small / large scale and
    ``prior_mixture_weight`` = probability of the large component (gaussian_mixture, whose
    large scale is ``prior_scale``).
    ``kl_weight``, ``temperature``: loss = NLL + kl_weight * temperature * KL / N_train.
    ``init_sigma``: initial posterior std of every weight (means start like nn.Linear). Adam
    moves each rho by at most about ``lr`` per step, so within the shared budget sigma
    can grow only about ``exp(lr * steps)``-fold (≈ 5× for digits' 840 steps at lr 2e-3): init_sigma
    largely sets the width the posterior ends with.
    ``estimator``: training draws, "shared" (one weight draw per minibatch, Blundell et al.;
    the default) or "local" (local reparameterization, per example and token); see
    :mod:`bayesbench.methods.bayesian_linear`. Version 4 made "shared" the default: on the
    full default suite (72 paired runs: 4 settings x 6 datasets x 3 seeds) neither estimator
    was consistently better (test and shift NLL, accuracy, ECE, Brier: 11 of 143 paired
    t-tests at p < 0.05, where chance gives about 7; 7 favour "shared", 4 "local") and training
    took 0.69-0.79x the time per dataset; on digits (5 epochs, 1 thread) mfvi trains in 1.09x
    map's time with it, 1.8x with "local".
    ``samples``: networks drawn at test time (S); None uses the evaluation's ``mc_samples``.
    ``dropout``: keep the shared model's dropout while training. Off by default: q's weight
    noise is this method's randomness, and the networks it predicts with have no dropout, so
    with dropout on the ELBO's likelihood term would be that of a different model (a hybrid of
    q and MC dropout). Off also spares CPU training its slowest operation (on digits, dropout's
    masks are a quarter of ``map``'s training step).
    ``bf16_variance``: the local estimator's variance matmuls in bfloat16 on CPUs with AMX
    (std within about 0.1 % of float32's); False keeps float32 throughout. See
    :mod:`bayesbench.methods.bayesian_linear`.
    """

    name = "mfvi"
    description = "mean-field Gaussian VI on linear weights (Bayes by Backprop, local reparam.)"
    # 2: hand-written local reparameterization and KL; fit diagnostics stored
    # 3: the bfloat16 variance path only on CPUs with AMX (was: any AVX512-BF16 CPU)
    # 4: estimator "shared" by default (was "local")
    version = 4

    def __init__(
        self,
        subset: str = "all",
        prior: str = "gaussian",
        prior_scale: float = 1.0,
        prior_df: float = 3.0,
        prior_mixture_ratio: float = 0.01,
        prior_mixture_weight: float = 0.5,
        kl_weight: float = 1.0,
        temperature: float = 1.0,
        init_sigma: float = 1e-3,
        estimator: str = "shared",
        samples: int | None = None,
        dropout: bool = False,
        bf16_variance: bool = True,
    ) -> None:
        if subset not in LINEAR_SUBSETS:
            raise ValueError(f"subset {subset!r} is not one of {', '.join(LINEAR_SUBSETS)}")
        self.prior = make_prior(prior, prior_scale, df=prior_df,
                                mixture_ratio=prior_mixture_ratio,
                                mixture_weight=prior_mixture_weight)
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0 < init_sigma < 1:
            raise ValueError(f"init_sigma must be in (0, 1), e.g. 1e-3, got {init_sigma!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        self.subset = subset
        self.kl_weight = kl_weight
        self.temperature = temperature
        self.init_sigma = init_sigma
        self.estimator = estimator
        self.samples = samples
        self.dropout = dropout
        self.bf16_variance = bf16_variance
        self.model: TransformerClassifier | None = None
        self.ctx: FitContext | None = None
        self.history: list[float] = []
        # (S, seed, device) -> S draws of every layer's (W, b): see weight_samples
        self._weight_samples: tuple[tuple, list[list[tuple[torch.Tensor, torch.Tensor]]]] | None \
            = None

    def check_backbone(self, backbone: Backbone) -> str | None:
        hooks = backbone.hooks()
        if self.subset == "last_layer":
            needs = {"head"}
        else:  # a pretrained backbone: the Bayesian layers start at its weights
            needs = {"linear_init" if "linear" not in hooks and "linear_init" in hooks
                     else "linear"}
        if not self.dropout:
            needs.add(_dropout_hook(hooks))
        reason = backbone.unsupported(needs)
        if reason and not self.dropout and not {"dropout_rate", "dropout_off"} & hooks:
            reason += "; mfvi's dropout: true keeps the model's own dropout"
        return reason

    # -- model ---------------------------------------------------------------------------

    def build(self, task: Task, ctx: FitContext) -> TransformerClassifier:
        """The encoder with :class:`BayesianLinear` layers for the roles in ``subset``."""
        roles = set(LINEAR_SUBSETS[self.subset])

        def linear(in_features: int, out_features: int, role: str) -> nn.Module:
            if role in roles:
                return BayesianLinear(in_features, out_features, self.prior, self.init_sigma,
                                      self.estimator, self.bf16_variance)
            return nn.Linear(in_features, out_features)

        off = not self.dropout and _dropout_hook(ctx.backbone.hooks()) == "dropout_off"
        model_config = ctx.model if self.dropout or off else dataclasses.replace(
            ctx.model, dropout=0.0, attention_dropout=0.0)
        model = ctx.backbone.build(task, model_config, linear_factory=linear)
        if off:  # a backbone that takes no rate (hf): its own dropout switched off
            ctx.backbone.disable_dropout(model)
        return model

    def bayesian_layers(self) -> list[BayesianLinear]:
        assert self.model is not None, "call fit() first"
        return [m for m in self.model.modules() if isinstance(m, BayesianLinear)]

    def kl(self) -> torch.Tensor:
        """``KL(q || p)`` summed over every Bayesian layer (for the Gaussian prior, one
        fused closed-form pass over all of them: :class:`bayesbench.priors.GaussianKL`)."""
        layers = self.bayesian_layers()
        return self.prior.kl_softplus([t for layer in layers for t in layer.means()],
                                      [t for layer in layers for t in layer.rhos()])

    def kl_scale(self, num_train: int) -> float:
        """The factor of KL in the per-example loss: kl_weight * temperature / N_train."""
        return self.kl_weight * self.temperature / num_train

    def loss(self, model: nn.Module, x: Inputs, y: torch.Tensor, num_train: int
             ) -> torch.Tensor:
        """Mean minibatch NLL + kl_weight * temperature * KL / N_train (module docstring)."""
        nll = F.cross_entropy(model(x), y)
        return nll + self.kl_scale(num_train) * self.kl()

    # -- Method --------------------------------------------------------------------------

    def fit(self, task: Task, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.ctx = ctx
        self._weight_samples = None  # drawn from the new posterior at the first predict
        self.model = self.build(task, ctx)
        variational = {id(p) for layer in self.bayesian_layers() for p in layer.parameters()}
        params = list(self.model.parameters())
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if id(p) not in variational],
              "weight_decay": ctx.training.weight_decay},
             {"params": [p for p in params if id(p) in variational], "weight_decay": 0.0}],
            lr=ctx.training.lr, foreach=True,  # the same numbers (see make_optimizer), faster
        )
        n = len(task.train)
        self.history = train_classifier(
            self.model, task.train, ctx, optimizer=optimizer,
            loss_fn=lambda model, x, y: self.loss(model, x, y, n),
        )

    def predict(self, x: Inputs) -> torch.Tensor:
        assert self.model is not None and self.ctx is not None, "call fit() first"
        s = self.samples or self.ctx.evaluation.mc_samples
        layers = self.bayesian_layers()
        self.model.eval()
        out = []
        try:
            for weights in self.weight_samples(s):  # one network per sample, for all of x
                for layer, frozen in zip(layers, weights):
                    layer.freeze(*frozen)
                out.append(predict_batched(lambda xb: self.model(xb).softmax(-1)[None], x,
                                           self.ctx.evaluation.batch_size, self.ctx.device))
        finally:
            for layer in layers:
                layer.unfreeze()
        return torch.cat(out, dim=0)

    def weight_samples(self, s: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """S draws of every Bayesian layer's ``(W, b)``, from a generator seeded with the fit's
        seed (sample-major, layers in model order), so every predict call uses the same S
        networks. Drawn once per fit and reused by every evaluation split."""
        assert self.ctx is not None, "call fit() first"
        key = (s, self.ctx.seed, str(self.ctx.device))
        if self._weight_samples is None or self._weight_samples[0] != key:
            gen = torch.Generator(device=self.ctx.device).manual_seed(self.ctx.seed)
            self._weight_samples = (key, [[layer.draw_sample(gen)
                                           for layer in self.bayesian_layers()]
                                          for _ in range(s)])
        return self._weight_samples[1]

    def num_parameters(self) -> int:
        """Trainable parameters: (mu, rho) of every Bayesian weight and bias, plus the
        deterministic rest."""
        assert self.model is not None, "call fit() first"
        return count_parameters(self.model)

    def diagnostics(self) -> dict[str, float]:
        """The posterior stds of the Bayesian weights (:meth:`posterior_sigma`) and their mean
        relative to ``init_sigma``: with Adam, sigma grows at most about ``exp(lr * steps)``
        -fold, so a growth near that bound with mean ≈ max says the width was set by the
        optimizer's step cap, not by the data."""
        sigma = self.posterior_sigma()
        return {f"sigma_{k}": v for k, v in sigma.items()} | {
            "sigma_growth": sigma["mean"] / self.init_sigma}

    def posterior_sigma(self) -> dict[str, float]:
        """Mean and max posterior std over Bayesian weights (a fit diagnostic)."""
        sig = torch.cat([layer.weight_sigma.detach().flatten() for layer in
                         self.bayesian_layers()])
        return {"mean": float(sig.mean()), "median": float(sig.median()),
                "max": float(sig.max())}
