"""The Markov-chain dataset: the exact posterior against brute force and against samples,
shifts (longer sequences, perturbed transitions under the perturbed process) and OOD sets."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from bayesbench.data.markov import (
    LENGTH_FACTORS,
    PERTURBATION_WEIGHTS,
    MarkovChains,
    MarkovChainSet,
)
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Split, Task

SEVERITIES = [1, 2, 3, 4, 5]
SMALL = {"num_train": 300, "num_val": 100, "num_test": 200}


@pytest.fixture(scope="module")
def dataset() -> MarkovChains:
    return MarkovChains(**SMALL)


@pytest.fixture(scope="module")
def task(dataset: MarkovChains) -> Task:
    return dataset.build(0)


@pytest.fixture(scope="module")
def large() -> tuple[MarkovChains, Task]:
    """20 000 training and test sequences (and as many per shifted set) for frequency checks."""
    ds = MarkovChains(num_train=20_000, num_val=10, num_test=20_000)
    return ds, ds.build(5)


def splits_of(task: Task) -> dict[str, Split]:
    out = {"train": task.train, "val": task.val, "test": task.test}
    for kind, sev in task.shifted.items():
        out.update({f"{kind}.{s}": sp for s, sp in sev.items()})
    return out


def brute_force_log_likelihood(x: np.ndarray, chains: MarkovChainSet) -> np.ndarray:
    """log p(x | k) one sequence and one step at a time: ``[N, K]``."""
    out = np.zeros((len(x), chains.num_classes))
    for n, seq in enumerate(x):
        for k in range(chains.num_classes):
            total = np.log(chains.initial[k, seq[0]])
            for a, b in itertools.pairwise(seq):
                total += np.log(chains.transition[k, a, b])
            out[n, k] = total
    return out


def assert_calibrated(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> int:
    """Among examples whose p(class k) lies in a bin, class k's frequency matches the bin's
    mean probability within 4.5 binomial standard errors; returns the bins checked."""
    checked = 0
    for k in range(probs.shape[1]):
        which = np.minimum((probs[:, k] * bins).astype(int), bins - 1)
        for b in range(bins):
            in_bin = which == b
            n = int(in_bin.sum())
            if n < 300:
                continue
            p = probs[in_bin, k].mean()
            freq = (y[in_bin] == k).mean()
            se = np.sqrt(max(p * (1 - p), 1e-4) / n)
            assert abs(freq - p) < 4.5 * se, (k, b, n, freq, p)
            checked += 1
    return checked


def test_registered() -> None:
    assert DATASETS.get("markov") is MarkovChains


def test_same_seed_gives_identical_tensors(task: Task, dataset: MarkovChains) -> None:
    again = dataset.build(0)
    for (name, a), b in zip(splits_of(task).items(), splits_of(again).values()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), name
        assert torch.equal(a.true_probs, b.true_probs), name
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name]), name


def test_different_seed_draws_new_samples_from_the_same_process(
    task: Task, dataset: MarkovChains
) -> None:
    other = dataset.build(1)
    assert not torch.equal(task.train.x, other.train.x)
    assert not torch.equal(task.ood["uniform_tokens"], other.ood["uniform_tokens"])
    # the chains are fixed by process_seed, not by the run seed
    assert np.array_equal(MarkovChains(process_seed=0).chains().transition,
                          dataset.chains().transition)
    assert not np.allclose(MarkovChains(process_seed=1).chains().transition,
                           dataset.chains().transition)


def test_shapes_dtypes_and_labels(task: Task) -> None:
    assert task.name == "markov" and task.input_kind == "tokens"
    assert task.num_classes == 4 and task.vocab_size == 8
    assert task.num_tokens == 32  # the longest shifted length sizes the position embedding
    assert (len(task.train), len(task.val), len(task.test)) == (300, 100, 200)
    for name, split in splits_of(task).items():
        assert split.x.dtype == torch.long and split.y.dtype == torch.long, name
        assert int(split.x.min()) == 0 and int(split.x.max()) == 7, name
        assert set(split.y.unique().tolist()) == {0, 1, 2, 3}, name
        assert split.true_probs.shape == (len(split), 4), name
        assert torch.allclose(split.true_probs.sum(1), torch.ones(len(split)), atol=1e-5)
        assert float(split.true_probs.min()) >= 0.0
    for split in (task.train, task.val, task.test):
        assert split.x.shape[1] == 8


def collision_probability(chains: MarkovChainSet, length: int) -> float:
    """P(two independent draws of the process are the same sequence):
    ``mean_{k,k'} sum_x p(x | k) p(x | k')``, summed over x by the forward recursion."""
    total = 0.0
    for a, b in itertools.product(range(chains.num_classes), repeat=2):
        v = chains.initial[a] * chains.initial[b]
        for _ in range(length - 1):
            v = v @ (chains.transition[a] * chains.transition[b])
        total += v.sum()
    return total / chains.num_classes**2


def test_splits_are_independent_draws(large: tuple) -> None:
    """Splits come from independent random streams: a sequence appears in both train and test
    only as often as two independent samples of the process coincide by chance (8-token
    sequences from peaked chains do repeat), not because rows are shared."""
    ds, task = large
    train = collections.Counter(map(tuple, task.train.x.tolist()))
    test = collections.Counter(map(tuple, task.test.x.tolist()))
    shared_pairs = sum(train[seq] * count for seq, count in test.items())
    expected = 20_000 * 20_000 * collision_probability(ds.chains(), 8)
    assert 800 < expected < 900
    assert abs(shared_pairs - expected) < 5 * 1.2 * np.sqrt(expected), (shared_pairs, expected)
    assert not torch.equal(task.train.x[:100], task.test.x[:100])


def test_chains_are_stochastic() -> None:
    chains = MarkovChains(vocab_size=5, num_classes=3).chains()
    assert chains.initial.shape == (3, 5) and chains.transition.shape == (3, 5, 5)
    assert np.allclose(chains.initial.sum(-1), 1.0)
    assert np.allclose(chains.transition.sum(-1), 1.0)
    assert chains.transition.min() > 0


def test_posterior_matches_bayes_rule_on_every_length_3_sequence() -> None:
    chains = MarkovChains().chains()
    x = np.array(list(itertools.product(range(8), repeat=3)))  # all 512 sequences
    joint = np.zeros((len(x), 4))  # p(class k, x) with the uniform prior 1/4
    for n, (a, b, c) in enumerate(x):
        for k in range(4):
            joint[n, k] = 0.25 * chains.initial[k, a] * chains.transition[k, a, b] \
                * chains.transition[k, b, c]
    assert np.isclose(joint.sum(), 1.0)  # the joint is a distribution over (class, sequence)
    assert np.allclose(joint.sum(0), 0.25)
    posterior = chains.posterior(x)
    assert np.allclose(posterior.sum(1), 1.0)
    assert np.allclose(posterior, joint / joint.sum(1, keepdims=True), atol=1e-12)


def test_sampler_matches_the_joint_distribution_on_length_3() -> None:
    """Joint counts of (class, sequence) in 400 000 samples against the exact joint."""
    chains = MarkovChains().chains()
    rng = np.random.default_rng(0)
    n = 400_000
    y = rng.integers(0, 4, n)
    x = chains.sample(rng, y, 3)
    cell = y * 512 + x[:, 0] * 64 + x[:, 1] * 8 + x[:, 2]
    freq = np.bincount(cell, minlength=4 * 512) / n
    joint = 0.25 * np.exp(chains.log_likelihood(
        np.array(list(itertools.product(range(8), repeat=3)))
    )).T.reshape(-1)  # [k * 512 + code]
    # Pearson's chi-square over cells expected 5+ times, the rarer cells pooled into one
    big = n * joint >= 5
    observed = np.append(n * freq[big], n * freq[~big].sum())
    expected = np.append(n * joint[big], n * joint[~big].sum())
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(1 - 1e-6, df=len(expected) - 1), statistic
    assert 0.5 * np.abs(freq - joint).sum() < 0.02  # total variation


def test_true_probs_are_calibrated_against_sampled_labels(large: tuple) -> None:
    _, task = large
    probs, y = task.test.true_probs.double().numpy(), task.test.y.numpy()
    assert assert_calibrated(probs, y) >= 12
    # the expected accuracy of the Bayes classifier is E[max_k p(k | x)]
    bayes = (probs.argmax(1) == y).mean()
    assert abs(bayes - probs.max(1).mean()) < 0.01
    assert abs(bayes - 0.939) < 0.01  # classes overlap: the posterior is not trivial


def test_true_probs_match_a_step_by_step_computation(task: Task, dataset: MarkovChains) -> None:
    chains = dataset.chains()
    for name, split in [("test", task.test), ("length.2", task.shifted["length"][2])]:
        ll = brute_force_log_likelihood(split.x[:50].numpy(), chains)
        expected = np.exp(ll - ll.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        assert np.allclose(split.true_probs[:50].numpy(), expected, atol=1e-6), name


def test_posterior_does_not_underflow_on_long_sequences() -> None:
    chains = MarkovChains().chains()
    x = chains.sample(np.random.default_rng(0), np.zeros(20, dtype=int), 2000)
    p = chains.posterior(x)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
    assert np.all(p[:, 0] > 0.999)  # 2000 tokens identify the chain


def test_every_shift_kind_has_five_severities(task: Task, dataset: MarkovChains) -> None:
    assert set(task.shifted) == {"length", "perturbed_transitions"}
    for kind, sev in task.shifted.items():
        assert sorted(sev) == SEVERITIES, kind
        assert all(len(sp) == 200 for sp in sev.values())
    assert dataset.shifted_lengths() == [12, 16, 20, 24, 32]
    assert [round(f * 8) for f in LENGTH_FACTORS] == dataset.shifted_lengths()
    assert [task.shifted["length"][s].x.shape[1] for s in SEVERITIES] == [12, 16, 20, 24, 32]
    assert all(task.shifted["perturbed_transitions"][s].x.shape[1] == 8 for s in SEVERITIES)


def test_perturbed_true_probs_are_the_posterior_under_the_perturbed_process(
    task: Task, dataset: MarkovChains
) -> None:
    chains, random = dataset.chains(), dataset.perturbations()
    assert not np.allclose(chains.transition, random.transition)
    for s, w in zip(SEVERITIES, PERTURBATION_WEIGHTS):
        split = task.shifted["perturbed_transitions"][s]
        mixed = MarkovChainSet(
            chains.initial,
            np.stack([(1 - w) * chains.transition[k] + w * random.transition[k]
                      for k in range(4)]),
        )
        assert np.allclose(mixed.transition.sum(-1), 1.0)
        ll = brute_force_log_likelihood(split.x[:40].numpy(), mixed)
        expected = np.exp(ll - ll.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        assert np.allclose(split.true_probs[:40].numpy(), expected, atol=1e-6), s
        # ... and not the posterior of the unperturbed chains
        clean = chains.posterior(split.x.numpy())
        gap = np.abs(clean - split.true_probs.numpy()).max(1).mean()
        assert gap > 0.02 * s, (s, gap)


def test_perturbed_labels_follow_the_perturbed_process(large: tuple) -> None:
    ds, task = large
    split = task.shifted["perturbed_transitions"][5]
    y = split.y.numpy()
    shifted_probs = split.true_probs.double().numpy()
    assert assert_calibrated(shifted_probs, y) >= 12
    clean_probs = ds.chains().posterior(split.x.numpy())

    def nll(p: np.ndarray) -> float:
        return float(-np.log(p[np.arange(len(y)), y]).mean())

    assert nll(shifted_probs) < nll(clean_probs) - 0.05
    # the Bayes classifier gets worse as the chains are mixed toward random ones
    accs = [float((task.shifted["perturbed_transitions"][s].true_probs.argmax(1)
                   == task.shifted["perturbed_transitions"][s].y).float().mean())
            for s in SEVERITIES]
    clean = float((task.test.true_probs.argmax(1) == task.test.y).float().mean())
    assert clean > accs[0] > accs[2] > accs[4]


def test_longer_sequences_make_the_bayes_classifier_surer(large: tuple) -> None:
    _, task = large
    conf = [float(task.test.true_probs.max(1).values.mean())]
    conf += [float(task.shifted["length"][s].true_probs.max(1).values.mean())
             for s in SEVERITIES]
    assert all(a < b for a, b in itertools.pairwise(conf)), conf
    assert conf[-1] > 0.99


def test_ood_sets(task: Task, dataset: MarkovChains) -> None:
    assert set(task.ood) == {"unseen_chains", "uniform_tokens"}
    for x in task.ood.values():
        assert x.dtype == torch.long and x.shape == (200, 8)
        assert int(x.min()) >= 0 and int(x.max()) <= 7
    uniform = MarkovChains(num_test=20_000).build(0).ood["uniform_tokens"]
    counts = torch.bincount(uniform.reshape(-1), minlength=8).double() / uniform.numel()
    assert torch.allclose(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.003)
    unseen, chains = dataset.unseen_chains(), dataset.chains()
    assert not np.allclose(unseen.transition, chains.transition)
    # the unseen chains explain their own sequences better than any class chain does
    x = task.ood["unseen_chains"].numpy()
    assert unseen.log_likelihood(x).max(1).mean() > chains.log_likelihood(x).max(1).mean() + 3


def test_other_sizes_and_vocabulary() -> None:
    task = MarkovChains(vocab_size=3, num_classes=2, length=5, num_train=50, num_val=10,
                        num_test=20).build(0)
    assert task.vocab_size == 3 and task.num_classes == 2
    assert task.train.x.shape == (50, 5) and int(task.train.x.max()) <= 2
    assert [task.shifted["length"][s].x.shape[1] for s in SEVERITIES] == [8, 10, 12, 15, 20]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 8.0}, "vocab_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"length": 1}, "length"),
        ({"concentration": 0.0}, "concentration"),
        ({"concentration": "3"}, "concentration"),
        ({"num_test": 0}, "num_test"),
        ({"process_seed": -1}, "process_seed"),
        ({"num_train": True}, "num_train"),
        ({"vocab_size": 10**6}, "vocab_size=1000000 must be from 2 to 4096"),
        ({"length": 10**9}, "length"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, param: str) -> None:
    with pytest.raises(DataError, match=param):
        MarkovChains(**kwargs)
