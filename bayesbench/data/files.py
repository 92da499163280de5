"""The user's own data: CSV, Parquet or NPZ files as a benchmark dataset.

One training file (optionally separate validation and test files, otherwise split from the
training file), shifted test sets as one file per severity, and OOD sets as unlabelled files.
See ``docs/files-dataset.md`` for the format, every parameter and every error.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.splits import split_state, stratified_holdout, stratified_split
from bayesbench.errors import DataError
from bayesbench.task import InputKind, Split, Task

if TYPE_CHECKING:  # pandas is imported where a table is read: not on import (0.3 s)
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")
NPZ_SUFFIX = ".npz"
SUPPORTED_SUFFIXES = (*TABLE_SUFFIXES, NPZ_SUFFIX)

PAD_ID = 0
"""Token id of padding (``Task.padding_id``: masked out of attention and pooling)."""
UNKNOWN_ID = 1
"""Token id of every word outside the training vocabulary."""
FIRST_WORD_ID = 2
MAX_VOCAB_SIZE = 1_000_000
"""Most token ids a vocabulary may hold (NPZ ids below it; text vocabularies ``max_vocab``
+ 2): the embedding table has one row per id, so a stray id of 10^12 would need terabytes."""

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (any script); all else separates


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it on every character that is not a letter or digit.

    >>> tokenize("BP: 120/80, HR=95 bpm")
    ['bp', '120', '80', 'hr', '95', 'bpm']
    """
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Sequence[str], min_count: int, max_vocab: int) -> dict[str, int]:
    """Word -> id for the words of ``texts`` seen at least ``min_count`` times.

    At most ``max_vocab`` words are kept, the most frequent first (ties in alphabetical
    order); ids start at 2 (0 = padding, 1 = unknown), so ``vocab_size = 2 + len(vocab)``.
    """
    counts = Counter(word for text in texts for word in tokenize(text))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return {w: FIRST_WORD_ID + i for i, w in enumerate(kept[:max_vocab])}


def id_to_word(vocab: dict[str, int]) -> list[str | None]:
    """``Task.vocabulary`` of a word -> id map with ids from 2: the word of every id, None for
    padding (0) and the unknown word (1).

    >>> id_to_word({"the": 2, "cat": 3})
    [None, None, 'the', 'cat']
    """
    words: list[str | None] = [None] * (FIRST_WORD_ID + len(vocab))
    for word, i in vocab.items():
        words[i] = word
    return words


