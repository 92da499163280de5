"""ItalyPowerDemand (UCR archive, inside the ``sktime`` wheel): classify a day's 24 hourly
electricity-demand readings as winter (October-March) or summer (April-September).

Shifts: sensor noise, time warping, sensor drop-out; OOD: another UCR set (GunPoint, resampled
to 24 points) and time-reversed days."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.splits import seeded_rng, split_state, stratified_split
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

PACKAGE = "sktime"
INSTALL_HINT = "pip install 'bayesbench[timeseries]' (or pip install sktime)"
SERIES_LENGTH = 24

SHIFT_LADDERS: dict[str, tuple[float, ...]] = {
    # standard deviation of additive N(0, sigma^2) noise (the series have unit variance)
    "gaussian_noise": (0.15, 0.3, 0.5, 0.75, 1.0),
    # warp strength s: reading at hour t taken from t + s (T-1)/pi a sin(pi t / (T-1)), a = +-1
    # (endpoints fixed, monotone for s < 1; the middle of the day moves by 0.3 ... 1.5 hours:
    # the classes differ in the timing of the daily profile, so an hour already matters)
    "time_warp": (0.04, 0.08, 0.12, 0.16, 0.2),
    # hours of a contiguous gap in which the sensor repeats its last reading
    "sensor_dropout": (3.0, 6.0, 9.0, 12.0, 15.0),
}
"""Shift kind -> parameter at severities 1..5 (1 = mildest)."""


def data_folder() -> Path:
    """``sktime/datasets/data`` inside the installed package, located without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"italy_power_demand needs the {PACKAGE} package, whose wheel ships the UCR "
            f"ItalyPowerDemand and GunPoint sets: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    for name in ("ItalyPowerDemand", "GunPoint"):
        for part in ("TRAIN", "TEST"):
            if not (folder / name / f"{name}_{part}.ts").is_file():
                raise DataError(
                    f"italy_power_demand: {folder / name / f'{name}_{part}.ts'} is missing; "
                    f"install an sktime that ships it: pip install '{PACKAGE}>=1.2'"
                )
    return folder


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A univariate, equal-length ``.ts`` file (sktime / UCR format: ``#`` comments, ``@``
    headers, then one ``v1,v2,...,vT:label`` line per series): ``x [N, T]`` float64 and the
    labels ``[N]`` as strings."""
    xs, labels, in_data = [], [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            in_data = in_data or line.lower().startswith("@data")
            continue
        if not in_data:
            continue
        values, _, label = line.rpartition(":")
        xs.append([float(v) for v in values.split(",")])
        labels.append(label)
    return np.array(xs, dtype=np.float64), np.array(labels)


def read_set(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A UCR set's TRAIN and TEST files, concatenated (the archive's split is not used)."""
    parts = [read_ts(folder / name / f"{name}_{p}.ts") for p in ("TRAIN", "TEST")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def znormalize(x: np.ndarray) -> np.ndarray:
    """Each series to mean 0 and sample sd 1 (ddof 1), as the UCR archive stores them."""
    return (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True)


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """Each series linearly interpolated at ``length`` evenly spaced points of its span."""
    old = np.linspace(0.0, 1.0, x.shape[1])
    new = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(new, old, row) for row in x])


def add_noise(x: np.ndarray, sigma: float, noise: np.ndarray) -> np.ndarray:
    """``x + sigma * noise``; noise: standard normal, shaped like x."""
    return x + sigma * noise


def time_warp(x: np.ndarray, strength: float, direction: np.ndarray) -> np.ndarray:
    """Readings re-timed by tau(t) = t + s (T-1)/pi a_n sin(pi t / (T-1)) (module constants),
    linear interpolation; ``direction``: ``[N]`` of +-1 (earlier or later middle of the day)."""
    t = np.arange(x.shape[1], dtype=np.float64)
    span = x.shape[1] - 1
    bump = strength * span / math.pi * np.sin(math.pi * t / span)
    return np.stack([np.interp(t + a * bump, t, row) for row, a in zip(x, direction)])


def sensor_dropout(x: np.ndarray, start: np.ndarray, hours: int) -> np.ndarray:
    """Readings ``start[n] .. start[n] + hours - 1`` replaced by the reading just before the gap
    (a stalled sensor repeats its last value), or just after it when the gap opens the day."""
    out = x.copy()
    for row, s in zip(out, start):
        hold = row[s - 1] if s > 0 else row[s + hours]
        row[s: s + hours] = hold
    return out


