"""Handwritten 8×8 digits as patch sequences.

Shifts: noise, blur, rotation, occlusion, contrast; OOD: held-out digits, uniform noise,
inverted digits."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bayesbench.data.base import Dataset
from bayesbench.data.splits import seeded_rng, split_state, stratified_holdout
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

IMAGE_SIZE = 8
"""Side of a digits image in pixels."""

SHIFT_LADDERS: dict[str, tuple[float, ...]] = {
    # standard deviation of additive N(0, sigma^2) pixel noise, result clipped to [0, 1]
    "gaussian_noise": (0.08, 0.16, 0.24, 0.32, 0.4),
    # standard deviation in pixels of a Gaussian blur (zero padding outside the image)
    "blur": (0.5, 0.6, 0.7, 0.85, 1.0),
    # rotation angle in degrees about the image centre, random sign per image
    "rotation": (6.0, 12.0, 18.0, 24.0, 30.0),
    # side in pixels of a zeroed square at a random place inside the image
    "occlusion": (1.0, 2.0, 3.0, 4.0, 5.0),
    # contrast factor c: x -> m + c (x - m) with m the image's mean pixel
    "contrast": (0.9, 0.8, 0.7, 0.6, 0.5),
}
"""Shift kind -> parameter at severities 1..5 (1 = mildest)."""


def images_to_patches(images: np.ndarray, patch_size: int) -> np.ndarray:
    """Cut images into non-overlapping square patches in raster order.

    images: ``[N, H, W]`` -> ``[N, (H/p)(W/p), p*p]``; patch t = (row t // (W/p), column
    t % (W/p)); pixels within a patch row-major.
    """
    n, h, w = images.shape
    p = patch_size
    x = images.reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, (h // p) * (w // p), p * p)


def patches_to_images(patches: np.ndarray, patch_size: int, side: int = IMAGE_SIZE) -> np.ndarray:
    """Inverse of :func:`images_to_patches` for square ``side``×``side`` images."""
    n = patches.shape[0]
    p = patch_size
    g = side // p
    x = np.asarray(patches).reshape(n, g, g, p, p).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, side, side)


def add_gaussian_noise(images: np.ndarray, sigma: float, noise: np.ndarray) -> np.ndarray:
    """``clip(x + sigma * noise, 0, 1)``; noise: standard normal, shaped like images."""
    return np.clip(images + sigma * noise, 0.0, 1.0)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with zero padding, as ``B X B^T`` on ``[N, S, S]`` images.

    B[i, j] = k(j - i), k the Gaussian kernel of standard deviation ``sigma`` pixels truncated
    at 3 sigma and normalised to sum 1 (mass falling outside the image is lost, like the
    zero background of the digits).
    """
    side = images.shape[-1]
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    idx = np.arange(side)
    diff = idx[None, :] - idx[:, None]
    blur = np.where(np.abs(diff) <= radius, kernel[np.clip(diff + radius, 0, 2 * radius)], 0.0)
    return np.einsum("ij,njk,lk->nil", blur, images, blur)


def rotate(images: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate each ``[S, S]`` image by ``degrees[n]`` about its centre, counter-clockwise as
    displayed (bilinear, zero fill)."""
    rad = torch.as_tensor(np.deg2rad(degrees), dtype=torch.float64)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(rad)
    theta = torch.stack(
        [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1
    )  # [N, 2, 3]: output grid -> input sampling location, in [-1, 1] coordinates
    x = torch.as_tensor(images, dtype=torch.float64).unsqueeze(1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1).numpy()


def occlude(images: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Zero a ``size``×``size`` square at (``top[n]``, ``left[n]``) in each image."""
    out = images.copy()
    rows = np.arange(images.shape[1])
    cols = np.arange(images.shape[2])
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + size)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + size)
    out[in_rows[:, :, None] & in_cols[:, None, :]] = 0.0
    return out


def reduce_contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """``m + factor (x - m)`` with m each image's mean pixel (stays within [0, 1])."""
    mean = images.mean(axis=(1, 2), keepdims=True)
    return mean + factor * (images - mean)


