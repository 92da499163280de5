"""Prior predictive checks: which functions does a weight prior put on a dataset's inputs?

Cinquin et al. (2021) trace part of weight-space VI's failure in transformers to the prior:
an isotropic weight prior can give functions that are nearly constant or nearly one-hot, i.e.
a prior that says nothing useful about the data. These diagnostics make that visible.

How prior functions are drawn: the encoder is built once from ``seed`` (the model config every
method uses); then, for each of ``num_functions`` functions, the weight matrix of every linear
layer in ``subset`` is replaced by an i.i.d. draw from the prior. Biases, LayerNorms, the input
embedding, position embeddings and the CLS token keep their (seeded) initial values, and
dropout is off: the diagnostics isolate the weight prior. Each function is evaluated on up to
``max_inputs`` test inputs.

Diagnostics of ``probs: [F, N, C]`` (F functions, N inputs, C classes; entropies in nats):

- ``mean_entropy``: ``mean_{f,n} H[p_f(x_n)]``, the entropy of a single prior function.
- ``predictive_entropy``: ``mean_n H[mean_f p_f(x_n)]``, the prior predictive's entropy.
- ``mutual_information``: ``predictive_entropy - mean_entropy`` (function-space spread).
- ``confident_fraction``: fraction of (f, n) with ``max_c p_f(x_n) > 0.99``: near-one-hot.
- ``disagreement``: mean over pairs f != g of the fraction of inputs whose argmax differs.
- ``input_variation``: mean over f of the fraction of inputs whose argmax differs from f's
  most common argmax; near 0 means each prior function is (nearly) constant in x.
- ``max_entropy``: ``log C``, for scale.

A useful prior has functions that vary across inputs (input_variation well above 0), are not
all near-one-hot, and disagree with each other.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bayesbench.errors import ConfigError
from bayesbench.models import LINEAR_SUBSETS, ModelConfig, build_model
from bayesbench.priors import PRIOR_FAMILIES, Prior, make_prior
from bayesbench.task import Task

CONFIDENT = 0.99
"""A prior function is near-one-hot on an input when its largest probability exceeds this."""

DIAGNOSTICS = ("mean_entropy", "predictive_entropy", "mutual_information", "confident_fraction",
               "disagreement", "input_variation", "max_entropy")

TABLE_COLUMNS = ["dataset", "family", "scale", "prior", "subset", "num_functions", "num_inputs",
                 *DIAGNOSTICS]


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis in nats (0 log 0 = 0)."""
    return -(p * np.log(np.clip(p, 1e-300, 1.0))).sum(-1)


