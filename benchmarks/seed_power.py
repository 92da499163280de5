"""How many seeds the default suite needs for its claims to be testable, from stored results.

    .venv/bin/python benchmarks/seed_power.py reports/results.csv

For every dataset and summary metric of the report (NLL, ECE, shift accuracy, shift ECE, OOD
AUROC) it pools the seed-to-seed standard deviation of the paired differences against `map`
over every method (sd_pooled² = Σ (n_i − 1) s_i² / Σ (n_i − 1)), and prints:

- ``detectable @n``: the smallest true mean difference the two-sided paired t-test over n
  seeds detects with 80 % power at α = 0.05 (in the metric's own units;
  :func:`bayesbench.report.stats.detectable_effect` × sd_pooled), for n = 3, 5, 10;
- ``|diff| median``: the median over methods of the observed |mean difference| against map;
- ``testable @n``: how many of the methods' observed differences are at least that large
  (had each observed difference been the true one, the test would find it 80 % of the time).

The last lines price more seeds: the training time of one seed of the full grid (the sum of
``train_seconds`` per seed, CPU seconds on one thread) and what 5 and 10 seeds would cost.
Holm's correction over datasets makes every test stricter still, so these are upper bounds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayesbench.report.aggregate import add_summary_splits  # noqa: E402
from bayesbench.report.stats import detectable_effect  # noqa: E402
from bayesbench.report.summary import REFERENCE_LABEL, SUMMARY_METRICS  # noqa: E402

SEEDS = (3, 5, 10)


def paired_differences(tidy: pd.DataFrame, reference: str = REFERENCE_LABEL) -> pd.DataFrame:
    """Per (label, dataset, split, metric): n shared seeds, mean and sd of label − reference."""
    full = add_summary_splits(tidy)
    keep = pd.DataFrame(SUMMARY_METRICS, columns=["split", "metric", "title"])
    full = full.merge(keep, on=["split", "metric"])
    ref = full[full["label"] == reference][["dataset", "split", "metric", "seed", "value"]]
    pairs = full[full["label"] != reference].merge(
        ref.rename(columns={"value": "ref"}), on=["dataset", "split", "metric", "seed"])
    pairs["d"] = pairs["value"] - pairs["ref"]
    return (pairs.groupby(["label", "dataset", "split", "metric", "title"])["d"]
            .agg(n="count", diff="mean", sd="std").reset_index())


def power_table(diffs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (dataset, title), g in diffs.groupby(["dataset", "title"], sort=False):
        g = g[(g["n"] >= 2) & np.isfinite(g["sd"])]
        if g.empty:
            continue
        dof = (g["n"] - 1).sum()
        sd = math.sqrt(((g["n"] - 1) * g["sd"] ** 2).sum() / dof)
        row = {"dataset": dataset, "metric": title, "methods": len(g), "sd pooled": sd,
               "|diff| median": g["diff"].abs().median()}
        for n in SEEDS:
            mde = detectable_effect(n) * sd
            row[f"detectable @{n}"] = mde
            row[f"testable @{n}"] = int((g["diff"].abs() >= mde).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a report's results.csv")
    args = ap.parse_args()
    tidy = pd.read_csv(args.results)
    tidy = tidy[~tidy["quick"].astype(bool)]
    diffs = paired_differences(tidy[["label", "method", "dataset", "seed", "split", "metric",
                                     "value"]])
    table = power_table(diffs)
    order = [c for c in table.columns if not c.startswith("testable")] + [
        f"testable @{n}" for n in SEEDS]
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.4f}".format):
        print(table[order].to_string(index=False))
    total = table["methods"].sum()
    for n in SEEDS:
        print(f"testable with {n:2d} seeds: {table[f'testable @{n}'].sum()} of {total} "
              "method-vs-map differences")
    cost = tidy[(tidy["split"] == "cost") & (tidy["metric"] == "train_seconds")]
    per_seed = cost.groupby("seed")["value"].sum()
    if len(per_seed):
        one = per_seed.mean()
        print(f"training time of one seed of this grid: {one / 60:.1f} CPU minutes "
              f"({len(per_seed)} seeds stored); 5 seeds: {5 * one / 60:.0f}, 10 seeds: "
              f"{10 * one / 60:.0f} CPU minutes (halve for --workers 2 on 2 cores)")


if __name__ == "__main__":
    main()
