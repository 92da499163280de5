"""How training cost grows: map (softmax attention) against dirichlet_attention, in one run.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--lengths 16,32,64,128,256]
        [--sizes 128,256,512,1024] [--train 128] [--length 32] [--epochs 2] [--repeats 1]

The defaults take about 1.5 minutes on one core; raise ``--train``, ``--sizes``, ``--epochs``
and ``--repeats`` for steadier numbers or bigger problems.

Data: the ``markov`` dataset (token sequences from one Markov chain per class) built with
``length`` T tokens per sequence (the encoder sees T + 1 with its CLS token) and ``num_train``
training sequences; the default model and training config of ``benchmarks.yaml`` (d_model 64,
2 layers, 4 heads, batch 32).

1. Sequence length doubles (``--lengths``, ``--train`` training sequences each).
2. Training set doubles (``--sizes``, sequences of ``--length`` tokens).

An epoch's time is measured between the epoch-end callbacks of one fit of ``--epochs`` epochs
(the first epoch, with its warm-up, is left out); map and dirichlet_attention are fitted
alternately, ``--repeats`` times each in a rotating order; medians. The table gives seconds
per epoch, dirichlet_attention / map, and each method's growth from the row above: per
doubling of T, ~2x is linear cost and ~4x quadratic. Attention-space inference samples and
scores a Dirichlet for every one of the T x T attention weights per head and layer, so its
cost turns quadratic in T at much shorter sequences than softmax attention, whose T x T part
is two matrix products and a softmax beside the O(T d^2) linear layers. Training-set
doubling should cost ~2x per doubling for both (same work per example).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bayesbench.data.markov import MarkovChains
from bayesbench.methods.base import FitContext, Method, TrainingConfig
from bayesbench.methods.dirichlet_attention import DirichletAttention
from bayesbench.methods.map import MAP
from bayesbench.task import Task

METHODS: dict[str, Callable[[], Method]] = {"map": MAP, "dirichlet_attention": DirichletAttention}


def markov_task(length: int, num_train: int) -> Task:
    """A markov task with ``length`` tokens and ``num_train`` training sequences (small
    validation and test sets: only training is timed)."""
    return MarkovChains(length=length, num_train=num_train, num_val=8, num_test=8).build(0)


def epoch_times(method: Method, task: Task, epochs: int) -> list[float]:
    """Seconds of each epoch after the first, of one fit."""
    stamps: list[float] = []
    ctx = FitContext(training=TrainingConfig(epochs=epochs), seed=0,
                     on_epoch=lambda *_: stamps.append(time.perf_counter()))
    method.fit(task, ctx)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def per_epoch(task: Task, epochs: int, repeats: int) -> dict[str, float]:
    """Median seconds per epoch of each method on ``task`` (fits interleaved, rotating)."""
    names = list(METHODS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name] += epoch_times(METHODS[name](), task, epochs)
    return {name: statistics.median(t) for name, t in times.items()}


def sweep(label: str, values: list[int], make_task: Callable[[int], Task], epochs: int,
          repeats: int) -> list[tuple[int, dict[str, float]]]:
    print(f"{label:>8s} {'map s/epoch':>12s} {'dirichlet s/epoch':>18s} {'dir / map':>10s} "
          f"{'map growth':>11s} {'dir growth':>11s}", flush=True)
    rows: list[tuple[int, dict[str, float]]] = []
    for value in values:
        t = per_epoch(make_task(value), epochs, repeats)
        if rows:
            prev = rows[-1][1]
            growth = (f"{t['map'] / prev['map']:10.2f}x "
                      f"{t['dirichlet_attention'] / prev['dirichlet_attention']:10.2f}x")
        else:
            growth = f"{'':>11s} {'':>11s}"
        print(f"{value:8d} {t['map']:12.3f} {t['dirichlet_attention']:18.3f} "
              f"{t['dirichlet_attention'] / t['map']:9.2f}x {growth}", flush=True)
        rows.append((value, t))
    return rows


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int_list, default=[16, 32, 64, 128, 256],
                        help="sequence lengths T, comma-separated (default 16,...,256)")
    parser.add_argument("--sizes", type=int_list, default=[128, 256, 512, 1024],
                        help="training-set sizes, comma-separated (default 128,...,1024)")
    parser.add_argument("--train", type=int, default=128,
                        help="training sequences in the length sweep (default 128)")
    parser.add_argument("--length", type=int, default=32,
                        help="sequence length in the training-set sweep (default 32)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per fit; the first is left out (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="fits per method and row")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is left out)")
    torch.set_num_threads(1)
    cfg = TrainingConfig()
    print(f"markov tokens, d_model 64, 2 layers, 4 heads, batch {cfg.batch_size}, "
          f"torch threads {torch.get_num_threads()}; {args.epochs} epochs per fit (first left "
          f"out) x {args.repeats} repeat(s); growth = this row / the row above")
    print(f"\n1. sequence length T doubles ({args.train} training sequences)")
    sweep("T", args.lengths, lambda t: markov_task(t, args.train), args.epochs, args.repeats)
    print(f"\n2. training set doubles (T = {args.length})")
    sweep("N train", args.sizes, lambda n: markov_task(args.length, n), args.epochs,
          args.repeats)


if __name__ == "__main__":
    main()
