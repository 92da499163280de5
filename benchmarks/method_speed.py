"""Training time of each method relative to `map`, measured in one process run.

Every method trains on the same task with the same model and epochs (the harness's shared
budget); repeats interleave the methods so slow drifts of the machine hit all of them alike.
Prints the median seconds and the median of each repeat's ratio to that repeat's map, and for
laplace also its post-hoc posterior fit as a percentage of map's training (target <= 5 %).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/method_speed.py --dataset digits \
        --epochs 5 --repeats 3 --methods map,mfvi,swag,sghmc,laplace,dirichlet_attention

A method may carry parameters the way sweep labels write them, e.g.
``mfvi@dropout=true+bf16_variance=false``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.registry import DATASETS, METHODS


def make_method(label: str):
    """``name`` or ``name@key=value+key=value`` (values parsed as YAML)."""
    name, _, settings = label.partition("@")
    params = {}
    for item in filter(None, settings.split("+")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return METHODS.get(name)(**params)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--methods", default="map,temperature_scaling,mc_dropout,mfvi,laplace,swag,"
                    "sghmc,sngp,dirichlet_attention,bam_attention")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.methods.split(",")
    if names[0] != "map":
        names = ["map"] + [n for n in names if n != "map"]
    task = DATASETS.get(args.dataset)().build(0)
    ctx = FitContext(training=TrainingConfig(epochs=args.epochs), seed=0)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    posterior_fit: list[float] = []  # laplace's post-hoc part, recorded by the method itself
    for _ in range(args.repeats):
        for name in names:
            method = make_method(name)
            t0 = time.perf_counter()
            method.fit(task, ctx)
            seconds[name].append(time.perf_counter() - t0)
            if name.split("@")[0] == "laplace":
                posterior_fit.append(method.posterior_seconds)
    print(f"{args.dataset}, {args.epochs} epochs, {len(task.train)} training examples, "
          f"{args.repeats} repeats, 1 thread")
    width = max(22, *(len(n) for n in names))
    print(f"{'method':{width}s} {'median s':>9s} {'x map':>7s}")
    for name in names:
        ratios = [s / m for s, m in zip(seconds[name], seconds["map"])]
        print(f"{name:{width}s} {statistics.median(seconds[name]):9.2f} "
              f"{statistics.median(ratios):7.2f}")
    if posterior_fit:
        share = [f / m for f, m in zip(posterior_fit, seconds["map"])]
        print(f"laplace posterior fit: {statistics.median(posterior_fit):.3f} s, "
              f"{100 * statistics.median(share):.2f} % of map's training")


if __name__ == "__main__":
    main()
