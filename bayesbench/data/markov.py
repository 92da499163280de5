"""Token sequences from one Markov chain per class: the exact Bayes posterior is known.

Shifts: longer sequences than any seen in training, and transition matrices perturbed toward
random ones (labels and posterior under the perturbed process); OOD: chains of no class and
uniform random tokens."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.splits import seeded_rng
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

LENGTH_FACTORS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0)
"""``length`` shift: test sequence length = round(factor × training length), severities 1..5."""

PERTURBATION_WEIGHTS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
"""``perturbed_transitions`` shift: weight w of the random matrix, severities 1..5."""


@dataclass(frozen=True)
class MarkovChainSet:
    """One first-order Markov chain per class over tokens ``0..V-1``.

    initial: ``[K, V]``, ``initial[k, v] = p(x_1 = v | class k)``;
    transition: ``[K, V, V]``, ``transition[k, u, v] = p(x_t = v | x_{t-1} = u, class k)``;
    every row sums to one. The class prior is uniform.
    """

    initial: np.ndarray
    transition: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.initial.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.initial.shape[1]

    @classmethod
    def random(
        cls, rng: np.random.Generator, num_classes: int, vocab_size: int, concentration: float
    ) -> MarkovChainSet:
        """Every initial distribution and transition row drawn from a symmetric
        Dirichlet(``concentration``): small values give peaked, easily told apart chains;
        large values give near-uniform, overlapping ones."""
        alpha = np.full(vocab_size, concentration)
        initial = rng.dirichlet(alpha, size=num_classes)
        transition = rng.dirichlet(alpha, size=(num_classes, vocab_size))
        return cls(initial, transition)

    def mixed_with(self, other: MarkovChainSet, weight: float) -> MarkovChainSet:
        """Transitions ``(1 - w) T_k + w R_k`` (each class toward its own random matrix R_k);
        the initial distributions stay."""
        return MarkovChainSet(
            self.initial, (1.0 - weight) * self.transition + weight * other.transition
        )

    def sample(self, rng: np.random.Generator, classes: np.ndarray, length: int) -> np.ndarray:
        """Sequences ``[N, length]`` (int64), row n from the chain of class ``classes[n]``.

        Inverse-CDF sampling, one uniform per token, all rows at once.
        """
        n = len(classes)
        x = np.empty((n, length), dtype=np.int64)
        last = self.vocab_size - 1  # guards against cumulative sums ending just below 1
        x[:, 0] = np.minimum((rng.random((n, 1)) > self.initial[classes].cumsum(-1)).sum(-1), last)
        for t in range(1, length):
            cdf = self.transition[classes, x[:, t - 1]].cumsum(-1)
            x[:, t] = np.minimum((rng.random((n, 1)) > cdf).sum(-1), last)
        return x

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """``log p(x | class k)`` for sequences ``x [N, L]``: ``[N, K]``.

        ``log pi_k(x_1) + sum_{t=2}^{L} log T_k(x_{t-1}, x_t)``.
        """
        with np.errstate(divide="ignore"):  # a zero probability is a legitimate -inf
            log_initial, log_transition = np.log(self.initial), np.log(self.transition)
        ll = log_initial[:, x[:, 0]]  # [K, N]
        ll = ll + log_transition[:, x[:, :-1], x[:, 1:]].sum(-1)
        return ll.T

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """Exact ``p(class | x)`` under a uniform class prior: ``[N, K]``, rows sum to one
        (normalised in log space, so long sequences do not underflow)."""
        from scipy.special import logsumexp  # when used: scipy.special takes 0.1 s to import

        ll = self.log_likelihood(x)
        return np.exp(ll - logsumexp(ll, axis=1, keepdims=True))


class MarkovChains(Dataset):
    """Classify token sequences by the Markov chain that generated them.

    Each of ``num_classes`` classes is a first-order chain over ``vocab_size`` tokens, its
    initial distribution and transition rows drawn from a symmetric Dirichlet(``concentration``)
    seeded by ``process_seed``; the class prior is uniform. The process is fixed by
    ``process_seed`` (the same for every run seed, like a real data distribution); the run seed
    draws the samples. The defaults (8 tokens, sequences of 8, concentration 1) make the
    chains overlap: the Bayes classifier is right on about 94% of the sequences, and a model
    has to learn transition statistics (logistic regression reaches 55% on token counts, 93%
    on transition counts); the length shift reaches 32 tokens.

    Inputs are ``tokens``: ``x: [N, length]`` int64 ids. Every split carries ``true_probs``,
    the exact posterior ``p(class | x)`` (:meth:`MarkovChainSet.posterior`).

    Shifted sets (``num_test`` sequences each), severities 1..5:

    - ``length``: sequences of round(f × ``length``) tokens, f in :data:`LENGTH_FACTORS`: the
      same process, positions the model never saw (its learnt position embedding is sized to the
      longest sequence in the task, so positions past ``length`` stay untrained);
    - ``perturbed_transitions``: each class's transitions mixed toward its own random matrix
      R_k (drawn like the chains), ``(1 - w) T_k + w R_k``, w in
      :data:`PERTURBATION_WEIGHTS`; labels are drawn and ``true_probs`` computed under the
      perturbed process.

    OOD sets (``num_test`` sequences of ``length`` tokens each): ``unseen_chains`` (from
    ``num_classes`` fresh chains drawn like the class chains, each sequence from one of them
    at random) and
    ``uniform_tokens`` (i.i.d. uniform ids).
    """

    name = "markov"
    description = (
        "token sequences from one Markov chain per class, exact Bayes posterior; longer-sequence "
        "and perturbed-transition shifts; unseen chains and uniform tokens as OOD"
    )

    def __init__(
        self,
        vocab_size: int = 8,
        num_classes: int = 4,
        length: int = 8,
        concentration: float = 1.0,
        process_seed: int = 0,
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 2000,
    ) -> None:
        minimum = {"vocab_size": 2, "num_classes": 2, "length": 2, "process_seed": 0,
                   "num_train": 1, "num_val": 1, "num_test": 1}
        # sizes past these build matrices or token sets no benchmark needs (vocab² × classes)
        maximum = {"vocab_size": 4096, "num_classes": 1000, "length": 4096,
                   "process_seed": 2**31 - 1, "num_train": 10**6, "num_val": 10**6,
                   "num_test": 10**6}
        example = {"vocab_size": 8, "num_classes": 4, "length": 8, "process_seed": 0,
                   "num_train": 4000, "num_val": 1000, "num_test": 2000}
        values = {"vocab_size": vocab_size, "num_classes": num_classes, "length": length,
                  "process_seed": process_seed, "num_train": num_train, "num_val": num_val,
                  "num_test": num_test}
        checked: dict[str, int] = {}
        for param, value in values.items():
            try:
                if isinstance(value, bool):
                    raise TypeError
                checked[param] = operator.index(value)
            except TypeError:
                raise DataError(
                    f"markov: {param}={value!r} must be an integer, e.g. {example[param]}"
                ) from None
            if not minimum[param] <= checked[param] <= maximum[param]:
                raise DataError(
                    f"markov: {param}={value!r} must be from {minimum[param]} to "
                    f"{maximum[param]}, e.g. {example[param]}"
                )
        if isinstance(concentration, bool) or not isinstance(concentration, (int, float)) \
                or not concentration > 0:
            raise DataError(
                f"markov: concentration={concentration!r} must be a positive number, e.g. 1.0 "
                "(smaller: easier to tell the classes apart)"
            )
        self.vocab_size = checked["vocab_size"]
        self.num_classes = checked["num_classes"]
        self.length = checked["length"]
        self.process_seed = checked["process_seed"]
        self.num_train = checked["num_train"]
        self.num_val = checked["num_val"]
        self.num_test = checked["num_test"]
        self.concentration = float(concentration)

    def chains(self) -> MarkovChainSet:
        """The class chains (fixed by ``process_seed``)."""
        return self._random_chains("chains")

    def perturbations(self) -> MarkovChainSet:
        """The random matrices R_k the ``perturbed_transitions`` shift mixes toward."""
        return self._random_chains("perturbations")

    def unseen_chains(self) -> MarkovChainSet:
        """The chains of the ``unseen_chains`` OOD set, none of them a class."""
        return self._random_chains("unseen_chains")

    def shifted_lengths(self) -> list[int]:
        """Sequence lengths of the ``length`` shift at severities 1..5."""
        return [round(f * self.length) for f in LENGTH_FACTORS]

    def _random_chains(self, stream: str) -> MarkovChainSet:
        return MarkovChainSet.random(
            seeded_rng(self.process_seed, stream), self.num_classes, self.vocab_size,
            self.concentration,
        )

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        chains = self.chains()

        def draw(process: MarkovChainSet, n: int, length: int, stream: str) -> Split:
            rng = seeded_rng(seed, stream)
            y = rng.integers(0, self.num_classes, n)
            x = process.sample(rng, y, length)
            return Split(
                torch.as_tensor(x),
                torch.as_tensor(y, dtype=torch.long),
                torch.as_tensor(process.posterior(x), dtype=torch.float32),
            )

        shifted = {
            "length": {
                s: draw(chains, self.num_test, n, f"length:{s}")
                for s, n in enumerate(self.shifted_lengths(), 1)
            },
            "perturbed_transitions": {
                s: draw(chains.mixed_with(self.perturbations(), w), self.num_test, self.length,
                        f"perturbed_transitions:{s}")
                for s, w in enumerate(PERTURBATION_WEIGHTS, 1)
            },
        }
        ood_rng = seeded_rng(seed, "ood:unseen_chains")
        ood = {
            "unseen_chains": torch.as_tensor(self.unseen_chains().sample(
                ood_rng, ood_rng.integers(0, self.num_classes, self.num_test), self.length
            )),
            "uniform_tokens": torch.as_tensor(seeded_rng(seed, "ood:uniform_tokens").integers(
                0, self.vocab_size, (self.num_test, self.length)
            )),
        }
        return Task(
            name=self.name,
            input_kind="tokens",
            num_classes=self.num_classes,
            train=draw(chains, self.num_train, self.length, "train"),
            val=draw(chains, self.num_val, self.length, "val"),
            test=draw(chains, self.num_test, self.length, "test"),
            shifted=shifted,
            ood=ood,
            vocab_size=self.vocab_size,
            class_names=[f"chain {k}" for k in range(self.num_classes)],
        )
