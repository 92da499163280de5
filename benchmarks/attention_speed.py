"""Cost of attention-space inference against softmax attention and map, in one process.

    OMP_NUM_THREADS=1 python benchmarks/attention_speed.py [--epochs 5] [--repeats 5]

1. Layer: one self-attention layer (d_model 64, 4 heads, batch 64, 17 tokens, training mode)
   forward + backward, with softmax rows, Dirichlet rows sampled by torch
   (``Dirichlet.rsample``), Dirichlet rows sampled by our normalised-Gamma sampler, and BAM's
   Weibull rows; the Dirichlet and BAM layers include their KL term, as in training. The
   variants are timed interleaved, ``--layer-calls`` calls per round, median over rounds.
2. Epoch: digits, default model and training config, map vs dirichlet_attention (our sampler
   and torch's) vs bam_attention, ``--epochs`` epochs per fit, ``--repeats`` fits each in a
   rotating order; an epoch's time is measured between the epoch-end callbacks (the first
   epoch, with its warm-up, is left out); median over all measured epochs.

Target: dirichlet_attention's epoch <= 1.5x map's (same distribution sampled).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bayesbench.data.digits import Digits
from bayesbench.methods.bam_attention import BAMAttention, BAMRows
from bayesbench.methods.base import FitContext, Method, TrainingConfig
from bayesbench.methods.dirichlet_attention import (
    DirichletAttention,
    DirichletRows,
    LatentAttentionRows,
)
from bayesbench.methods.map import MAP
from bayesbench.models import SoftmaxRows
from bayesbench.models.transformer import SelfAttention, default_linear

BATCH, HEADS, TOKENS, D_MODEL = 64, 4, 17, 64


def layer_step(rows: torch.nn.Module) -> Callable[[], None]:
    torch.manual_seed(0)
    layer = SelfAttention(D_MODEL, HEADS, rows, default_linear, attention_dropout=0.1).train()
    x = torch.randn(BATCH, TOKENS, D_MODEL)
    g = torch.randn(BATCH, TOKENS, D_MODEL)

    def step() -> None:
        loss = (layer(x) * g).sum()
        if isinstance(rows, LatentAttentionRows):
            loss = loss + rows.pop_kl() / BATCH
        layer.zero_grad(set_to_none=True)
        loss.backward()

    return step


def time_layers(rounds: int, calls: int) -> dict[str, float]:
    d_head = D_MODEL // HEADS
    steps = {
        "softmax": layer_step(SoftmaxRows()),
        "dirichlet (torch rsample)": layer_step(DirichletRows(HEADS, d_head, sampler="torch")),
        "dirichlet (ours)": layer_step(DirichletRows(HEADS, d_head)),
        "bam weibull": layer_step(BAMRows(HEADS, d_head)),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(5):
            step()
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            times[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def epoch_times(method: Method, task, epochs: int) -> list[float]:
    stamps: list[float] = []
    ctx = FitContext(
        training=TrainingConfig(epochs=epochs),
        seed=0,
        on_epoch=lambda *_: stamps.append(time.perf_counter()),
    )
    method.fit(task, ctx)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer-rounds", type=int, default=15)
    parser.add_argument("--layer-calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    layer = time_layers(args.layer_rounds, args.layer_calls)
    print(f"attention layer fwd+bwd: batch {BATCH}, {HEADS} heads, {TOKENS}x{TOKENS}, "
          f"d_model {D_MODEL}, torch threads = {torch.get_num_threads()}")
    print(f"{'rows':28s} {'median ms':>10s} {'vs softmax':>11s}")
    for name, ms in layer.items():
        print(f"{name:28s} {ms:10.2f} {ms / layer['softmax']:10.2f}x")
    print(f"ours vs torch rsample: "
          f"{layer['dirichlet (torch rsample)'] / layer['dirichlet (ours)']:.2f}x faster")

    task = Digits().build(0)
    makers: dict[str, Callable[[], Method]] = {
        "map": MAP,
        "dirichlet_attention": DirichletAttention,
        "dirichlet_attention (torch)": lambda: DirichletAttention(sampler="torch"),
        "bam_attention": BAMAttention,
    }
    names = list(makers)
    epochs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            epochs[name] += epoch_times(makers[name](), task, args.epochs)
    base = statistics.median(epochs["map"])
    print()
    print(f"digits training epoch: {len(task.train)} examples, batch "
          f"{TrainingConfig().batch_size}, {args.epochs} epochs x {args.repeats} repeats "
          f"(first epoch of each fit left out)")
    print(f"{'method':28s} {'median s':>9s} {'vs map':>8s}")
    for name, times in epochs.items():
        med = statistics.median(times)
        print(f"{name:28s} {med:9.3f} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
