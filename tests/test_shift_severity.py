"""Every shift kind of every built-in dataset gets harder with severity, for map.

map (the benchmark's model and training settings, a smaller budget) is trained once per
dataset and evaluated on every shifted set. With a_k the accuracy at severity k on n_k examples
and se(j, k) = sqrt(a_j (1 - a_j) / n_j + a_k (1 - a_k) / n_k) the binomial standard error of
a_k - a_j (the sets treated as independent; sets that share examples, such as digits' corrupted
test images, have a smaller one, so the margins are conservative):

- default run: accuracy does not rise with severity beyond noise, a_{k+1} - a_k <= 3 se(k, k+1)
  at every step and a_5 - a_1 <= 2 se(1, 5), after a small budget that must reach a set test
  accuracy (an untrained model would pass any "does not rise" check);
- ``slow``: accuracy falls, a_1 - a_5 >= 3 se(1, 5) and no step rises by more than 2 se, with
  the predictions of seeds 0, 1, 2 pooled (n_k = the three sets together) after a budget
  closer to the benchmark's.

Each run is deterministic (fixed seeds, one thread), so these tests pass or fail the same way
every time; the margins absorb what a different platform's arithmetic would change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bayesbench.config import load_config
from bayesbench.data.digits import SHIFT_LADDERS as DIGITS_SHIFTS
from bayesbench.data.italy_power import SHIFT_LADDERS as ITALY_SHIFTS
from bayesbench.data.mnist1d import SHIFT_ARGS as MNIST1D_SHIFTS
from bayesbench.methods.base import FitContext
from bayesbench.methods.map import MAP
from bayesbench.models import ModelConfig
from bayesbench.registry import DATASETS

REPO = Path(__file__).resolve().parent.parent
SEVERITIES = [1, 2, 3, 4, 5]

SHIFT_KINDS: dict[str, list[str]] = {
    "digits": list(DIGITS_SHIFTS),
    "mnist1d": list(MNIST1D_SHIFTS),
    "markov": ["length", "perturbed_transitions"],
    "breast_cancer": ["population"],
    "bbc_news": ["typos", "word_dropout", "truncation"],
    "actg175": ["population"],
    "italy_power_demand": list(ITALY_SHIFTS),
}
"""Every built-in dataset (all but ``files``, the user's own) -> its shift kinds."""

CASES = [(name, kind) for name, kinds in SHIFT_KINDS.items() for kind in kinds]


@dataclass(frozen=True)
class Budget:
    """Dataset parameters, training epochs, and the test accuracy map must reach with them."""

    params: dict
    epochs: int
    min_test_accuracy: float


# about 55 s in all on one thread (bbc_news 13 s, actg175 6 s, italy_power_demand 4 s);
# every training split in full
FAST = {
    "breast_cancer": Budget({}, 15, 0.9),  # reaches 0.97-1.0 over seeds 0-3
    "digits": Budget({}, 5, 0.75),  # 0.82-0.92
    "markov": Budget({"num_train": 2000}, 10, 0.6),  # 0.69-0.72 (Bayes: 0.94)
    "mnist1d": Budget({"num_samples": 2500}, 10, 0.55),  # 0.63-0.74
    "bbc_news": Budget({"max_length": 64}, 2, 0.7),  # 0.78 on seed 0
    "actg175": Budget({}, 15, 0.78),  # 0.79-0.83 over seeds 0-3 (majority class: 0.755)
    "italy_power_demand": Budget({}, 15, 0.9),  # 0.956-0.974 over seeds 0-3
}
# about 2.7 min on one thread (3 seeds)
SLOW = {
    "breast_cancer": Budget({}, 30, 0.93),
    "digits": Budget({}, 15, 0.9),
    "markov": Budget({}, 15, 0.7),
    "mnist1d": Budget({"num_samples": 2500}, 15, 0.65),
    "bbc_news": Budget({}, 8, 0.85),
    "actg175": Budget({}, 30, 0.78),
    "italy_power_demand": Budget({}, 30, 0.93),
}
SLOW_SEEDS = [0, 1, 2]


@dataclass
class Ladders:
    """map's correct predictions on the test split and on every shifted set of one task."""

    test: tuple[int, int]  # (correct, examples)
    shifted: dict[str, dict[int, tuple[int, int]]]

    def pooled(self, other: Ladders) -> Ladders:
        add = lambda a, b: (a[0] + b[0], a[1] + b[1])  # noqa: E731
        return Ladders(add(self.test, other.test), {
            kind: {s: add(c, other.shifted[kind][s]) for s, c in sev.items()}
            for kind, sev in self.shifted.items()
        })


def map_ladders(name: str, budget: Budget, seed: int) -> Ladders:
    """Build ``name`` for ``seed``, train map on it with the benchmark's model and training
    settings for ``budget.epochs`` epochs, and count its correct predictions everywhere."""
    config = load_config(REPO / "benchmarks.yaml")
    task = DATASETS.get(name)(**budget.params).build(seed)
    ctx = FitContext(
        model=ModelConfig(**dataclasses.asdict(config.model)),
        training=dataclasses.replace(config.training, epochs=budget.epochs),
        evaluation=config.evaluation,
        device=torch.device("cpu"),
        seed=seed,
    )
    method = MAP()
    method.fit(task, ctx)

    def correct(split) -> tuple[int, int]:
        predicted = method.predict(split.x)[0].argmax(-1)
        return int((predicted == split.y).sum()), len(split)

    return Ladders(correct(task.test), {
        kind: {s: correct(split) for s, split in sorted(sev.items())}
        for kind, sev in task.shifted.items()
    })


def standard_error(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Binomial standard error of the difference of two accuracies (correct, examples), at
    least one example's worth of the smaller set (so a perfect score still has a margin)."""
    pa, pb = accuracy(a), accuracy(b)
    na, nb = a[1], b[1]
    return max(math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb), 1 / min(na, nb))


def accuracy(counts: tuple[int, int]) -> float:
    return counts[0] / counts[1]


def rises(ladder: dict[int, tuple[int, int]], z_step: float, z_overall: float) -> list[str]:
    """Where accuracy rises with severity beyond noise: a step a_{k+1} - a_k above
    ``z_step`` standard errors, or a_5 - a_1 above ``z_overall`` of them."""
    found = []
    severities = sorted(ladder)
    for low, high in zip(severities, severities[1:]):
        rise = accuracy(ladder[high]) - accuracy(ladder[low])
        if rise > z_step * standard_error(ladder[low], ladder[high]):
            found.append(f"severity {low} -> {high}: +{rise:.3f}")
    first, last = ladder[severities[0]], ladder[severities[-1]]
    rise = accuracy(last) - accuracy(first)
    if rise > z_overall * standard_error(first, last):
        found.append(f"severity {severities[0]} -> {severities[-1]}: +{rise:.3f}")
    return found


def describe(ladder: dict[int, tuple[int, int]]) -> str:
    return " ".join(f"{accuracy(c):.3f}" for _, c in sorted(ladder.items())) + (
        f" (n = {ladder[min(ladder)][1]})"
    )


# ------------------------------------------------------------------ the check itself


def test_rises_flags_a_rise_beyond_noise_and_nothing_less() -> None:
    n = 400
    ladder = lambda *acc: {s: (round(a * n), n) for s, a in enumerate(acc, 1)}  # noqa: E731
    assert rises(ladder(0.9, 0.8, 0.7, 0.6, 0.5), 3, 2) == []
    # +0.05 from 0.80 on 400 examples: se = sqrt(.16/400 + .1275/400) = 0.0268, 1.9 se
    assert rises(ladder(0.9, 0.8, 0.85, 0.7, 0.6), 3, 2) == []
    # +0.10 from 0.70: se = sqrt(.21/400 + .16/400) = 0.0304, 3.3 se
    assert rises(ladder(0.9, 0.7, 0.8, 0.7, 0.6), 3, 2) == ["severity 2 -> 3: +0.100"]
    # no single step beyond 3 se, but +0.08 overall is 2.3 se
    assert rises(ladder(0.6, 0.62, 0.64, 0.66, 0.68), 3, 2) == ["severity 1 -> 5: +0.080"]
    # a ladder run backwards fails at every step
    assert len(rises(ladder(0.3, 0.5, 0.7, 0.8, 0.9), 3, 2)) == 5
    assert standard_error((n, n), (n, n)) == 1 / n  # the floor at a perfect score


def test_every_builtin_dataset_is_covered() -> None:
    builtin = {n for n in DATASETS.names()
               if DATASETS.get(n).__module__.startswith("bayesbench.data.")}
    assert builtin - {"files"} == set(SHIFT_KINDS)
    assert set(FAST) == set(SLOW) == set(SHIFT_KINDS)


# ------------------------------------------------------------------ default run


@pytest.fixture(scope="module")
def fast_ladders():
    """name -> Ladders after the FAST budget, seed 0; each dataset trained once."""
    cache: dict[str, Ladders] = {}

    def get(name: str) -> Ladders:
        if name not in cache:
            cache[name] = map_ladders(name, FAST[name], seed=0)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SHIFT_KINDS))
