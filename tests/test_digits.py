"""The digits dataset: splits, relabelling, patch layout, shifts and OOD sets."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from bayesbench.data.digits import (
    SHIFT_LADDERS,
    Digits,
    add_gaussian_noise,
    gaussian_blur,
    images_to_patches,
    occlude,
    patches_to_images,
    reduce_contrast,
    rotate,
)
from bayesbench.errors import DataError
from bayesbench.registry import DATASETS
from bayesbench.task import Task

SEVERITIES = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def task() -> Task:
    return Digits().build(0)


@pytest.fixture(scope="module")
def originals() -> dict[bytes, int]:
    """Row hash of every original image (scaled to [0, 1], float32) -> its digit."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return {img.tobytes(): int(d) for img, d in zip(images, data.target)}


def images_of(x: torch.Tensor, patch_size: int = 2) -> np.ndarray:
    return patches_to_images(x.numpy(), patch_size)


def hashes(x: torch.Tensor, patch_size: int = 2) -> list[bytes]:
    return [img.tobytes() for img in images_of(x, patch_size)]


def all_tensors(task: Task) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("train", "val", "test"):
        out[f"{name}.x"] = getattr(task, name).x
        out[f"{name}.y"] = getattr(task, name).y
    for kind, sev in task.shifted.items():
        for s, split in sev.items():
            out[f"{kind}.{s}.x"] = split.x
            out[f"{kind}.{s}.y"] = split.y
    for name, x in task.ood.items():
        out[f"ood.{name}"] = x
    return out


def test_registered() -> None:
    assert DATASETS.get("digits") is Digits


def test_same_seed_gives_identical_tensors(task: Task) -> None:
    again = all_tensors(Digits().build(0))
    first = all_tensors(task)
    assert first.keys() == again.keys()
    for key, value in first.items():
        assert torch.equal(value, again[key]), key


def test_different_seed_gives_different_split_and_draws(task: Task) -> None:
    other = Digits().build(1)
    assert set(hashes(task.test.x)) != set(hashes(other.test.x))
    assert set(hashes(task.train.x)) != set(hashes(other.train.x))
    assert not torch.equal(task.ood["uniform_noise"], other.ood["uniform_noise"])


def test_shapes_dtypes_and_labels(task: Task) -> None:
    assert task.name == "digits" and task.input_kind == "vectors"
    assert task.num_classes == 8
    assert task.class_names == [str(d) for d in range(8)]
    assert task.num_tokens == 16 and task.feature_dim == 4
    for split in task.all_splits():
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (16, 4)
        assert split.y.dtype == torch.long
        assert int(split.y.min()) == 0 and int(split.y.max()) == 7
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    for x in task.ood.values():
        assert x.dtype == torch.float32 and x.shape[1:] == (16, 4)
    # 1797 images, 354 of them eights and nines; 25% / 15% of the remaining 1443
    assert (len(task.train), len(task.val), len(task.test)) == (865, 217, 361)


def test_splits_are_stratified(task: Task) -> None:
    for split, fraction in ((task.test, 0.25), (task.val, 0.15)):
        counts = torch.bincount(split.y, minlength=8).numpy()
        whole = sum(torch.bincount(s.y, minlength=8) for s in (task.train, task.val, task.test))
        assert np.all(np.abs(counts - fraction * whole.numpy()) <= 1.5)


def test_splits_are_disjoint_original_images(task: Task, originals: dict[bytes, int]) -> None:
    parts = [hashes(s.x) for s in (task.train, task.val, task.test)]
    union = [h for part in parts for h in part]
    assert len(set(union)) == len(union) == 1443  # no image in two splits, none repeated
    assert all(h in originals for h in union)  # every row is an untouched original image


def test_labels_relabel_the_original_digits(originals: dict[bytes, int]) -> None:
    task = Digits(held_out_classes=[0, 3]).build(2)
    assert task.class_names == ["1", "2", "4", "5", "6", "7", "8", "9"]
    for split in (task.train, task.val, task.test):
        digits = [originals[h] for h in hashes(split.x)]
        assert [task.class_names[y] for y in split.y.tolist()] == [str(d) for d in digits]
    held = {originals[h] for h in hashes(task.ood["held_out_classes"])}
    assert held == {0, 3}


def test_held_out_classes_only_in_ood(task: Task, originals: dict[bytes, int]) -> None:
    for split in (task.train, task.val, task.test):
        assert not {originals[h] for h in hashes(split.x)} & {8, 9}
    held = hashes(task.ood["held_out_classes"])
    assert sorted(originals[h] for h in held) == [8] * 174 + [9] * 180  # all of them
    assert len(set(held)) == len(held)


def test_patch_layout_and_round_trip() -> None:
    image = np.arange(64.0).reshape(1, 8, 8)
    patches = images_to_patches(image, 2)
    assert patches.shape == (1, 16, 4)
    assert patches[0, 0].tolist() == [0, 1, 8, 9]
    assert patches[0, 1].tolist() == [2, 3, 10, 11]
    assert patches[0, 4].tolist() == [16, 17, 24, 25]  # second row of patches
    top_right = [r * 8 + c for r in range(4) for c in range(4, 8)]
    assert images_to_patches(image, 4)[0, 1].tolist() == top_right
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(5, 8, 8))
    for p in (1, 2, 4, 8):
        assert np.array_equal(patches_to_images(images_to_patches(images, p), p), images)


