"""The MNIST-1D dataset: fidelity to mnist1d's generator, splits, patches, shifts that turn the
generator's own knobs, and OOD sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bayesbench.data import mnist1d as m1d
from bayesbench.data.mnist1d import (
    MNIST1D,
    SHIFT_ARGS,
    SHIFT_LADDERS,
    generate_signals,
    generator_args,
    random_templates,
)
from bayesbench.errors import DataError
from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.map import MAP
from bayesbench.registry import DATASETS
from bayesbench.task import Task

SEVERITIES = [1, 2, 3, 4, 5]
SMALL = 1000  # num_samples: 700 / 100 / 200, shifted and OOD sets of 200


@pytest.fixture(scope="module")
def task() -> Task:
    return MNIST1D(num_samples=SMALL).build(0)


def signals(x: torch.Tensor) -> np.ndarray:
    """``[N, T, p]`` patches back to ``[N, 40]`` signals."""
    return x.reshape(len(x), -1).numpy()


def all_tensors(task: Task) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("train", "val", "test"):
        out[f"{name}.x"] = getattr(task, name).x
        out[f"{name}.y"] = getattr(task, name).y
    for kind, sev in task.shifted.items():
        for s, split in sev.items():
            out[f"{kind}.{s}.x"], out[f"{kind}.{s}.y"] = split.x, split.y
    out.update({f"ood.{k}": x for k, x in task.ood.items()})
    return out


def get_templates() -> dict[str, np.ndarray]:
    """mnist1d's templates (the package imported the way bayesbench.data.mnist1d does)."""
    return m1d._mnist1d().get_templates()


def test_registered() -> None:
    assert DATASETS.get("mnist1d") is MNIST1D


def test_signal_length_is_the_generators() -> None:
    assert m1d.SIGNAL_LENGTH == m1d._mnist1d().get_dataset_args().final_seq_length


def test_generator_is_mnist1d_make_dataset_without_its_normalisation() -> None:
    from mnist1d.data import make_dataset  # after bayesbench.data.mnist1d chose Agg

    args = generator_args(num_samples=200, seed=7)
    ours, labels = generate_signals(get_templates()["x"], 20, args, seed=7)
    theirs = make_dataset(args)
    assert np.array_equal(labels, np.concatenate([theirs["y"], theirs["y_test"]]))
    standardized = (ours - ours.mean()) / ours.std()
    assert np.allclose(standardized, np.concatenate([theirs["x"], theirs["x_test"]]), atol=1e-12)


def test_generator_leaves_numpy_global_state_alone() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    generate_signals(get_templates()["x"][:1], 3, generator_args(), seed=1)
    assert np.random.rand() == expected


def test_same_seed_gives_identical_tensors(task: Task) -> None:
    m1d._raw_signals.cache_clear()  # regenerate instead of reading the cache
    again = all_tensors(MNIST1D(num_samples=SMALL).build(0))
    first = all_tensors(task)
    assert first.keys() == again.keys()
    for key, value in first.items():
        assert torch.equal(value, again[key]), key


def test_build_is_cached_and_returns_fresh_tensors(task: Task) -> None:
    again = MNIST1D(num_samples=SMALL).build(0)
    again.test.x.add_(100.0)  # a caller mutating its task must not reach the cache
    assert torch.equal(MNIST1D(num_samples=SMALL).build(0).test.x, task.test.x)


def test_different_seed_gives_different_signals(task: Task) -> None:
    other = MNIST1D(num_samples=SMALL).build(1)
    assert not np.allclose(signals(task.test.x), signals(other.test.x))
    assert not torch.equal(task.ood["pure_noise"], other.ood["pure_noise"])


def test_shapes_dtypes_labels_and_sizes(task: Task) -> None:
    assert task.name == "mnist1d" and task.input_kind == "vectors"
    assert task.num_classes == 10 and task.class_names == [str(d) for d in range(10)]
    assert task.num_tokens == 10 and task.feature_dim == 4
    assert (len(task.train), len(task.val), len(task.test)) == (700, 100, 200)
    assert MNIST1D().split_sizes() == (3500, 500, 1000)
    for split in task.all_splits():
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (10, 4)
        assert split.y.dtype == torch.long and set(split.y.unique().tolist()) == set(range(10))
        assert split.true_probs is None
    counts = sum(torch.bincount(s.y, minlength=10) for s in (task.train, task.val, task.test))
    assert counts.tolist() == [100] * 10  # the generator makes equally many of each digit


def test_standardized_with_training_statistics(task: Task) -> None:
    train = signals(task.train.x)
    assert abs(train.mean()) < 1e-5 and abs(train.std() - 1.0) < 1e-5
    assert abs(signals(task.test.x).std() - 1.0) < 0.1  # same process, same scale


def test_splits_are_disjoint(task: Task) -> None:
    rows = [r.tobytes() for s in (task.train, task.val, task.test) for r in signals(s.x)]
    assert len(set(rows)) == len(rows) == SMALL