def test_map_learns_and_every_shift_kind_has_five_severities(name: str, fast_ladders) -> None:
    ladders = fast_ladders(name)
    assert accuracy(ladders.test) >= FAST[name].min_test_accuracy
    assert sorted(ladders.shifted) == sorted(SHIFT_KINDS[name])  # no kind left unchecked
    for kind, ladder in ladders.shifted.items():
        assert sorted(ladder) == SEVERITIES, kind


@pytest.mark.parametrize("name, kind", CASES)
def test_map_accuracy_does_not_rise_with_severity(name: str, kind: str, fast_ladders) -> None:
    ladder = fast_ladders(name).shifted[kind]
    assert rises(ladder, z_step=3, z_overall=2) == [], f"{name}/{kind}: {describe(ladder)}"


# ------------------------------------------------------------------ thorough run


@pytest.fixture(scope="module")
def slow_ladders():
    """name -> Ladders pooled over SLOW_SEEDS after the SLOW budget."""
    cache: dict[str, Ladders] = {}

    def get(name: str) -> Ladders:
        if name not in cache:
            runs = [map_ladders(name, SLOW[name], seed) for seed in SLOW_SEEDS]
            pooled = runs[0]
            for run in runs[1:]:
                pooled = pooled.pooled(run)
            cache[name] = pooled
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", CASES)
def test_map_accuracy_falls_with_severity(name: str, kind: str, slow_ladders) -> None:
    ladders = slow_ladders(name)
    assert accuracy(ladders.test) >= SLOW[name].min_test_accuracy
    ladder = ladders.shifted[kind]
    message = f"{name}/{kind}, seeds {SLOW_SEEDS} pooled: {describe(ladder)}"
    assert rises(ladder, z_step=2, z_overall=math.inf) == [], message
    fall = accuracy(ladder[1]) - accuracy(ladder[5])
    assert fall >= 3 * standard_error(ladder[1], ladder[5]), message
