"""Print compact leaderboards from a results store: quality and training-time ratio to map.

Usage: python benchmarks/summarize_store.py [STORE] [--datasets a,b] [--metrics m1,m2]
                                           [--quick | --full]
Full runs when the store has any, else quick runs (as `bayesbench report` picks). The ratio
column divides each run's train_seconds by map's on the same dataset and seed,
measured in the same `bayesbench run` (so both saw the same machine load).
"""

from __future__ import annotations

import argparse

import pandas as pd

from bayesbench.report import select_runs
from bayesbench.store import ResultStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", nargs="?", default="results/bayesbench.sqlite")
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--metrics", default="accuracy,nll,ece,kl_true")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--quick", dest="quick", action="store_true", default=None)
    kind.add_argument("--full", dest="quick", action="store_false")
    args = ap.parse_args()
    tidy, quick = select_runs(ResultStore.open_existing(args.store).metrics_frame(),
                              quick=args.quick)
    print(f"{'quick' if quick else 'full'} runs of {args.store}")
    if args.datasets:
        tidy = tidy[tidy["dataset"].isin(args.datasets.split(","))]
    wanted = args.metrics.split(",")
    test = tidy[(tidy["split"] == "test") & tidy["metric"].isin(wanted)]
    shift = tidy[tidy["split"].str.startswith("shift/") & (tidy["metric"] == "accuracy")]
    shift = shift.groupby(["dataset", "label", "seed"])["value"].mean().rename("shift_acc")
    ood = tidy[tidy["split"].str.startswith("ood/") & (tidy["metric"] == "auroc_entropy")]
    ood = ood.groupby(["dataset", "label", "seed"])["value"].mean().rename("ood_auroc_ent")
    cost = tidy[tidy["metric"] == "train_seconds"].set_index(["dataset", "label", "seed"])["value"]
    if "map" in set(cost.index.get_level_values("label")):
        base = cost.xs("map", level="label").reindex(cost.index.droplevel("label")).to_numpy()
    else:  # no map run among these: no ratio to show
        print("no `map` run among them: the time_vs_map column is empty")
        base = float("nan")
    ratio = (cost / base).rename("time_vs_map")
    per_run = test.pivot_table(index=["dataset", "label", "seed"], columns="metric",
                               values="value")
    per_run = per_run.join([shift, ood, ratio])
    cols = [c for c in wanted if c in per_run] + ["shift_acc", "ood_auroc_ent", "time_vs_map"]
    agg = per_run[cols].groupby(["dataset", "label"]).agg(["mean", "std", "count"])
    pd.set_option("display.width", 250)
    for dataset, frame in agg.groupby(level="dataset"):
        print(f"\n## {dataset} (mean ± std over seeds; n = {int(frame.iloc[0, 2])})")
        rows = []
        for (_, label), r in frame.iterrows():
            rows.append([label] + [f"{r[(c, 'mean')]:.3f} ± {r[(c, 'std')]:.3f}" for c in cols])
        width = max(len(r[0]) for r in rows)
        print(" | ".join(["method".ljust(width)] + [c.ljust(15) for c in cols]))
        for r in rows:
            print(" | ".join([r[0].ljust(width)] + [c.ljust(15) for c in r[1:]]))


if __name__ == "__main__":
    main()