@pytest.mark.parametrize("patch_size", [1, 8, 40])
def test_patches_are_consecutive_samples(task: Task, patch_size: int) -> None:
    other = MNIST1D(patch_size=patch_size, num_samples=SMALL).build(0)
    assert other.test.x.shape[1:] == (40 // patch_size, patch_size)
    assert np.array_equal(signals(other.test.x), signals(task.test.x))
    assert torch.equal(task.test.x[:, 1, 0], task.test.x.reshape(-1, 40)[:, 4])


@pytest.mark.parametrize("patch_size", [0, 3, 7, 80, 4.0, True])
def test_bad_patch_size_raises(patch_size: object) -> None:
    with pytest.raises(DataError, match=r"patch_size.*1, 2, 4, 5, 8, 10, 20, 40"):
        MNIST1D(patch_size=patch_size)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"num_samples": 100}, "num_samples"),
        ({"num_samples": 500.5}, "num_samples"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "val_fraction"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, param: str) -> None:
    with pytest.raises(DataError, match=param):
        MNIST1D(**kwargs)


def test_every_shift_kind_has_five_severities(task: Task) -> None:
    assert set(task.shifted) == set(SHIFT_ARGS) == set(SHIFT_LADDERS)
    assert len(task.shifted) >= 3
    defaults = generator_args()
    for kind, sev in task.shifted.items():
        assert sorted(sev) == SEVERITIES, kind
        ladder = SHIFT_LADDERS[kind]
        assert getattr(defaults, SHIFT_ARGS[kind]) < ladder[0], kind  # beyond training
        assert all(a < b for a, b in itertools.pairwise(ladder)), kind
        for split in sev.values():
            assert split.x.shape == (200, 10, 4)
            assert torch.bincount(split.y, minlength=10).tolist() == [20] * 10
            assert torch.equal(split.y, sev[1].y)  # one seed per kind: the same draws


@pytest.mark.parametrize("kind", sorted(SHIFT_ARGS))
def test_a_shift_turns_one_generator_knob_on_shared_draws(task: Task, kind: str) -> None:
    """Every knob enters the generator linearly, and a kind's severities share their random
    draws, so each signal moves along a straight line as the knob turns."""
    x = {s: signals(task.shifted[kind][s].x).astype(np.float64) for s in SEVERITIES}
    v = SHIFT_LADDERS[kind]
    step = (x[2] - x[1]) / (v[1] - v[0])
    assert np.abs(step).mean() > 0.01
    for s in (3, 4, 5):
        assert np.allclose(x[s] - x[1], (v[s - 1] - v[0]) * step, atol=1e-4), (kind, s)


def test_shifted_sets_are_new_draws_not_test_examples(task: Task) -> None:
    test_rows = {r.tobytes() for r in signals(task.test.x)}
    for sev in task.shifted.values():
        assert not test_rows & {r.tobytes() for r in signals(sev[1].x)}


def test_random_templates_are_prepared_like_the_digits() -> None:
    rng = np.random.default_rng(0)
    t = random_templates(rng, 500)
    assert t.shape == (500, 12)
    assert np.allclose(t[:, 0], 0.0) and np.allclose(t[:, -1], 0.0)  # start and end level
    assert np.allclose(t.std(1), 1 / 6)
    digits = get_templates()["x"]
    assert np.allclose(digits.std(1), 1 / 6) and np.allclose(digits[:, 0], 0.0)
    corr = np.corrcoef(np.concatenate([t, digits]))[:500, 500:]
    assert np.median(corr.max(1)) < 0.9  # typically unlike every digit


def test_ood_sets(task: Task) -> None:
    assert set(task.ood) == {"random_templates", "pure_noise"}
    for x in task.ood.values():
        assert x.dtype == torch.float32 and x.shape == (200, 10, 4)
    # background noise alone has less energy than a digit and no digit's shape
    assert signals(task.ood["pure_noise"]).std() < 0.9 * signals(task.test.x).std()
    assert not np.allclose(signals(task.ood["random_templates"]).mean(0),
                           signals(task.test.x).mean(0), atol=0.05)


def test_shifted_sets_really_shift_a_trained_model(task: Task) -> None:
    """MAP on a small budget (700 signals, 12 epochs, about 1.5 s): the harshest correlated
    noise and shear cost it well over 10 points of accuracy (measured at the full budget:
    about 83% clean, 44% and 40% at severity 5)."""
    torch.manual_seed(0)
    method = MAP()
    method.fit(task, FitContext(training=TrainingConfig(epochs=12), seed=0))

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((method.predict(x)[0].argmax(1) == y).float().mean())

    clean = accuracy(task.test.x, task.test.y)
    assert clean > 0.35  # it learnt something (chance is 0.1)
    for kind in ("correlated_noise", "shear"):
        worst = task.shifted[kind][5]
        assert accuracy(worst.x, worst.y) < clean - 0.1, kind
