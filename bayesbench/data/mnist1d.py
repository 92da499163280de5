"""MNIST-1D (Greydanus, 2020): ten 1-D digit templates through a random generator, generated
locally, as sequences of patches.

Shifts: the generator's own knobs turned up (iid noise, correlated noise, shear, scale);
OOD: random templates through the same generator, and the generator's noise without any
template."""

from __future__ import annotations

import contextlib
import functools
import operator
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.splits import seeded_rng, stream_entropy
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

if TYPE_CHECKING:
    from mnist1d.utils import ObjectView

SIGNAL_LENGTH = 40
"""Samples per generated signal: mnist1d's ``final_seq_length`` (a test checks the two agree)."""


@functools.lru_cache(maxsize=1)
def _mnist1d() -> SimpleNamespace:
    """mnist1d's ``get_dataset_args``, ``get_templates``, ``transform`` and ``ObjectView``,
    imported on first use: mnist1d imports matplotlib's pyplot (half a second), which a
    process that only checks a config or loads a cached task never needs."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a session's own choice of backend stays
        matplotlib.use("Agg")  # mnist1d imports pyplot at import time; workers have no display
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import ObjectView

    return SimpleNamespace(get_dataset_args=get_dataset_args, get_templates=get_templates,
                           transform=transform, ObjectView=ObjectView)


NUM_DIGITS = 10

SHIFT_ARGS: dict[str, str] = {
    "iid_noise": "iid_noise_scale",
    "correlated_noise": "corr_noise_scale",
    "shear": "shear_scale",
    "scale": "scale_coeff",
}
"""Shift kind -> the generator argument it turns up."""

SHIFT_LADDERS: dict[str, tuple[float, ...]] = {
    # sd of white noise added everywhere (training: 0.02; the clean signal's sd is about 0.15)
    "iid_noise": (0.03, 0.045, 0.06, 0.08, 0.11),
    # sd of the smoothed noise filling the background around the digit (training: 0.25)
    "correlated_noise": (0.3, 0.35, 0.4, 0.45, 0.55),
    # width of the uniform slope of the linear trend added to the signal (training: 0.75)
    "shear": (1.5, 2.25, 3.0, 4.0, 5.0),
    # amplitude factor 1 + c (u - 1/2), u ~ U(0, 1) (training: c = 0.4)
    "scale": (0.6, 0.8, 1.0, 1.3, 1.6),
}
"""Shift kind -> value of its generator argument (:data:`SHIFT_ARGS`) at severities 1..5."""

NUM_RANDOM_TEMPLATES = 100
"""Distinct random templates in the ``random_templates`` OOD set."""


def _stream_seed(seed: int, stream: str) -> int:
    """A 32-bit seed per (seed, stream) for the generator's global numpy state."""
    return int(np.random.SeedSequence(stream_entropy(seed, stream)).generate_state(1)[0])


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """mnist1d draws from numpy's global generator: seed it, and put its state back after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def generator_args(**overrides: float) -> ObjectView:
    """mnist1d's default generator arguments with ``overrides`` (e.g. ``iid_noise_scale``)."""
    lib = _mnist1d()
    args = lib.get_dataset_args(as_dict=True)
    unknown = set(overrides) - set(args)
    if unknown:
        raise KeyError(f"mnist1d has no generator arguments {sorted(unknown)}")
    args.update(overrides)
    return lib.ObjectView(args)


