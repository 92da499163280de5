"""Per-example paired tests against map, from the predictions stored with each run.

The summary's test against map pairs seeds: with 3 seeds it detects only differences of
several seed standard deviations. The predictions each run keeps (:mod:`bayesbench.
predictions`) allow a second, far more powerful question: on the examples of the test
split, is the method's loss lower than map's by more than the noise of the test set? Both
runs of a pair share the seed, so they share the data split and score the same examples.

Per (label, dataset) over the base seeds both have test predictions for (a seed whose two
label vectors differ is left out: those runs did not score the same examples):

* **NLL and Brier**: the per-example differences ``d = loss(label) − loss(map)``; the mean
  difference is the mean over seeds of each seed's mean (for one seed it is the difference
  of the stored metrics); its standard error combines the seeds' per-example variances,
  ``SE² = Σ_s var_s / n_s / S²``, and the t statistic ``mean / SE`` has Welch–Satterthwaite
  degrees of freedom. With one seed this is :func:`scipy.stats.ttest_rel` on the examples.
* **accuracy**: McNemar's exact test on the discordant examples pooled over the seeds
  (``b``: the method right and map wrong, ``c``: the reverse; two-sided binomial test of
  ``b`` out of ``b + c`` at 1/2); the difference is ``(b − c) / N``.

**Shifted sets** (``split`` = :data:`SHIFTED`): where every shifted split of a run scores
the test examples themselves, corrupted (the same label vector on every kind and severity:
digits, mnist1d, bbc_news, italy_power_demand), each example's loss is first averaged over
all kinds and severities (accuracy: the fraction of them it is right on), so the examples stay
the independent units, and the stratified paired t-test above runs on those means, for
accuracy too. A dataset whose shifted sets hold other examples (actg175's cohorts) is not
tested this way: its splits would be neither paired per example nor independent.

Holm's correction is applied within each (dataset, split, metric) over the labels tested
against map. What this test does **not** cover: a method's training randomness. It conditions on the
trained models, so a significant result says the two trained models differ on this test
set, not that retraining with another seed would give the same order; the seed test of the
summary answers that.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bayesbench.metrics.classification import (
    per_example_brier,
    per_example_correct,
    per_example_nll,
)
from bayesbench.predictions import SplitPredictions, decode
from bayesbench.report.aggregate import SHIFT_MEAN
from bayesbench.report.files import markdown_table
from bayesbench.report.render import code_hash, fork_map, input_hash
from bayesbench.report.stats import ALPHA, holm_by
from bayesbench.results import TEST_SPLIT, parse_split

EXAMPLE_METRICS: list[tuple[str, str]] = [("nll", "NLL"), ("brier", "Brier"),
                                          ("accuracy", "accuracy")]
HIGHER_IS_BETTER = {"nll": False, "brier": False, "accuracy": True}
COLUMNS = ["label", "dataset", "split", "metric", "seeds", "n", "diff", "p", "p_holm",
           "outcome"]
SHIFTED = SHIFT_MEAN
"""The ``split`` of the tests on the shifted sets (each example's mean over every kind and
severity): the summary's shift-mean split."""


