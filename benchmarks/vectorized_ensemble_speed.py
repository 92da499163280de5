"""Is training M ensemble members as one vmapped model faster on CPU than one after another?

    OMP_NUM_THREADS=1 python benchmarks/vectorized_ensemble_speed.py [--members 5] [--epochs 3]

Times ``DeepEnsemble(members=M).fit`` (M map networks through ``train_classifier``, one after
another) against ``DeepEnsemble(members=M, vectorized=True).fit`` (one ``torch.func`` vmapped
model over the stacked weights: same initialisations, data orders, optimizer, per-member
clipping and epochs) on digits with the default model, ``--repeats`` times in alternating
order, and prints the medians and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bayesbench.data.digits import Digits
from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.methods.deep_ensemble import DeepEnsemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = Digits().build(0)
    ctx = FitContext(training=TrainingConfig(epochs=args.epochs), seed=0)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for vectorized in ((False, True) if r % 2 == 0 else (True, False)):
            method = DeepEnsemble(members=args.members, vectorized=vectorized)
            t0 = time.perf_counter()
            method.fit(task, ctx)
            times[vectorized].append(time.perf_counter() - t0)
    print(f"digits ({len(task.train)} training examples), M={args.members}, {args.epochs} "
          f"epochs, {args.repeats} repeats, torch threads = {torch.get_num_threads()}")
    for vectorized, ts in times.items():
        name = "vectorized" if vectorized else "sequential"
        print(f"{name:11s} median {statistics.median(ts):6.2f} s   "
              + " ".join(f"{t:.2f}" for t in ts))
    speedup = statistics.median(times[False]) / statistics.median(times[True])
    print(f"speed-up of vectorized over sequential: {speedup:.2f}x")


if __name__ == "__main__":
    main()