def shifted_series(x: np.ndarray, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Every kind of :data:`SHIFT_LADDERS` at severities 1..5 of ``[N, 24]`` series; the draws
    of a kind (noise, warp direction, gap places) are shared by its severities, and the gaps
    are nested (each inside the next longer one)."""
    n, length = x.shape
    noise = seeded_rng(seed, "gaussian_noise").standard_normal(x.shape)
    out = {"gaussian_noise": {s: add_noise(x, sigma, noise)
                              for s, sigma in enumerate(SHIFT_LADDERS["gaussian_noise"], 1)}}
    direction = seeded_rng(seed, "time_warp").choice([-1.0, 1.0], size=n)
    out["time_warp"] = {s: time_warp(x, w, direction)
                        for s, w in enumerate(SHIFT_LADDERS["time_warp"], 1)}
    rng = seeded_rng(seed, "sensor_dropout")
    hours = [int(h) for h in SHIFT_LADDERS["sensor_dropout"]]
    start = rng.integers(0, length - hours[-1] + 1, n)
    starts = {len(hours): start}
    for s in range(len(hours) - 1, 0, -1):  # each gap inside the next longer one
        start = start + rng.integers(0, hours[s] - hours[s - 1] + 1, n)
        starts[s] = start
    out["sensor_dropout"] = {s: sensor_dropout(x, starts[s], h) for s, h in enumerate(hours, 1)}
    return out


class ItalyPowerDemand(Dataset):
    """Tell winter days (October-March, class 0) from summer days (April-September, class 1)
    by their 24 hourly electricity-demand readings (Italy, 1997; Keogh et al., "Intelligent
    Icons", 2006), from the UCR time-series classification archive (Dau et al., 2019; free for
    research) as shipped in the ``sktime`` 1.2.0 wheel (BSD-3-Clause; the two ``.ts`` files
    are 292 kB). The archive's 67 / 1,029 split is not used: the 1,096 days (547 winter, no
    two identical) are split stratified into train / val / test by ``val_fraction`` and
    ``test_fraction`` (657 / 165 / 274 by default), deterministic in the seed. Each series is
    z-normalised (the archive's own scaling).

    Inputs are ``vectors``: ``x: [N, 24 / p, p]`` float32, non-overlapping patches of
    ``patch_size`` = p consecutive hours (6 tokens of 4 by default).

    Shifted sets (the test days, labels unchanged), severities 1..5 (:data:`SHIFT_LADDERS`):
    ``gaussian_noise`` (sensor noise), ``time_warp`` (the day's profile moved earlier or later
    by a smooth monotone re-timing: peaks drift, as with a clock or a calendar offset) and
    ``sensor_dropout`` (a gap of 3 to 15 hours in which the sensor repeats its last reading).
    OOD sets: ``gunpoint`` (every series of the UCR GunPoint set, hand-motion traces of 150
    points, 200 in all, resampled to 24 and z-normalised) and ``reversed_days`` (the test days
    backwards in time: real readings, impossible profiles; as many as the test split).
    """

    name = "italy_power_demand"
    description = (
        "UCR ItalyPowerDemand (sktime wheel, BSD-3; UCR archive, free for research; 1,096 days "
        "of 24 hourly readings, winter vs summer) as patches; noise/time-warp/sensor-dropout "
        "shifts; UCR GunPoint and time-reversed days as OOD"
    )

    def __init__(
        self, patch_size: int = 4, val_fraction: float = 0.15, test_fraction: float = 0.25
    ) -> None:
        valid = [p for p in range(1, SERIES_LENGTH + 1) if SERIES_LENGTH % p == 0]
        if type(patch_size) is not int or patch_size not in valid:
            raise DataError(
                f"italy_power_demand: patch_size={patch_size!r} does not tile 24 hours; use "
                f"one of {', '.join(map(str, valid))}"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < 1:
                raise DataError(
                    f"italy_power_demand: {param}={value!r} must lie in (0, 1), e.g. 0.2"
                )
        if val_fraction + test_fraction >= 0.9:
            raise DataError(
                f"italy_power_demand: val_fraction + test_fraction = "
                f"{val_fraction + test_fraction:g} leaves under 10% for training; make their "
                "sum less than 0.9"
            )
        self.folder = data_folder()  # a missing package fails here, at config time
        self.patch_size = patch_size
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def check(self) -> None:
        """sktime and its ItalyPowerDemand / GunPoint files are installed (DataError)."""
        data_folder()

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """All 1,096 days ``[N, 24]`` and their labels (0 = winter, 1 = summer), archive
        order (TRAIN file first)."""
        x, labels = read_set(self.folder, "ItalyPowerDemand")
        return x, (labels == "2").astype(np.int64)

    def split_indices(self, seed: int) -> dict[str, np.ndarray]:
        """Row indices of :meth:`series` in ``train``, ``val`` and ``test`` (stratified)."""
        _, y = self.series()
        train, val, test = stratified_split(np.arange(len(y)), y, self.val_fraction,
                                            self.test_fraction, split_state(seed))
        return {"train": train, "val": val, "test": test}

    def to_x(self, series: np.ndarray) -> torch.Tensor:
        """``[N, 24]`` -> ``[N, 24 / p, p]`` float32 patches."""
        n = len(series)
        return torch.as_tensor(
            series.reshape(n, SERIES_LENGTH // self.patch_size, self.patch_size),
            dtype=torch.float32,
        )

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        x, y = self.series()
        index = self.split_indices(seed)

        def split(rows: np.ndarray, values: np.ndarray | None = None) -> Split:
            return Split(self.to_x(x[rows] if values is None else values),
                         torch.as_tensor(y[rows]))

        test = index["test"]
        shifted = {kind: {s: split(test, v) for s, v in ladder.items()}
                   for kind, ladder in shifted_series(x[test], seed).items()}
        gunpoint, _ = read_set(self.folder, "GunPoint")
        return Task(
            name=self.name,
            input_kind="vectors",
            num_classes=2,
            train=split(index["train"]),
            val=split(index["val"]),
            test=split(test),
            shifted=shifted,
            ood={
                "gunpoint": self.to_x(znormalize(resample(gunpoint, SERIES_LENGTH))),
                "reversed_days": self.to_x(x[test][:, ::-1].copy()),
            },
            class_names=["winter (Oct-Mar)", "summer (Apr-Sep)"],
        )
