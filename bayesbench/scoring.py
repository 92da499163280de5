"""Score any model's saved predictions: the library behind ``bayesbench score``.

``bayesbench score --probs FILE --labels FILE [--ood-probs FILE] [--bins N]`` loads the files
with :func:`load_array` and calls :func:`score_predictions`. Every problem the files can cause
raises :class:`~bayesbench.errors.InputFileError` naming the file and the fix.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from numpy.lib import format as npy_format

if TYPE_CHECKING:
    import pandas as pd

from bayesbench.errors import ConfigError, InputFileError
from bayesbench.metrics.suite import check_labels, check_probabilities, evaluate_ood, evaluate_split
from bayesbench.results import TEST_SPLIT

OOD_SPLIT = "ood"

MAX_ECE_BINS = 1000
"""Most calibration bins ``--bins`` (and ``evaluation.ece_bins``) accepts."""

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".csv")
# the most a zip member can expand: deflate's limit is about 1032:1 (numpy writes only these)
_ZIP_RATIO = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}
_WRITERS = {".npy": "numpy.save", ".npz": "numpy.savez", ".csv": "a CSV writer"}

ArrayOrPath = Any
"""A numpy array, a torch tensor, or a path (``str`` / ``os.PathLike``) read by load_array."""


def _npz_names(what: str) -> tuple[str, ...]:
    """Array names looked for in a multi-array ``.npz``, by what the file holds."""
    return ("labels",) if "label" in what.lower() else ("probs", "samples")


def load_array(path: str | os.PathLike[str], what: str) -> np.ndarray:
    """Read one numeric array from ``path``.

    - ``.npy``: the array (pickled object arrays are refused);
    - ``.npz``: the only array, or else the one named ``labels`` (when ``what`` mentions
      labels) or ``probs`` / ``samples`` (otherwise);
    - ``.csv``: a numeric table, optionally with one header row (recognised by a non-numeric
      cell in the first row); a single column comes back 1-D (``[N]``), otherwise ``[N, C]``.

    ``what`` names the input in error messages (e.g. ``"probs"``, ``"labels"``,
    ``"ood-probs"``). Raises InputFileError for a missing, unreadable or non-numeric file or an
    unsupported extension.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} file '{p}' does not exist; check the path")
    if not p.is_file():
        raise InputFileError(f"{what} file '{p}' is not a regular file; give a file path")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputFileError(
            f"{what} file '{p}' has unsupported extension '{p.suffix}'; save it as "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (e.g. numpy.save('{p.stem}.npy', array))"
        )
    try:
        with open(p, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
    except OSError as exc:
        raise InputFileError(
            f"{what} file '{p}' cannot be opened: {exc.strerror}; check its permissions"
        ) from None
    # without these checks numpy falls back to unpickling and reports "pickled data"
    if (ext == ".npy" and not is_npy) or (ext == ".npz" and not zipfile.is_zipfile(p)):
        raise InputFileError(
            f"{what} file '{p}' is not a numpy {ext} file (its header is wrong); write it with "
            f"{_WRITERS[ext]}, or rename it if it has another format"
        )
    try:
        if ext == ".npy":
            with open(p, "rb") as f:
                _check_npy_header(f, p.stat().st_size, f"{what} file '{p}'", ext)
            array = np.load(p, allow_pickle=False)
        elif ext == ".npz":
            array = _load_npz(p, what)
        else:
            array = _load_csv(p, what)
    except InputFileError:
        raise
    except MemoryError:
        raise InputFileError(
            f"{what} file '{p}' is too large to load into memory; score a subset of the "
            "examples"
        ) from None
    # ValueError covers pandas' ParserError; RuntimeError: an encrypted zip member
    except (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        text = " ".join(str(exc).split())
        raise InputFileError(
            f"{what} file '{p}' cannot be read as {ext}: {text[:200]}; check that it was "
            f"written by {_WRITERS[ext]}"
        ) from None
    if array.dtype.kind not in "biuf":
        raise InputFileError(f"{what} file '{p}' holds a {array.dtype} array; it must hold numbers")
    return array


def _check_npy_header(stream: IO[bytes], size: int, source: str, ext: str) -> None:
    """Read a ``.npy`` header from ``stream`` (``size`` bytes in all) and refuse what
    ``np.load`` would unpickle or could not hold: object dtypes, and a shape whose data is
    larger than the bytes that follow the header (a corrupt header can claim 10^13 rows)."""
    version = npy_format.read_magic(stream)
    read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                   else npy_format.read_array_header_2_0)
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise InputFileError(
            f"{source} holds Python objects (dtype {str(dtype)[:60]}), which only pickle can "
            "read; save a numeric array instead"
        )
    need = math.prod(shape) * dtype.itemsize
    have = size - stream.tell()
    if need > have:
        raise InputFileError(
            f"{source} cannot be read as {ext}: its header claims shape {tuple(shape)!s:.80} "
            f"of {dtype} ({need:,} bytes) but only {max(have, 0):,} bytes follow; the file "
            "is truncated or its header is corrupt, so write it again"
        )


def _load_npz(p: Path, what: str) -> np.ndarray:
    with zipfile.ZipFile(p) as zf:
        members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        others = [i.filename for i in zf.infolist() if not i.filename.endswith(".npy")]
        if not members:
            listed = ", ".join(f"'{n[:60]}'" for n in others[:5]) or "none"
            raise InputFileError(
                f"{what} file '{p}' holds no numpy arrays (members: {listed}; arrays are "
                f".npy members); write it with numpy.savez"
            )
        names = list(members)
        chosen = names[0] if len(names) == 1 else next(
            (n for n in _npz_names(what) if n in members), None)
        if chosen is None:
            wanted = " or ".join(f"'{n}'" for n in _npz_names(what))
            listed = ", ".join(f"'{n[:60]}'" for n in names[:10])
            raise InputFileError(
                f"{what} file '{p}' holds arrays {listed}{' …' if len(names) > 10 else ''} "
                f"and none is named {wanted}; save the {what} alone, or under the name {wanted}"
            )
        info = members[chosen]
        source = f"{what} file '{p}', array '{chosen[:60]}',"
        ratio = _ZIP_RATIO.get(info.compress_type)
        if ratio is None:
            raise InputFileError(
                f"{source} is compressed with zip method {info.compress_type}, which numpy "
                "never writes; write the file with numpy.savez or numpy.savez_compressed"
            )
        if (info.compress_size > p.stat().st_size
                or info.file_size > ratio * info.compress_size + 1024):
            raise InputFileError(
                f"{source} has a corrupt zip entry (claims {info.file_size:,} bytes from "
                f"{info.compress_size:,}); write the file again with numpy.savez"
            )
        with zf.open(info) as member:
            _check_npy_header(member, info.file_size, source, ".npy")
    with np.load(p, allow_pickle=False) as archive:
        return archive[chosen]


def _load_csv(p: Path, what: str) -> np.ndarray:
    import pandas as pd  # here, not at import: `bayesbench run` reads this module's constants

    try:
        text = pd.read_csv(p, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputFileError(f"{what} file '{p}' is empty; write one row per example") from None
    text = text.apply(lambda col: col.str.strip())

    def non_numeric(cells: pd.DataFrame) -> pd.DataFrame:
        # empty cells and "nan" are NaN, reported as such later, not as text
        blank_or_nan = cells.apply(lambda col: col.str.lower().isin(["", "nan"]))
        return cells.apply(pd.to_numeric, errors="coerce").isna() & cells.notna() & ~blank_or_nan

    if len(text) and non_numeric(text.iloc[:1]).to_numpy().any():  # a header row
        text = text.iloc[1:].reset_index(drop=True)
    values = text.apply(pd.to_numeric, errors="coerce")
    if len(values) == 0:
        raise InputFileError(f"{what} file '{p}' has no data rows; write one row per example")
    bad = non_numeric(text).to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputFileError(
            f"{what} file '{p}' has a non-numeric value {text.iat[row, col]!r} in data row "
            f"{row + 1}, column {col + 1}; the file must be numbers only, after one optional "
            "header row"
        )
    array = values.to_numpy()
    if array.dtype == object:  # a column of ints beside one with NaN
        array = array.astype(np.float64)
    return array[:, 0] if array.shape[1] == 1 else array


def _as_input(value: ArrayOrPath, what: str) -> tuple[np.ndarray, str]:
    """``(array, how to name it in messages)`` for an array or a path to one."""
    if isinstance(value, (str, os.PathLike)):
        return load_array(value, what), f"{what} file '{value}'"
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value), f"{what} array"


def _check_probabilities(array: np.ndarray, source: str) -> np.ndarray:
    try:
        return check_probabilities(array, source)
    except ValueError as exc:
        raise InputFileError(str(exc)) from None


def score_predictions(
    probs: ArrayOrPath,
    labels: ArrayOrPath,
    ood_probs: ArrayOrPath | None = None,
    n_bins: int = 15,
) -> dict[str, dict[str, float]]:
    """Every metric of saved predictions: ``{"test": {...}, "ood": {...}}``.

    probs: ``[N, C]`` probabilities or ``[S, N, C]`` predictive samples; labels: ``[N]`` (or
    ``[N, 1]``) integer classes in ``[0, C)``; ood_probs: optional ``[M, C]`` or
    ``[S, M, C]`` predictions on OOD inputs (then the ``"ood"`` entry is present). Each may be
    an array or a path read by :func:`load_array`. Rows must be probabilities: logits (negative
    values, rows not summing to 1 within 1e-3) are refused with a hint to apply softmax.
    Raises InputFileError naming the file at fault, ConfigError for a bad ``n_bins``.
    """
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or not 1 <= n_bins <= MAX_ECE_BINS:
        raise ConfigError(f"--bins must be an integer from 1 to {MAX_ECE_BINS}, got "
                          f"{n_bins!r}; e.g. --bins 15")
    samples, probs_source = _as_input(probs, "probs")
    samples = _check_probabilities(samples, probs_source)
    _, n, c = samples.shape

    y, labels_source = _as_input(labels, "labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1 and len(y) != n:
        raise InputFileError(
            f"{labels_source} has {len(y)} labels but {probs_source} has {n} rows; both must "
            "list the same examples in the same order"
        )
    try:
        y = check_labels(y, n, c, labels_source)
    except ValueError as exc:
        raise InputFileError(str(exc)) from None

    result = {TEST_SPLIT: evaluate_split(samples, y, n_bins=int(n_bins))}
    if ood_probs is not None:
        ood, ood_source = _as_input(ood_probs, "ood-probs")
        ood = _check_probabilities(ood, ood_source)
        if ood.shape[2] != c:
            raise InputFileError(
                f"{ood_source} has {ood.shape[2]} classes but {probs_source} has {c}; score "
                "OOD inputs with the same model as the test inputs"
            )
        result[OOD_SPLIT] = evaluate_ood(samples, ood)
    return result