def shifted_images(images: np.ndarray, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Every shift kind of :data:`SHIFT_LADDERS` at severities 1..5 of ``[N, 8, 8]`` images.

    The random draws of a kind (noise, rotation signs, occluder places) are shared by all its
    severities, so a higher severity changes each image at least as much as a lower one:
    occluders are nested, each inside the next larger one.
    """
    n, side, _ = images.shape
    out: dict[str, dict[int, np.ndarray]] = {}

    noise = seeded_rng(seed, "gaussian_noise").standard_normal(images.shape)
    out["gaussian_noise"] = {
        s: add_gaussian_noise(images, sigma, noise)
        for s, sigma in enumerate(SHIFT_LADDERS["gaussian_noise"], 1)
    }
    out["blur"] = {
        s: gaussian_blur(images, sigma) for s, sigma in enumerate(SHIFT_LADDERS["blur"], 1)
    }
    signs = seeded_rng(seed, "rotation").choice([-1.0, 1.0], size=n)
    out["rotation"] = {
        s: rotate(images, signs * angle) for s, angle in enumerate(SHIFT_LADDERS["rotation"], 1)
    }

    rng = seeded_rng(seed, "occlusion")
    sizes = [int(v) for v in SHIFT_LADDERS["occlusion"]]
    top = rng.integers(0, side - sizes[-1] + 1, n)
    left = rng.integers(0, side - sizes[-1] + 1, n)
    places = {len(sizes): (top, left)}
    for s in range(len(sizes) - 1, 0, -1):  # each square placed inside the next larger one
        room = sizes[s] - sizes[s - 1] + 1
        top = top + rng.integers(0, room, n)
        left = left + rng.integers(0, room, n)
        places[s] = (top, left)
    out["occlusion"] = {s: occlude(images, *places[s], size) for s, size in enumerate(sizes, 1)}

    out["contrast"] = {
        s: reduce_contrast(images, c) for s, c in enumerate(SHIFT_LADDERS["contrast"], 1)
    }
    return out


class Digits(Dataset):
    """scikit-learn's 1797 handwritten digits (8×8, pixel values 0..16 scaled to [0, 1]).

    Inputs are ``vectors``: ``x: [N, T, F]`` float32, the non-overlapping
    ``patch_size``×``patch_size`` patches in raster order (T = (8/p)^2 tokens of F = p^2
    pixels; 16 tokens of 4 with the default p = 2). Pixels keep their [0, 1] scale, not
    standardised, so that shifts and OOD inputs live on the same scale as the training data.

    The digits in ``held_out_classes`` are never trained on: the remaining C classes are
    relabelled 0..C-1 in increasing order (``class_names`` keeps the original digits) and split
    stratified into train / val / test (``val_fraction`` and ``test_fraction`` of the
    in-distribution images). Shifted sets are the test split under each kind of
    :data:`SHIFT_LADDERS` at severities 1..5, applied to the 8×8 image before patching.
    OOD sets: ``held_out_classes`` (every image of the held-out digits), ``uniform_noise``
    (i.i.d. U(0, 1) pixels) and ``inverted`` (1 - x of the test images), the last two as many
    as the test split. Everything is deterministic in the seed.
    """

    name = "digits"
    description = (
        "scikit-learn 8×8 handwritten digits as patches; noise/blur/rotation/occlusion/contrast "
        "shifts; held-out digits, uniform noise and inverted digits as OOD"
    )

    def __init__(
        self,
        held_out_classes: Sequence[int] = (8, 9),
        patch_size: int = 2,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
    ) -> None:
        valid_patch = [p for p in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % p == 0]
        if type(patch_size) is not int or patch_size not in valid_patch:
            raise DataError(
                f"digits: patch_size={patch_size!r} does not tile the 8×8 image; "
                f"use one of {', '.join(map(str, valid_patch))}"
            )
        try:
            held = [operator.index(c) for c in held_out_classes]
        except TypeError:
            raise DataError(
                f"digits: held_out_classes={held_out_classes!r} must be a list of digits 0..9"
            ) from None
        if any(c < 0 or c > 9 for c in held) or len(set(held)) != len(held) or len(held) > 8:
            raise DataError(
                f"digits: held_out_classes={list(held_out_classes)!r} must be distinct digits "
                "0..9 leaving at least two classes to train on, e.g. [8, 9]"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise DataError(f"digits: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 1:
            raise DataError(
                f"digits: val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves "
                "no training data; make their sum less than 1"
            )
        self.held_out_classes = sorted(held)
        self.patch_size = patch_size
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        # scikit-learn on first build, not on import: checking a config or loading a cached
        # task never needs it (0.4 s)
        from sklearn.datasets import load_digits

        data = load_digits()
        images = data.images.astype(np.float64) / 16.0  # [1797, 8, 8] in [0, 1]
        digits = data.target
        classes = [c for c in range(10) if c not in self.held_out_classes]
        relabel = np.full(10, -1)
        relabel[classes] = np.arange(len(classes))

        ind = np.flatnonzero(relabel[digits] >= 0)
        state = split_state(seed)
        label_of = relabel[digits]  # per image
        try:  # the splits keep train_test_split's order (the tensors' order since version 1)
            rest, test = stratified_holdout(ind, label_of, self.test_fraction, state)
            train, val = stratified_holdout(
                rest, label_of, self.val_fraction / (1 - self.test_fraction), state
            )
        except ValueError as exc:
            raise DataError(
                f"digits: cannot split {len(ind)} images with val_fraction={self.val_fraction} "
                f"and test_fraction={self.test_fraction} ({exc}); use larger fractions"
            ) from None

        def split(index: np.ndarray, imgs: np.ndarray | None = None) -> Split:
            return Split(
                self._to_x(images[index] if imgs is None else imgs),
                torch.as_tensor(relabel[digits[index]], dtype=torch.long),
            )

        test_images = images[test]
        shifted = {
            kind: {s: split(test, imgs) for s, imgs in ladder.items()}
            for kind, ladder in shifted_images(test_images, seed).items()
        }

        ood: dict[str, torch.Tensor] = {}
        held = np.flatnonzero(relabel[digits] < 0)
        if len(held):
            ood["held_out_classes"] = self._to_x(images[held])
        noise_shape = (len(test), IMAGE_SIZE, IMAGE_SIZE)
        noise = seeded_rng(seed, "uniform_noise").uniform(size=noise_shape)
        ood["uniform_noise"] = self._to_x(noise)
        ood["inverted"] = self._to_x(1.0 - test_images)

        return Task(
            name=self.name,
            input_kind="vectors",
            num_classes=len(classes),
            train=split(train),
            val=split(val),
            test=split(test),
            shifted=shifted,
            ood=ood,
            class_names=[str(c) for c in classes],
            image_shape=[1, IMAGE_SIZE, IMAGE_SIZE],
        )

    def _to_x(self, images: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(images_to_patches(images, self.patch_size), dtype=torch.float32)