def generate_signals(
    templates: np.ndarray,
    per_template: int,
    args: ObjectView,
    seed: int,
    eps: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_template`` signals from each template, shuffled: ``x [K*n, 40]``, ``y [K*n]``.

    Exactly mnist1d's ``make_dataset`` loop (pad, dilate, scale, translate, correlated
    background noise, iid noise, shear, subsample; then one shuffle) with ``seed`` in place of
    ``args.seed``, minus its last step, which standardizes every generated set by its own mean
    and sd: we standardize every set with the training statistics instead, so that a noisier
    set stays noisier. templates: ``[K, 12]``; y is the template's row index.
    """
    lib = _mnist1d()
    t = lib.get_templates()["t"]
    xs, ys = [], []
    with _global_numpy_seed(seed):
        for label, template in enumerate(templates):
            for _ in range(per_template):
                xs.append(lib.transform(template, t, args, eps)[0])
                ys.append(label)
        order = np.random.permutation(len(ys))
    return np.stack(xs)[order], np.asarray(ys)[order]


def random_templates(rng: np.random.Generator, count: int, length: int = 12) -> np.ndarray:
    """Random smooth curves prepared like mnist1d's digit templates: ``[count, length]``.

    A Gaussian random walk with its endpoints tied (a Brownian bridge, so the curve starts and
    ends at the same level like every digit), then mnist1d's template normalisation: zero mean,
    unit sd, shifted to start at 0, divided by 6.
    """
    walk = np.cumsum(rng.standard_normal((count, length)), axis=1)
    ramp = np.linspace(0.0, 1.0, length)
    x = walk - walk[:, :1] - ramp * (walk[:, -1:] - walk[:, :1])
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return (x - x[:, :1]) / 6.0


@functools.lru_cache(maxsize=8)
def _raw_signals(num_samples: int, num_test: int, seed: int) -> dict[str, np.ndarray]:
    """Every set, unstandardized; cached because the generator loop takes seconds and a grid
    builds the same (params, seed) for every method. Callers must not modify the arrays."""
    digits = _mnist1d().get_templates()["x"]
    out: dict[str, np.ndarray] = {}
    out["x"], out["y"] = generate_signals(
        digits, num_samples // NUM_DIGITS, generator_args(), _stream_seed(seed, "clean")
    )
    per_class = num_test // NUM_DIGITS
    for kind, arg in SHIFT_ARGS.items():
        # one seed for all severities of a kind: the same draws with one knob turned further
        stream = _stream_seed(seed, f"shift:{kind}")
        for s, value in enumerate(SHIFT_LADDERS[kind], 1):
            x, y = generate_signals(digits, per_class, generator_args(**{arg: value}), stream)
            out[f"{kind}.{s}.x"], out[f"{kind}.{s}.y"] = x, y
    rng = seeded_rng(seed, "random_templates")
    out["ood.random_templates"], _ = generate_signals(
        random_templates(rng, NUM_RANDOM_TEMPLATES),
        max(1, num_test // NUM_RANDOM_TEMPLATES),
        generator_args(),
        _stream_seed(seed, "ood:random_templates"),
    )
    # an all-zero template with eps = 0 is all background: correlated + iid noise and shear
    out["ood.pure_noise"], _ = generate_signals(
        np.zeros((1, len(digits[0]))), num_test, generator_args(), _stream_seed(seed, "ood:noise"),
        eps=0.0,
    )
    return out


class MNIST1D(Dataset):
    """MNIST-1D: ten 1-D digit templates, each signal made by mnist1d's generator (random
    padding, dilation, scale, translation, correlated background noise, white noise, shear,
    subsampled to 40 samples); 10 classes, generated locally from the seed.

    Inputs are ``vectors``: ``x: [N, 40/p, p]`` float32, the signal cut into consecutive
    patches of ``patch_size`` samples (10 tokens of 4 by default; one sample per token learns
    badly), standardized with the training split's mean and sd (one scalar each, as mnist1d
    itself does). ``num_samples`` signals (rounded down to equal numbers per digit, shuffled)
    are split into train / val / test by ``val_fraction`` and ``test_fraction``.

    Shifted sets (as many as the test split, new draws, same templates): the generator with one
    argument turned up, :data:`SHIFT_ARGS` / :data:`SHIFT_LADDERS` at severities 1..5, each
    kind reusing one seed for all severities. OOD sets, about as many as the test split:
    ``random_templates`` (100 random smooth templates through the same generator) and
    ``pure_noise`` (the generator's background noise, iid noise and shear with no template).
    """

    name = "mnist1d"
    description = (
        "MNIST-1D signals generated locally, as patches; iid/correlated noise, shear and scale "
        "shifts from the generator's own knobs; random templates and pure noise as OOD"
    )

    def __init__(
        self,
        patch_size: int = 4,
        num_samples: int = 5000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ) -> None:
        valid_patch = [p for p in range(1, SIGNAL_LENGTH + 1) if SIGNAL_LENGTH % p == 0]
        if type(patch_size) is not int or patch_size not in valid_patch:
            raise DataError(
                f"mnist1d: patch_size={patch_size!r} does not tile the {SIGNAL_LENGTH}-sample "
                f"signal; use one of {', '.join(map(str, valid_patch))}"
            )
        try:
            num_samples = operator.index(num_samples)
        except TypeError:
            raise DataError(f"mnist1d: num_samples={num_samples!r} must be an integer") from None
        if num_samples < 200:
            raise DataError(
                f"mnist1d: num_samples={num_samples} is too few to split; use at least 200"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise DataError(f"mnist1d: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 0.9:
            raise DataError(
                f"mnist1d: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                "leaves under 10% for training; make their sum at most 0.9"
            )
        self.patch_size = patch_size
        self.num_samples = num_samples - num_samples % NUM_DIGITS
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def split_sizes(self) -> tuple[int, int, int]:
        """(train, val, test) example counts."""
        n_test = max(NUM_DIGITS, round(self.num_samples * self.test_fraction))
        n_val = max(1, round(self.num_samples * self.val_fraction))
        return self.num_samples - n_val - n_test, n_val, n_test

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        n_train, n_val, n_test = self.split_sizes()
        raw = _raw_signals(self.num_samples, n_test, seed)
        x, y = raw["x"], raw["y"]
        mean, sd = float(x[:n_train].mean()), float(x[:n_train].std())

        def to_x(signals: np.ndarray) -> torch.Tensor:
            z = (signals - mean) / sd  # a new array: the cached one stays untouched
            p = self.patch_size
            return torch.as_tensor(z.reshape(len(z), SIGNAL_LENGTH // p, p), dtype=torch.float32)

        def split(signals: np.ndarray, labels: np.ndarray) -> Split:
            return Split(to_x(signals), torch.tensor(labels, dtype=torch.long))

        parts = np.split(np.arange(len(y)), [n_train, n_train + n_val])
        train, val, test = (split(x[i], y[i]) for i in parts)
        shifted = {
            kind: {
                s: split(raw[f"{kind}.{s}.x"], raw[f"{kind}.{s}.y"])
                for s in range(1, len(SHIFT_LADDERS[kind]) + 1)
            }
            for kind in SHIFT_ARGS
        }
        ood = {name: to_x(raw[f"ood.{name}"]) for name in ("random_templates", "pure_noise")}
        return Task(
            name=self.name,
            input_kind="vectors",
            num_classes=NUM_DIGITS,
            train=train,
            val=val,
            test=test,
            shifted=shifted,
            ood=ood,
            class_names=[str(d) for d in range(NUM_DIGITS)],
        )