def diagnostics_from_probs(probs: torch.Tensor | np.ndarray) -> dict[str, float]:
    """The diagnostics of the module docstring from ``probs: [F, N, C]`` (F >= 2 functions).

    >>> p = np.array([[[1, 0], [1, 0]], [[0, 1], [1, 0]]], dtype=float)  # F=2, N=2, C=2
    >>> d = diagnostics_from_probs(p)
    >>> d["disagreement"], d["input_variation"], d["confident_fraction"]
    (0.5, 0.25, 1.0)
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"probs must be [F, N, C] with F >= 2 functions, got {p.shape}")
    f, n, c = p.shape
    mean_entropy = float(_entropy(p).mean())
    predictive_entropy = float(_entropy(p.mean(0)).mean())
    labels = p.argmax(-1)  # [F, N]
    counts = np.stack([(labels == k).sum(0) for k in range(c)], -1)  # [N, C] votes per class
    agreeing_pairs = (counts * (counts - 1)).sum(-1)  # ordered pairs f != g with equal argmax
    disagreement = float(1.0 - (agreeing_pairs / (f * (f - 1))).mean())
    modes = np.array([np.bincount(row, minlength=c).argmax() for row in labels])  # [F]
    input_variation = float((labels != modes[:, None]).mean())
    return {
        "mean_entropy": mean_entropy,
        "predictive_entropy": predictive_entropy,
        "mutual_information": predictive_entropy - mean_entropy,
        "confident_fraction": float((p.max(-1) > CONFIDENT).mean()),
        "disagreement": disagreement,
        "input_variation": input_variation,
        "max_entropy": math.log(c),
    }


@torch.no_grad()
def prior_function_probs(task: Task, model_config: ModelConfig, prior: Prior, *,
                         subset: str = "all", num_functions: int = 32, max_inputs: int = 256,
                         seed: int = 0) -> torch.Tensor:
    """Class probabilities ``[F, N, C]`` of ``num_functions`` prior functions on up to
    ``max_inputs`` test inputs (module docstring). The global RNG is left untouched."""
    if subset not in LINEAR_SUBSETS:
        raise ValueError(f"subset {subset!r} is not one of {', '.join(LINEAR_SUBSETS)}")
    if num_functions < 2:
        raise ValueError(f"num_functions must be at least 2, got {num_functions}")
    roles = set(LINEAR_SUBSETS[subset])
    targets: list[nn.Linear] = []

    def linear(in_features: int, out_features: int, role: str) -> nn.Module:
        layer = nn.Linear(in_features, out_features)
        if role in roles:
            targets.append(layer)
        return layer

    x = task.test.head(max_inputs, seed).x
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(task, model_config, linear_factory=linear).eval()
        out = []
        for _ in range(num_functions):
            for layer in targets:
                layer.weight.copy_(prior.sample(layer.weight.shape))
            out.append(model(x).softmax(-1))
    return torch.stack(out)


def prior_predictive_diagnostics(task: Task, model_config: ModelConfig, prior: Prior, *,
                                 subset: str = "all", num_functions: int = 32,
                                 max_inputs: int = 256, seed: int = 0) -> dict[str, float]:
    """:func:`diagnostics_from_probs` of :func:`prior_function_probs`, plus ``num_functions``
    and ``num_inputs``."""
    probs = prior_function_probs(task, model_config, prior, subset=subset,
                                 num_functions=num_functions, max_inputs=max_inputs, seed=seed)
    return {**diagnostics_from_probs(probs), "num_functions": probs.shape[0],
            "num_inputs": probs.shape[1]}


# -- the `bayesbench priors` grid ------------------------------------------------------------


def resolve_priors(families: Sequence[str], scales: Sequence[str | float], *, df: float = 3.0,
                   mixture_ratio: float = 0.01, mixture_weight: float = 0.5
                   ) -> list[tuple[str, float, Prior]]:
    """(family, scale, prior) for every family × scale; bad input raises :class:`ConfigError`
    naming the ``--family`` / ``--scales`` value and the fix."""
    if not families:
        raise ConfigError(f"--family: give at least one of {', '.join(PRIOR_FAMILIES)}")
    if not scales:
        raise ConfigError("--scales: give positive numbers separated by commas, e.g. 0.1,1,10")
    parsed = []
    for s in scales:
        try:
            value = float(s)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--scales {s}: a prior scale must be a positive number; "
                              "write e.g. --scales 0.1,1,10")
        parsed.append(value)
    out = []
    for family in families:
        for scale in parsed:
            try:
                prior = make_prior(family, scale, df=df, mixture_ratio=mixture_ratio,
                                   mixture_weight=mixture_weight)
            except ValueError as exc:
                flag = "--family" if family not in PRIOR_FAMILIES else "prior option"
                raise ConfigError(f"{flag} {family}: {exc}") from None
            out.append((family, scale, prior))
    return out


def prior_predictive_table(task: Task, model_config: ModelConfig,
                           priors: Sequence[tuple[str, float, Prior]], *, dataset: str = "",
                           subset: str = "all", num_functions: int = 32, max_inputs: int = 256,
                           seed: int = 0) -> pd.DataFrame:
    """One row of :data:`TABLE_COLUMNS` per (family, scale, prior) of :func:`resolve_priors`;
    every prior sees the same initialisation and inputs (same ``seed``)."""
    if subset not in LINEAR_SUBSETS:
        raise ConfigError(f"--subset {subset}: choose one of {', '.join(LINEAR_SUBSETS)}")
    if num_functions < 2:
        raise ConfigError(f"--functions {num_functions}: draw at least 2 prior functions")
    rows = []
    for family, scale, prior in priors:
        d = prior_predictive_diagnostics(task, model_config, prior, subset=subset,
                                         num_functions=num_functions, max_inputs=max_inputs,
                                         seed=seed)
        rows.append({"dataset": dataset or task.name, "family": family, "scale": scale,
                     "prior": repr(prior), "subset": subset, **d})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


_PANELS = [
    ("mean_entropy", "entropy / log C", "single function (solid) vs prior predictive (dashed)"),
    ("confident_fraction", "fraction of (function, input)", f"near one-hot: max p > {CONFIDENT}"),
    ("disagreement", "fraction of inputs", "argmax disagreement between functions"),
    ("input_variation", "fraction of inputs", "argmax differs from the function's mode"),
]


def prior_predictive_png(frame: pd.DataFrame, dataset: str) -> bytes:
    """PNG bytes: each diagnostic against the prior scale (log axis), one line per family."""
    from matplotlib.figure import Figure  # lazy import; Agg canvas

    fig = Figure(figsize=(4.0 * len(_PANELS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(_PANELS), squeeze=False)[0]
    for ax, (metric, ylabel, title) in zip(axes, _PANELS):
        for i, (family, rows) in enumerate(frame.groupby("family", sort=False)):
            rows = rows.sort_values("scale")
            colour = f"C{i}"
            y = rows[metric] / rows["max_entropy"] if metric == "mean_entropy" else rows[metric]
            ax.plot(rows["scale"], y, "o-", color=colour, label=family)
            if metric == "mean_entropy":
                ax.plot(rows["scale"], rows["predictive_entropy"] / rows["max_entropy"], "o--",
                        color=colour, alpha=0.6)
        if frame["scale"].max() > 10 * frame["scale"].min():
            ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("prior scale")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n_f = int(frame["num_functions"].iloc[0]) if len(frame) else 0
    n_x = int(frame["num_inputs"].iloc[0]) if len(frame) else 0
    fig.suptitle(f"Prior predictive on {dataset}: {n_f} prior functions × {n_x} test inputs",
                 fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_prior_predictive(frame: pd.DataFrame, out_dir: str | Path, dataset: str
                           ) -> list[Path]:
    """Write ``priors_<dataset>.csv`` and ``priors_<dataset>.png`` to ``out_dir`` (atomic)."""
    from bayesbench.report.leaderboard import _safe_name, atomic_write

    out_dir = Path(out_dir)
    name = _safe_name(dataset)
    return [atomic_write(out_dir / f"priors_{name}.csv", frame.to_csv(index=False)),
            atomic_write(out_dir / f"priors_{name}.png", prior_predictive_png(frame, dataset))]