def stratified_paired_t(differences: Iterable[np.ndarray]) -> tuple[float, float]:
    """(mean difference, two-sided p) of paired differences in strata (one array per seed):
    the mean of the strata's means, its standard error from their variances, Welch–
    Satterthwaite degrees of freedom. All differences zero → p = 1; zero variance with a
    non-zero mean → p = 0; fewer than 2 examples in every stratum → p = NaN."""
    strata = [np.asarray(d, dtype=float) for d in differences]
    strata = [d for d in strata if len(d)]
    if not strata:
        return math.nan, math.nan
    mean = float(np.mean([d.mean() for d in strata]))
    if any(len(d) < 2 for d in strata):
        return mean, math.nan
    n = np.array([len(d) for d in strata])
    a = np.array([d.var(ddof=1) for d in strata]) / n  # the variance of each stratum's mean
    se2 = float(a.sum()) / len(strata) ** 2
    scale = max(1.0, abs(mean))
    if se2 <= (1e-12 * scale) ** 2:  # then some a > 0, so the dof below is finite
        return mean, 1.0 if abs(mean) <= 1e-12 * scale else 0.0
    dof = float(a.sum()) ** 2 / float(np.sum(a ** 2 / (n - 1)))
    t = mean / math.sqrt(se2)
    return mean, float(2.0 * stats.t.sf(abs(t), dof))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float]:
    """(accuracy of a − accuracy of b, two-sided exact McNemar p) of paired 0/1 outcomes."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    wins = int(np.sum(a & ~b))
    losses = int(np.sum(~a & b))
    diff = (wins - losses) / len(a) if len(a) else math.nan
    if wins + losses == 0:
        return diff, 1.0
    return diff, float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def _losses(p: SplitPredictions) -> dict[str, np.ndarray]:
    return {"nll": per_example_nll(p.probs, p.labels),
            "brier": per_example_brier(p.probs, p.labels),
            "accuracy": per_example_correct(p.probs, p.labels)}


Losses = dict[str, np.ndarray]
_LOSS_FIELDS = ("probs", "labels")  # all a loss needs: the rest of a blob stays compressed


def _is_shifted(split: str) -> bool:
    return parse_split(split)[0] == "shift"


def _split_losses(p: SplitPredictions | None) -> Losses | None:
    return None if p is None or p.labels is None else {**_losses(p), "labels": p.labels}


def _shifted_losses(shifted: list[SplitPredictions]) -> Losses | None:
    if not shifted or any(p.labels is None for p in shifted):
        return None
    labels = shifted[0].labels
    if any(not np.array_equal(p.labels, labels) for p in shifted[1:]):
        return None  # other examples per split (a cohort shift): not paired per example
    each = [_losses(p) for p in shifted]
    return {**{m: np.mean([e[m] for e in each], axis=0) for m in each[0]}, "labels": labels}


def run_losses(blob: bytes) -> dict[str, Losses | None]:
    """Per-example losses (and ``labels``) of a run's stored predictions for both tested
    splits, :data:`~bayesbench.results.TEST_SPLIT` and :data:`SHIFTED` (each example's mean
    over every shifted split, when they all hold the same examples), None for a split the
    run kept none of (or, for :data:`SHIFTED`, of other examples per split). One read of the
    blob, which decompresses only those splits' probabilities and labels."""
    kept = decode(blob, lambda name: name == TEST_SPLIT or _is_shifted(name), _LOSS_FIELDS)
    test = kept.pop(TEST_SPLIT, None)
    return {TEST_SPLIT: _split_losses(test), SHIFTED: _shifted_losses(list(kept.values()))}


def split_losses(blob: bytes, split: str) -> Losses | None:
    """One split of :func:`run_losses` (``split`` a stored split name or :data:`SHIFTED`);
    decompresses only what that split needs."""
    if split == SHIFTED:
        return _shifted_losses(list(decode(blob, _is_shifted, _LOSS_FIELDS).values()))
    return _split_losses(decode(blob, lambda name: name == split, _LOSS_FIELDS).get(split))


