"""What the built-in datasets share: a seeded generator per stream and stratified splits.

scikit-learn's ``train_test_split`` makes the splits, imported when a dataset is built, never
when its module is imported: checking a config or loading a task from the dataset cache (what
every run of a warm cache does) never needs scikit-learn (0.6 s of start-up in the driver of
`bayesbench run` and again in each of its worker processes).
"""

from __future__ import annotations

import zlib

import numpy as np


def stream_entropy(seed: int, stream: str) -> list[int]:
    """The seed material of one named random stream of a seed (what :func:`seeded_rng` and
    mnist1d's global-state seeds are made from)."""
    return [seed % 2**64, zlib.crc32(stream.encode())]


def seeded_rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, stream), so adding a stream changes no other one."""
    return np.random.default_rng(stream_entropy(seed, stream))


def split_state(seed: int) -> int:
    """The ``random_state`` of a seed's splits (from the ``split`` stream)."""
    return int(seeded_rng(seed, "split").integers(2**31 - 1))


def stratified_holdout(
    rows: np.ndarray, labels: np.ndarray, fraction: float, state: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: ``fraction`` of ``rows`` held out, stratified by ``labels[rows]``
    (``labels`` is indexed by row); both in ``train_test_split``'s order (unsorted).
    Raises scikit-learn's ValueError when a class is too small to stratify."""
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(rows, test_size=fraction, stratify=labels[rows],
                                  random_state=state)
    return kept, held


def stratified_split(
    rows: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float,
    state: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ``(train, val, test)`` rows: ``test_fraction`` of ``rows`` to test, then
    ``val_fraction`` of all of them to val, both stratified by ``labels`` (indexed by row)
    and drawn with the same ``state``."""
    rest, test = stratified_holdout(rows, labels, test_fraction, state)
    train, val = stratified_holdout(rest, labels, val_fraction / (1 - test_fraction), state)
    return np.sort(train), np.sort(val), np.sort(test)