@pytest.mark.parametrize("patch_size, shape", [(1, (64, 1)), (4, (4, 16)), (8, (1, 64))])
def test_other_patch_sizes_hold_the_same_images(
    task: Task, patch_size: int, shape: tuple[int, int]
) -> None:
    other = Digits(patch_size=patch_size).build(0)
    assert other.test.x.shape[1:] == shape
    assert hashes(other.test.x, patch_size) == hashes(task.test.x)


@pytest.mark.parametrize("patch_size", [0, 3, 5, 16, 2.0, True])
def test_bad_patch_size_raises(patch_size: object) -> None:
    with pytest.raises(DataError, match=r"patch_size.*1, 2, 4, 8"):
        Digits(patch_size=patch_size)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"held_out_classes": [10]}, "held_out_classes"),
        ({"held_out_classes": [1, 1]}, "held_out_classes"),
        ({"held_out_classes": list(range(9))}, "held_out_classes"),
        ({"held_out_classes": ["8"]}, "held_out_classes"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.2}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, param: str) -> None:
    with pytest.raises(DataError, match=param):
        Digits(**kwargs)


def test_no_held_out_classes_means_ten_classes_and_no_held_out_set() -> None:
    task = Digits(held_out_classes=[]).build(0)
    assert task.num_classes == 10 and "held_out_classes" not in task.ood
    assert len(task.train) + len(task.val) + len(task.test) == 1797


def test_every_shift_kind_has_five_severities_with_test_labels(task: Task) -> None:
    assert (
        set(task.shifted)
        == set(SHIFT_LADDERS)
        >= {"gaussian_noise", "blur", "rotation", "occlusion"}
    )
    for kind, sev in task.shifted.items():
        assert sorted(sev) == SEVERITIES, kind
        for split in sev.values():
            assert torch.equal(split.y, task.test.y)
            assert split.x.shape == task.test.x.shape


def test_shift_magnitude_grows_with_severity(task: Task) -> None:
    for kind, sev in task.shifted.items():
        mad = [float((sev[s].x - task.test.x).abs().mean()) for s in SEVERITIES]
        assert mad[0] > 0.0, kind
        assert all(a < b for a, b in pairwise(mad)), (kind, mad)


def test_shifts_are_per_image_nested(task: Task) -> None:
    """Shared draws: a harsher severity never changes a pixel less (noise, occlusion)."""
    clean = task.test.x
    for kind in ("gaussian_noise", "occlusion"):
        diffs = [(task.shifted[kind][s].x - clean).abs() for s in SEVERITIES]
        for low, high in pairwise(diffs):
            assert torch.all(high >= low - 1e-6), kind


def test_ood_sets(task: Task) -> None:
    assert set(task.ood) == {"held_out_classes", "uniform_noise", "inverted"}
    noise = task.ood["uniform_noise"]
    assert len(noise) == len(task.test)
    assert 0.45 < float(noise.mean()) < 0.55 and float(noise.min()) >= 0 and noise.max() <= 1
    assert torch.allclose(task.ood["inverted"], 1.0 - task.test.x)


def test_gaussian_noise_clips_to_unit_interval() -> None:
    images = np.array([[[0.0, 1.0], [0.5, 0.5]]])
    noise = np.array([[[-1.0, 1.0], [1.0, -2.0]]])
    out = add_gaussian_noise(images, 0.2, noise)
    assert np.allclose(out, [[[0.0, 1.0], [0.7, 0.1]]])


def test_gaussian_blur_matches_hand_computed_kernel() -> None:
    delta = np.zeros((1, 8, 8))
    delta[0, 3, 4] = 1.0
    out = gaussian_blur(delta, 0.5)[0]
    k = np.exp(-0.5 * (np.arange(-2, 3) / 0.5) ** 2)
    k /= k.sum()
    assert np.allclose(out[1:6, 2:7], np.outer(k, k))  # separable: outer product of kernels
    assert np.isclose(out.sum(), 1.0)  # interior mass is preserved
    assert np.allclose(gaussian_blur(np.ones((1, 8, 8)), 1.0)[0, 3:5, 3:5], 1.0)


def test_rotate() -> None:
    image = np.arange(64.0).reshape(1, 8, 8)
    assert np.allclose(rotate(image, np.array([0.0])), image)
    # a positive angle turns the picture counter-clockwise as displayed
    assert np.allclose(rotate(image, np.array([90.0]))[0], np.rot90(image[0], 1))
    assert np.allclose(rotate(image, np.array([-90.0]))[0], np.rot90(image[0], -1))


def test_occlude_zeroes_the_square() -> None:
    images = np.ones((2, 8, 8))
    out = occlude(images, np.array([0, 5]), np.array([1, 5]), 3)
    assert (out[0] == 0).sum() == 9 and np.all(out[0, 0:3, 1:4] == 0)
    assert (out[1] == 0).sum() == 9 and np.all(out[1, 5:8, 5:8] == 0)
    assert np.all(images == 1)  # the input is not modified


def test_reduce_contrast_keeps_the_mean() -> None:
    images = np.random.default_rng(0).uniform(size=(3, 8, 8))
    out = reduce_contrast(images, 0.5)
    assert np.allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)))
    assert np.allclose(out.std(axis=(1, 2)), 0.5 * images.std(axis=(1, 2)))
