"""Training cost of the weight-space methods against map, in one process.

    OMP_NUM_THREADS=1 python benchmarks/weight_space_speed.py [--epochs 10] [--repeats 3]

Trains map, swag and sghmc on digits at the same number of epochs (default model and
training config otherwise), ``--repeats`` times in a rotating order, and prints the median
training seconds, the ratio of medians against map and the median of the per-repeat ratios
(each against the same repeat's map run: less sensitive to load drift). Laplace = map + a
post-hoc posterior fit: its fit time (features, GGN, evidence search) is timed on each
repeat's map network for every Hessian structure, as a percentage of map's training time.
Targets: swag <= 1.2x, sghmc <= 1.2x, laplace fit <= 5 % of map's training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bayesbench.data.digits import Digits
from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.laplace import HESSIAN_STRUCTURES, Laplace
from bayesbench.methods.map import MAP
from bayesbench.methods.sghmc import SGHMC
from bayesbench.methods.swag import SWAG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = Digits().build(0)
    ctx = FitContext(training=TrainingConfig(epochs=args.epochs), seed=0)
    makers = {"map": MAP, "swag": SWAG, "sghmc": SGHMC}
    train: dict[str, list[float]] = {name: [] for name in makers}
    posterior: dict[str, list[float]] = {h: [] for h in HESSIAN_STRUCTURES}
    names = list(makers)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            method = makers[name]()
            t0 = time.perf_counter()
            method.fit(task, ctx)
            train[name].append(time.perf_counter() - t0)
            if name == "map":
                for h in HESSIAN_STRUCTURES:
                    la = Laplace(hessian=h)
                    la.model, la.ctx = method.model, method.ctx
                    t0 = time.perf_counter()
                    la.fit_posterior(task.train)
                    posterior[h].append(time.perf_counter() - t0)
    base = statistics.median(train["map"])
    print(f"digits, {len(task.train)} training examples, {args.epochs} epochs, "
          f"{args.repeats} repeats, torch threads = {torch.get_num_threads()}")
    print(f"{'method':18s} {'median s':>9s} {'vs map':>8s} {'paired':>8s}   all runs (s)")
    for name, times in train.items():
        med = statistics.median(times)
        paired = statistics.median(t / b for t, b in zip(times, train["map"]))
        print(f"{name:18s} {med:9.2f} {med / base:7.2f}x {paired:7.2f}x   "
              + " ".join(f"{t:.2f}" for t in times))
    for h, times in posterior.items():
        med = statistics.median(times)
        paired = statistics.median(t / b for t, b in zip(times, train["map"]))
        print(f"{'laplace fit ' + h:18s} {med:9.3f} {100 * med / base:7.2f}% "
              f"{100 * paired:7.2f}%   "
              + " ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
    main()