def losses_of(blobs: dict[str, bytes], workers: int | None = None
              ) -> dict[str, dict[str, Losses | None]]:
    """:func:`run_losses` of every blob (run key -> blob), in up to ``workers`` processes
    (None: the usable cores; decompressing the blobs is most of a report's own work)."""
    keys = list(blobs)
    done = fork_map(run_losses, [blobs[k] for k in keys], workers,
                    chunksize=max(1, len(keys) // 16))
    return dict(zip(keys, done))


def all_example_tests(runs: pd.DataFrame, blobs: dict[str, bytes],
                      reference: str | None = "map", workers: int | None = None
                      ) -> pd.DataFrame:
    """:func:`example_tests` of the test split then the shifted sets, from one read of each
    blob (:func:`losses_of`)."""
    if reference is None or not blobs:
        return pd.DataFrame(columns=COLUMNS)
    selected = set(runs["key"])
    losses = losses_of({k: b for k, b in blobs.items() if k in selected}, workers)
    parts = [t for t in (example_tests(runs, blobs, reference, split, losses)
                         for split in (TEST_SPLIT, SHIFTED)) if not t.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def example_tests(runs: pd.DataFrame, blobs: dict[str, bytes],
                  reference: str | None = "map", split: str = TEST_SPLIT,
                  losses: dict[str, dict[str, Losses | None]] | None = None) -> pd.DataFrame:
    """One row per (label, dataset, metric of :data:`EXAMPLE_METRICS`) tested against
    ``reference`` (module docstring). ``runs``: the report's selected runs (key, label,
    dataset, seed); ``blobs``: run key -> stored predictions; ``losses``: their
    :func:`losses_of` where already computed. Empty when no pair has predictions or there
    is no reference."""
    rows = []
    if reference is None:
        return pd.DataFrame(columns=COLUMNS)
    have = runs[runs["key"].isin(blobs)]
    cache = {key: by_split[split] for key, by_split in (losses or {}).items()}

    def of(key: str):
        if key not in cache:
            cache[key] = split_losses(blobs[key], split)
        return cache[key]

    for dataset, ds in have.groupby("dataset", sort=True):
        ref_keys = dict(zip(ds.loc[ds["label"] == reference, "seed"],
                            ds.loc[ds["label"] == reference, "key"]))
        if not ref_keys:
            continue
        for label, lab in ds[ds["label"] != reference].groupby("label", sort=True):
            pairs = []
            for seed, key in sorted(zip(lab["seed"], lab["key"])):
                if seed not in ref_keys:
                    continue
                mine, ref = of(key), of(ref_keys[seed])
                if mine is None or ref is None or not np.array_equal(mine["labels"],
                                                                     ref["labels"]):
                    continue
                pairs.append((mine, ref))
            if not pairs:
                continue
            n = sum(len(m["labels"]) for m, _ in pairs)
            for metric, _title in EXAMPLE_METRICS:
                if metric == "accuracy" and split != SHIFTED:  # 0/1 outcomes
                    diff, p = mcnemar_exact(np.concatenate([m[metric] for m, _ in pairs]),
                                            np.concatenate([r[metric] for _, r in pairs]))
                else:
                    diff, p = stratified_paired_t(m[metric] - r[metric] for m, r in pairs)
                rows.append({"label": label, "dataset": dataset, "split": split,
                             "metric": metric, "seeds": len(pairs), "n": n, "diff": diff,
                             "p": p})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm_by(out, ["dataset", "split", "metric"])
    good = np.where(out["metric"].map(HIGHER_IS_BETTER), 1.0, -1.0) * out["diff"] > 0
    significant = out["p_holm"] < ALPHA
    out["outcome"] = np.where(out["p_holm"].isna(), "untested",
                              np.where(~significant, "tie", np.where(good, "win", "loss")))
    return out[COLUMNS]


def example_tests_inputs(runs: pd.DataFrame, blobs: dict[str, bytes],
                         reference: str | None) -> str:
    """The input hash of :func:`all_example_tests` (:func:`bayesbench.report.render.
    input_hash`): the reference, each selected run with predictions (key, label, dataset,
    seed, the SHA-256 of its blob), the code the tests run (this module, the decoding, the
    per-example losses, Holm's correction, the split names) and numpy, scipy and pandas.
    Equal hashes, equal tests: a report folder holding them is not recomputed."""
    have = runs[runs["key"].isin(blobs)]
    pairs = sorted((str(k), str(lab), str(d), int(seed), hashlib.sha256(blobs[k]).hexdigest())
                   for k, lab, d, seed in have[["key", "label", "dataset", "seed"]]
                   .itertuples(index=False))
    code = [code_hash(f) for f in (decode, per_example_nll, holm_by, parse_split,
                                   markdown_table)] + [SHIFT_MEAN]
    return input_hash(all_example_tests, (reference, pairs, code),
                      packages=("numpy", "scipy", "pandas"))


_TEXT_COLUMNS = ["label", "dataset", "split", "metric", "outcome"]
_NUMBER_COLUMNS = ["diff", "p", "p_holm"]


def read_example_tests(path: str | Path) -> pd.DataFrame:
    """An ``example_tests.csv`` read back as :func:`all_example_tests` returned it (names as
    text even when they look like numbers, floats bit for bit); ValueError when its columns
    are not :data:`COLUMNS`."""
    frame = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False,
                        na_values={c: [""] for c in _NUMBER_COLUMNS},
                        float_precision="round_trip")
    if list(frame.columns) != COLUMNS:
        raise ValueError(f"{path}: columns {list(frame.columns)}, not {COLUMNS}")
    return frame


def _cell(row: pd.Series, degenerate: bool) -> str:
    text = f"{row['diff']:+.3f}"
    text = {"win": f"**{text}** ✓", "loss": f"{text} ✗"}.get(row["outcome"], text)
    return text + " †" if degenerate else text


def example_tests_markdown(tests: pd.DataFrame, reference: str = "map",
                           degenerate: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The report sections, one per split tested (the test split, then the shifted sets):
    per metric a label × dataset table of differences to ``reference`` with wins and losses
    marked; nothing when there are no tests. ``degenerate``: (dataset, label) pairs not above
    chance, marked † (their wins are not counted in the win/tie/loss column)."""
    out: list[str] = []
    for split in (TEST_SPLIT, SHIFTED):
        part = tests[tests["split"] == split]
        if not part.empty:
            out += _split_section(part, split, reference, set(degenerate))
    return out


def _split_section(tests: pd.DataFrame, split: str, reference: str,
                   flagged: set[tuple[str, str]]) -> list[str]:
    sizes = tests.groupby("dataset", sort=True)[["n", "seeds"]].max()
    datasets = list(sizes.index)
    examples = ", ".join(f"{d} {int(n)} ({int(seeds)} seed{'s' * (seeds != 1)})"
                         for d, n, seeds in sizes.itertuples())
    if split == SHIFTED:
        out = ["## Per-example tests against map (shifted sets)", "",
               "The same tests on the shifted sets, where they corrupt the test examples "
               "themselves: each example's loss is first averaged over every shift kind and "
               "severity (accuracy: the fraction of them it is right on), then the stratified "
               "paired t-test runs over the examples, for accuracy too; Holm-corrected within "
               f"each dataset and metric, α = {ALPHA}. Datasets whose shifted sets hold other "
               "examples (a cohort shift) are not tested here. n examples per dataset: "
               f"{examples}.", ""]
    else:
        out = ["## Per-example tests against map (test split)", "",
               f"From the predictions stored with each run: per dataset, the method's test "
               f"examples against `{reference}`'s on the same examples (same base seed = same "
               "split), over the seeds both kept predictions for. Cells: the difference to "
               f"`{reference}` (NLL and Brier: mean per-example difference, a stratified paired "
               "t-test over the examples; accuracy: the difference, McNemar's exact test); "
               f"Holm-corrected within each dataset and metric over the methods, α = {ALPHA}. "
               "**bold ✓**: significantly better, ✗: significantly worse, plain: not "
               "distinguishable from the test set's noise. These tests condition on the trained "
               "models (they measure test-set noise, not seed-to-seed training noise: the "
               f"summary's seed test does); n examples per dataset: {examples}.", ""]
    for metric, title in EXAMPLE_METRICS:
        part = tests[tests["metric"] == metric]
        if part.empty:
            continue
        cells = part.set_index(["label", "dataset"])
        rows = []
        for label in sorted(part["label"].unique()):
            row = [label]
            for d in datasets:
                row.append(_cell(cells.loc[(label, d)], (d, label) in flagged)
                           if (label, d) in cells.index else "–")
            mine = part[part["label"] == label]
            kept = [(d, label) not in flagged for d in mine["dataset"]]
            counts = mine[kept]["outcome"].value_counts()
            row.append(f"{counts.get('win', 0)}/{counts.get('tie', 0)}/{counts.get('loss', 0)}")
            rows.append(row)
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        out += [f"**{title} {arrow}, difference to `{reference}`**", "",
                markdown_table(["method", *datasets, "win/tie/loss"], rows), ""]
    if any(pair in flagged for pair in zip(tests["dataset"], tests["label"])):
        out += ["† not above chance on that dataset (see the summary): not counted in "
                "win/tie/loss.", ""]
    return out