def encode_texts(texts: Sequence[str], vocab: dict[str, int], max_length: int) -> np.ndarray:
    """Token ids ``[N, max_length]`` (int64): the first ``max_length`` words of each text,
    unknown words -> 1, right-padded with 0."""
    out = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for i, text in enumerate(texts):
        ids = [vocab.get(w, UNKNOWN_ID) for w in tokenize(text)[:max_length]]
        out[i, : len(ids)] = ids
    return out


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per column; columns constant in training (std 0) are only centred."""
    return (x - mean) / np.where(std > 0, std, 1.0)


def _sorted_labels(values: set[Hashable]) -> list[Hashable]:
    try:
        return sorted(values)  # type: ignore[type-var]
    except TypeError:  # mixed types, e.g. 1 and "a": a stable order all the same
        return sorted(values, key=lambda v: (type(v).__name__, repr(v)))


def _show(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _close(name: str, available: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, [str(a) for a in available], n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


@dataclass
class _Source:
    """One loaded file: its inputs and (raw, unmapped) labels.

    x: float64 ``[N, F]`` features, float ``[N, T, F]`` vectors, int64 ``[N, T]`` token ids,
    or a list of N texts (text mode); labels: N raw label values or None (OOD files).
    """

    where: str  # "test file 'data/test.csv'", used to start every message about it
    x: Any
    labels: list[Hashable] | None

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class _Loaded:
    """Everything read and validated from the files (seed-independent)."""

    input_kind: InputKind
    train: _Source
    val: _Source | None
    test: _Source | None
    shifted: dict[str, list[_Source]]
    ood: dict[str, _Source]
    classes: list[Hashable]
    train_y: np.ndarray  # class index of every row of the training file
    feature_names: list[str] = field(default_factory=list)
    vocab_size: int | None = None  # NPZ token ids only; text mode builds it per seed


class FileDataset(Dataset):
    """The user's own data from CSV, Parquet or NPZ files.

    Files: ``train`` (required), optional ``val`` and ``test`` (whichever is absent is split
    from the training file, stratified by label, deterministic in the seed: ``val_fraction``
    and ``test_fraction`` of its rows), ``shifted`` (shift kind -> one labelled file per
    severity, mildest first: severity 1..k) and ``ood`` (OOD set name -> file; labels not
    needed). Paths are relative to the current working directory; ``~`` is expanded.
    CSV/Parquet and NPZ cannot be mixed; CSV and Parquet can.

    Tables (CSV, Parquet): labels in ``label_column``; classes are the sorted distinct
    labels of the training file, mapped to 0..C-1 (``class_names`` keeps their text).
    Inputs are either

    - ``features``: ``feature_columns`` (default: every numeric column of the training file
      but the label), ``[N, F]`` float32 standardised with the mean and standard deviation
      (ddof 0) of the training split: ``(x - mean) / std``; or
    - ``tokens`` when ``text_column`` is set: lower-cased, split on non-alphanumerics, words
      seen ``min_count`` times in the training split (at most ``max_vocab``, most frequent
      first) get ids 2.., others 1 (unknown); ``[N, max_length]`` int64, truncated, right-padded
      with 0, the task's ``padding_id`` (no attention to padding, left out of pooling); the
      task's ``vocabulary`` keeps the words, for backbones with their own tokenizer. Missing
      text counts as empty.

    NPZ: arrays ``x`` and ``y`` (``y`` optional in OOD files); ``x`` float ``[N, F]`` ->
    ``features`` (standardised as above), float ``[N, T, F]`` -> ``vectors`` (used as
    given), int ``[N, T]`` -> ``tokens`` with ``vocab_size`` = largest id of the training file
    + 1 (ids in other files must lie below it).

    :meth:`check` reads and validates every file once (cached on the instance) and raises
    :class:`~bayesbench.errors.DataError` naming the file and the fix.
    """

    name = "files"
    version = 2  # 2: text pads with a masked padding id (was an ordinary token)
    description = (
        "your own data: CSV, Parquet or NPZ files (features, text or sequences), with shifted "
        "and OOD files; see docs/files-dataset.md"
    )

    def __init__(
        self,
        train: str = "",
        val: str | None = None,
        test: str | None = None,
        label_column: str = "label",
        text_column: str | None = None,
        feature_columns: list[str] | None = None,
        shifted: dict[str, list[str]] | None = None,
        ood: dict[str, str] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        max_length: int = 64,
        min_count: int = 2,
        max_vocab: int = 20000,
    ) -> None:
        for param, value in (("train", train), ("val", val), ("test", test),
                             ("label_column", label_column), ("text_column", text_column)):
            if value is not None and not isinstance(value, str):
                raise DataError(f"files: {param}={value!r} must be a string")
        if feature_columns is not None and (
            isinstance(feature_columns, str)
            or not all(isinstance(c, str) for c in feature_columns)
        ):
            raise DataError(
                f"files: feature_columns={feature_columns!r} must be a list of column names, "
                "e.g. [age, heart_rate]"
            )
        if text_column is not None and feature_columns is not None:
            raise DataError(
                "files: set text_column (token inputs) or feature_columns (tabular inputs), "
                "not both"
            )
        if label_column in ([text_column] + list(feature_columns or [])):
            raise DataError(
                f"files: the label column '{label_column}' cannot also be an input column"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise DataError(f"files: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val is None and test is None and val_fraction + test_fraction >= 1:
            raise DataError(
                f"files: val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves "
                "no training data; make their sum less than 1"
            )
        for param, value in (("max_length", max_length), ("min_count", min_count),
                             ("max_vocab", max_vocab)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"files: {param}={value!r} must be a positive integer")
        if max_vocab > MAX_VOCAB_SIZE - FIRST_WORD_ID:
            raise DataError(f"files: max_vocab={max_vocab} is over the limit of "
                            f"{MAX_VOCAB_SIZE - FIRST_WORD_ID}; e.g. max_vocab: 20000")

        self.shifted: dict[str, list[str]] = {}
        if shifted is not None:
            if not isinstance(shifted, dict):
                raise DataError(
                    "files: shifted must map a shift kind to its files, one per severity, "
                    "e.g. {age: [older.csv, oldest.csv]}"
                )
            for kind, paths in shifted.items():
                paths = [paths] if isinstance(paths, str) else paths
                if (not isinstance(paths, (list, tuple)) or not paths
                        or not all(isinstance(p, str) and p for p in paths)):
                    raise DataError(
                        f"files: shifted.{kind} must be a list of file paths, one per severity "
                        f"(mildest first), e.g. [{kind}_1.csv, {kind}_2.csv]; got {paths!r}"
                    )
                self.shifted[str(kind)] = list(paths)
        self.ood: dict[str, str] = {}
        if ood is not None:
            if not isinstance(ood, dict) or not all(
                isinstance(p, str) and p for p in ood.values()
            ):
                raise DataError(
                    f"files: ood must map an OOD set name to one file path, "
                    f"e.g. {{newborn: icu_newborn.csv}}; got {ood!r}"
                )
            self.ood = {str(k): p for k, p in ood.items()}

        self.train = train
        self.val = val
        self.test = test
        self.label_column = label_column
        self.text_column = text_column
        self.feature_columns = None if feature_columns is None else list(feature_columns)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.max_length = max_length
        self.min_count = min_count
        self.max_vocab = max_vocab
        self._loaded: _Loaded | None = None

    # ------------------------------------------------------------------ public interface

    def check(self) -> None:
        """Read and validate every file, the split and the vocabulary; raise DataError."""
        data = self._load()
        train_idx, _, _ = self._split_indices(data, seed=0)
        if data.input_kind == "tokens" and isinstance(data.train.x, list):
            self._vocabulary(data, train_idx)

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        data = self._load()
        train_idx, val_idx, test_idx = self._split_indices(data, seed)
        encode, vocab_size, words = self._encoder(data, train_idx)

        def labelled(source: _Source, index: np.ndarray | None = None) -> Split:
            y = self._class_indices(data, source)
            if index is not None:
                x = [source.x[i] for i in index] if isinstance(source.x, list) else source.x[index]
                y = y[index]
            else:
                x = source.x
            return Split(encode(x), torch.as_tensor(y, dtype=torch.long))

        train = labelled(data.train, train_idx)
        val = labelled(data.val) if data.val is not None else labelled(data.train, val_idx)
        test = labelled(data.test) if data.test is not None else labelled(data.train, test_idx)
        return Task(
            name=self.name,
            input_kind=data.input_kind,
            num_classes=len(data.classes),
            train=train,
            val=val,
            test=test,
            shifted={
                kind: {s: labelled(src) for s, src in enumerate(sources, 1)}
                for kind, sources in data.shifted.items()
            },
            ood={name: encode(src.x) for name, src in data.ood.items()},
            vocab_size=vocab_size,
            class_names=[str(c) for c in data.classes],
            padding_id=PAD_ID if words is not None else None,
            vocabulary=words,
        )

    @property
    def feature_names(self) -> list[str]:
        """The feature columns used (tables in ``features`` mode), after :meth:`check`."""
        return list(self._load().feature_names)

    # ------------------------------------------------------------------ splitting, encoding

    def _split_indices(
        self, data: _Loaded, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Rows of the training file in train / val / test (None: that split has its own file)."""
        rows = np.arange(len(data.train))
        if data.val is not None and data.test is not None:
            return rows, None, None
        state = split_state(seed)
        y = data.train_y
        try:
            if data.val is None and data.test is None:
                return stratified_split(rows, y, self.val_fraction, self.test_fraction, state)
            fraction = self.val_fraction if data.val is None else self.test_fraction
            train, held = stratified_holdout(rows, y, fraction, state)
        except ValueError as exc:
            missing = " and ".join(
                p for p, given in (("val", data.val), ("test", data.test)) if given is None
            )
            raise DataError(
                f"{data.train.where}: cannot split its {len(rows)} rows stratified by label into "
                f"{missing} with val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction} ({exc}); add rows of the rarest classes, "
                f"use larger fractions, or give separate {missing} files"
            ) from None
        if data.val is None:
            return np.sort(train), np.sort(held), None
        return np.sort(train), None, np.sort(held)

    def _vocabulary(self, data: _Loaded, train_idx: np.ndarray) -> dict[str, int]:
        texts = [data.train.x[i] for i in train_idx]
        vocab = build_vocabulary(texts, self.min_count, self.max_vocab)
        if not vocab:
            raise DataError(
                f"{data.train.where}: no word of text column '{self.text_column}' occurs "
                f"min_count={self.min_count} times in the training split, so every word would "
                "be unknown; lower min_count or give more training text"
            )
        return vocab

    def _encoder(self, data: _Loaded, train_idx: np.ndarray
                 ) -> tuple[Any, int | None, list[str | None] | None]:
        """The map from raw inputs of any file to the model's tensor, fitted on the training
        split (standardisation for features, the vocabulary for text), the vocab_size, and
        for text the word of every id (``Task.vocabulary``)."""
        if data.input_kind == "features":
            train_x = data.train.x[train_idx]
            mean, std = train_x.mean(axis=0), train_x.std(axis=0)
            return (lambda x: torch.as_tensor(standardize(x, mean, std), dtype=torch.float32),
                    None, None)
        if data.input_kind == "vectors":
            return lambda x: torch.as_tensor(x, dtype=torch.float32), None, None
        if isinstance(data.train.x, list):  # text
            vocab = self._vocabulary(data, train_idx)
            return (lambda x: torch.as_tensor(encode_texts(x, vocab, self.max_length)),
                    FIRST_WORD_ID + len(vocab), id_to_word(vocab))
        return lambda x: torch.as_tensor(x, dtype=torch.long), data.vocab_size, None

    @staticmethod
    def _class_indices(data: _Loaded, source: _Source) -> np.ndarray:
        if source is data.train:
            return data.train_y
        index = {c: i for i, c in enumerate(data.classes)}
        assert source.labels is not None
        return np.array([index[v] for v in source.labels], dtype=np.int64)

    # ------------------------------------------------------------------ loading, validation

    def _load(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = self._read_all()
        return self._loaded

    def _read_all(self) -> _Loaded:
        if not self.train:
            raise DataError(
                "train: PATH.csv|.parquet|.npz is required; set params.train to the training "
                "file (see docs/files-dataset.md)"
            )
        roles: list[tuple[str, str, bool]] = [("train file", self.train, True)]
        roles += [(f"{r} file", p, True) for r, p in (("val", self.val), ("test", self.test)) if p]
        for kind, paths in self.shifted.items():
            roles += [(f"shifted '{kind}' severity {s} file", p, True)
                      for s, p in enumerate(paths, 1)]
        roles += [(f"ood '{name}' file", p, False) for name, p in self.ood.items()]

        train_is_npz = self._suffix(roles[0][0], self.train) == NPZ_SUFFIX
        for role, path in ((r, p) for r, p, _ in roles[1:]):
            if (self._suffix(role, path) == NPZ_SUFFIX) != train_is_npz:
                raise DataError(
                    f"{role} '{path}': the training file is "
                    f"{'NPZ' if train_is_npz else 'a table (CSV/Parquet)'}, so this file must be "
                    f"{'.npz' if train_is_npz else '.csv or .parquet'} too; convert it"
                )
        if train_is_npz:
            if self.text_column is not None or self.feature_columns is not None:
                raise DataError(
                    f"train file '{self.train}': text_column and feature_columns apply to CSV "
                    "and Parquet files only; remove them for NPZ files (arrays x and y)"
                )
            sources = [self._read_npz(role, path, need) for role, path, need in roles]
            return self._assemble(sources, [])
        frames = [(role, path, need, self._read_table(role, path)) for role, path, need in roles]
        sources, feature_names = self._table_sources(frames)
        return self._assemble(sources, feature_names)

    @staticmethod
    def _suffix(role: str, path: str) -> str:
        suffix = Path(path).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise DataError(
                f"{role} '{path}': unsupported file type '{suffix or '(no extension)'}'; use "
                ".csv, .parquet or .npz (arrays x and y)"
            )
        return suffix

    @staticmethod
    def _existing(role: str, path: str) -> Path:
        p = Path(path).expanduser()
        if not p.exists():
            where = "" if p.is_absolute() else (
                f" (relative paths are resolved against the current directory {Path.cwd()})"
            )
            raise DataError(f"{role} '{path}': no such file{where}; check the path")
        if not p.is_file():
            raise DataError(f"{role} '{path}': is a directory, not a file; give the file's path")
        return p

    def _read_table(self, role: str, path: str) -> pd.DataFrame:
        import pandas as pd

        suffix = self._suffix(role, path)
        p = self._existing(role, path)
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError(
                    f"{role} '{path}': reading Parquet needs pyarrow; pip install pyarrow "
                    "(or pip install 'bayesbench[parquet]'), or save the file as CSV"
                ) from None
        try:
            if suffix == ".csv":
                frame = pd.read_csv(p)
            else:
                frame = pd.read_parquet(p, engine="pyarrow")
        except pd.errors.EmptyDataError:
            raise DataError(
                f"{role} '{path}': the file is empty; write a header row and data rows"
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{role} '{path}': not UTF-8 text ({exc.reason}); save it as UTF-8 CSV"
            ) from None
        except Exception as exc:  # parser and Arrow errors alike: the file is unusable
            kind = "CSV" if suffix == ".csv" else "Parquet"
            raise DataError(
                f"{role} '{path}': cannot read it as {kind} ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}); check that it is a valid {kind} file, e.g. by "
                "opening it with pandas"
            ) from None
        if len(frame) == 0:
            raise DataError(f"{role} '{path}': has no data rows; it needs at least one")
        frame.columns = [str(c) for c in frame.columns]
        return frame

    def _column(self, role: str, path: str, frame: pd.DataFrame, column: str,
                what: str) -> pd.Series:
        if column not in frame.columns:
            raise DataError(
                f"{role} '{path}': no {what} column '{column}'.{_close(column, frame.columns)} "
                f"Available columns: {_show(list(frame.columns), 30)}"
            )
        return frame[column]

    def _table_sources(
        self, frames: list[tuple[str, str, bool, pd.DataFrame]]
    ) -> tuple[list[_Source], list[str]]:
        """Labels and inputs of every table; also the feature columns used ([] for text)."""
        import pandas as pd

        train_role, train_path, _, train_frame = frames[0]
        names: list[str] = []
        if self.text_column is None:
            if self.feature_columns is not None:
                names = self.feature_columns
                if not names:
                    raise DataError("files: feature_columns is empty; list at least one column")
            else:
                names = self._default_features(train_role, train_path, train_frame)
        sources = []
        for role, path, need_labels, frame in frames:
            labels = None
            if need_labels:
                col = self._column(role, path, frame, self.label_column, "label")
                missing = int(col.isna().sum())
                if missing:
                    raise DataError(
                        f"{role} '{path}': label column '{self.label_column}' is empty in "
                        f"{missing} of {len(col)} rows (first at data row "
                        f"{int(np.flatnonzero(col.isna().to_numpy())[0]) + 1}); fill in or drop "
                        "those rows"
                    )
                labels = col.tolist()
            if self.text_column is not None:
                col = self._column(role, path, frame, self.text_column, "text")
                x: Any = ["" if pd.isna(v) else str(v) for v in col.tolist()]
            else:
                x = self._features(role, path, frame, names)
            sources.append(_Source(f"{role} '{path}'", x, labels))
        return sources, list(names)

    def _default_features(self, role: str, path: str, frame: pd.DataFrame) -> list[str]:
        import pandas as pd

        names = []
        for name in frame.columns:
            if name == self.label_column:
                continue
            col = frame[name]
            if pd.api.types.is_numeric_dtype(col):
                names.append(name)
                continue
            # a numeric column spoiled by a few stray strings ("?", "n/a") must not vanish
            # silently from the features: report it as a non-numeric feature column
            values = col.dropna()
            parsed = pd.to_numeric(values, errors="coerce")
            if len(values) and parsed.notna().sum() >= 0.5 * len(values):
                self._features(role, path, frame, [name])
        if not names:
            raise DataError(
                f"{role} '{path}': no numeric column besides the label '{self.label_column}'; "
                f"set feature_columns (numeric columns) or text_column. "
                f"Available columns: {_show(list(frame.columns), 30)}"
            )
        return names

    def _features(self, role: str, path: str, frame: pd.DataFrame,
                  names: list[str]) -> np.ndarray:
        import pandas as pd

        columns = []
        for name in names:
            col = self._column(role, path, frame, name, "feature")
            if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
                parsed = pd.to_numeric(col, errors="coerce")
                bad = np.flatnonzero((parsed.isna() & col.notna()).to_numpy())
                row = int(bad[0]) if len(bad) else 0
                raise DataError(
                    f"{role} '{path}': feature column '{name}' is not numeric: data row "
                    f"{row + 1} has {col.iloc[row]!r} ({len(bad)} of {len(col)} values are not "
                    "numbers); encode it as numbers, or leave it out of feature_columns"
                )
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
            nan = int(np.isnan(values).sum())
            if nan:
                raise DataError(
                    f"{role} '{path}': feature column '{name}' has {nan} missing values (NaN) in "
                    f"{len(values)} rows (first at data row "
                    f"{int(np.flatnonzero(np.isnan(values))[0]) + 1}); impute them (e.g. with "
                    "the training median), or drop those rows or the column"
                )
            if not np.isfinite(values).all():
                raise DataError(
                    f"{role} '{path}': feature column '{name}' has "
                    f"{int((~np.isfinite(values)).sum())} infinite values; replace them"
                )
            columns.append(values)
        return np.stack(columns, axis=1)

    def _read_npz(self, role: str, path: str, need_labels: bool) -> _Source:
        self._suffix(role, path)
        p = self._existing(role, path)
        try:
            with np.load(p, allow_pickle=False) as archive:
                names = list(archive.files)
                required = ["x", "y"] if need_labels else ["x"]
                if any(k not in names for k in required):
                    raise DataError(
                        f"{role} '{path}': needs arrays {' and '.join(required)}, found "
                        f"{names or 'none'}; save it with np.savez(path, x=inputs, y=labels)"
                        + ("" if need_labels else " (y is optional for OOD files)")
                    )
                x = archive["x"]
                y = archive["y"] if need_labels else None
        except DataError:
            raise
        except Exception as exc:  # not a zip, truncated, object arrays (pickle): unusable
            hint = (" (object arrays need pickle: save labels as numbers or fixed-width strings)"
                    if "pickle" in str(exc) else "")
            raise DataError(
                f"{role} '{path}': cannot read it as NPZ ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}){hint}; write it with np.savez(path, x=..., y=...)"
            ) from None
        where = f"{role} '{path}'"
        if len(x.shape) == 0 or x.shape[0] == 0:
            raise DataError(f"{where}: array x has no rows; it needs at least one")
        shape = f"x has shape {list(x.shape)} and dtype {x.dtype}"
        if np.issubdtype(x.dtype, np.floating) and x.ndim in (2, 3):
            if not np.isfinite(x).all():
                n = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
                raise DataError(
                    f"{where}: x has NaN or infinite values in {n} of {len(x)} rows; impute or "
                    "drop them"
                )
            x = x.astype(np.float64) if x.ndim == 2 else x
        elif np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
            if x.min() < 0:
                raise DataError(f"{where}: token ids in x must be >= 0, found {int(x.min())}")
            if x.max() >= MAX_VOCAB_SIZE:
                raise DataError(
                    f"{where}: token id {int(x.max())} in x is not below {MAX_VOCAB_SIZE}, the "
                    "vocabulary limit (one embedding row per id); renumber the ids 0..V-1, "
                    "e.g. np.unique(x, return_inverse=True)"
                )
            x = x.astype(np.int64)
        else:
            raise DataError(
                f"{where}: {shape}; expected float [N, F] (features), float [N, T, F] "
                "(vectors) or integer [N, T] (token ids)"
            )
        labels = None
        if y is not None:
            if y.shape != (len(x),):
                raise DataError(
                    f"{where}: y has shape {list(y.shape)}; expected one label per row of x, "
                    f"shape [{len(x)}]"
                )
            labels = y.tolist()
            if any(v != v for v in labels if isinstance(v, float)):  # NaN labels
                raise DataError(f"{where}: y has NaN labels; fill in or drop those rows")
        return _Source(where, x, labels)

    def _assemble(self, sources: list[_Source], feature_names: list[str]) -> _Loaded:
        train = sources[0]
        if isinstance(train.x, list):
            kind: InputKind = "tokens"
        elif train.x.ndim == 3:
            kind = "vectors"
        elif np.issubdtype(train.x.dtype, np.integer):
            kind = "tokens"
        else:
            kind = "features"
        if not isinstance(train.x, list):
            for src in sources[1:]:
                same_kind = np.issubdtype(src.x.dtype, np.integer) == np.issubdtype(
                    train.x.dtype, np.integer)
                if not same_kind or src.x.shape[1:] != train.x.shape[1:]:
                    raise DataError(
                        f"{src.where}: x has shape {list(src.x.shape)} ({src.x.dtype}) but the "
                        f"training file's x has [N, {', '.join(map(str, train.x.shape[1:]))}] "
                        f"({train.x.dtype}); every file needs the same kind and shape per row"
                    )

        assert train.labels is not None
        classes = _sorted_labels(set(train.labels))
        if len(classes) < 2:
            raise DataError(
                f"{train.where}: every row has the label {classes[0]!r}; a classifier needs "
                "at least two classes in the training file"
            )
        known = set(classes)
        for src in sources[1:]:
            if src.labels is None:
                continue
            unseen = Counter(v for v in src.labels if v not in known)
            if unseen:
                listed = ", ".join(f"{v!r} ({_rows(n)})" for v, n in unseen.most_common(10))
                raise DataError(
                    f"{src.where}: labels not present in the training file: {listed}; drop "
                    f"those rows or add examples of them to the training file. Training "
                    f"classes: {_show(classes, 20)}"
                )
        index = {c: i for i, c in enumerate(classes)}

        vocab_size = None
        if kind == "tokens" and not isinstance(train.x, list):
            vocab_size = int(train.x.max()) + 1
            for src in sources[1:]:
                if int(src.x.max()) >= vocab_size:
                    raise DataError(
                        f"{src.where}: token id {int(src.x.max())} is not below vocab_size = "
                        f"{vocab_size} (largest id of the training file + 1); map ids never "
                        "seen in training to an unknown-token id used in training"
                    )

        it = iter(sources[1:])
        val = next(it) if self.val else None
        test = next(it) if self.test else None
        shifted = {kind_: [next(it) for _ in paths] for kind_, paths in self.shifted.items()}
        ood = {name: next(it) for name in self.ood}
        return _Loaded(
            input_kind=kind, train=train, val=val, test=test, shifted=shifted, ood=ood,
            classes=classes,
            train_y=np.array([index[v] for v in train.labels], dtype=np.int64),
            feature_names=feature_names,
            vocab_size=vocab_size,
        )
