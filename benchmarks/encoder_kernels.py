"""The built-in encoder's own dropout and short-row softmax against torch's, in one run.

    OMP_NUM_THREADS=1 python benchmarks/encoder_kernels.py [--batch 512] [--repeats 50]

For each default dataset's sequence length (the encoder sees the tokens plus its CLS token)
and an evaluation batch of ``--batch`` inputs with the default model (d_model 64, 4 heads):

- dropout on the ``[B, T, 64]`` activations: ``F.dropout`` (torch's bernoulli kernel)
  against :class:`bayesbench.models.transformer.Dropout` (keep mask as ``uniform >= p``);
- the attention softmax over ``[B, 4, T, T]`` scores: ``Tensor.softmax`` against
  :func:`bayesbench.models.transformer.softmax_rows` (written out below 16 keys),

each timed forward only (an MC-dropout or sampling prediction) and forward + backward on a
training batch of 32, interleaved, medians of ``--repeats``. The ratio is ours / torch's
(below 1: ours is faster). Both kernels draw or round differently from torch's, which is why
the encoder's backbone version is 2; tests/test_model.py checks them against torch's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bayesbench.models.transformer import Dropout, softmax_rows

LENGTHS = {"italy_power_demand": 7, "markov": 9, "mnist1d": 11, "digits": 17, "actg175": 19,
           "bbc_news": 33}
"""Tokens + CLS the encoder sees per input in the default suite."""


def _seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _compare(ours: Callable[[], object], theirs: Callable[[], object],
             repeats: int) -> tuple[float, float]:
    """Median seconds of (ours, torch's), interleaved in blocks of 5."""
    mine: list[float] = []
    torchs: list[float] = []
    ours(), theirs()  # warm-up
    for _ in range(max(1, repeats // 5)):
        torchs += _seconds(theirs, 5)
        mine += _seconds(ours, 5)
    return statistics.median(mine), statistics.median(torchs)


def _backward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        f(x).backward(grad)
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="evaluation batch")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--p", type=float, default=0.1, help="dropout rate")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    fast = Dropout(args.p)
    print(f"ours/torch's microseconds and their ratio, median of {args.repeats}, "
          f"{torch.get_num_threads()} thread(s)")
    header = (f"{'dataset':<20}{'T':>4}  {'dropout eval':>22}  {'dropout train':>22}  "
              f"{'softmax eval':>22}  {'softmax train':>22}")
    print(header)
    for name, t in LENGTHS.items():
        cells = [f"{ours * 1e6:.1f}/{theirs * 1e6:.1f} {ours / theirs:.2f}x"
                 for ours, theirs in _row(t, args, fast)]
        print(f"{name:<20}{t:>4}  " + "  ".join(f"{c:>22}" for c in cells))


def _row(t: int, args: argparse.Namespace, fast: Dropout) -> list[tuple[float, float]]:
    """(ours, torch's) median seconds: dropout eval, dropout train, softmax eval, train."""
    h = torch.randn(args.batch, t, 64)
    h_train = torch.randn(args.train_batch, t, 64, requires_grad=True)
    s = torch.randn(args.batch, 4, t, t)
    s_train = torch.randn(args.train_batch, 4, t, t, requires_grad=True)
    with torch.no_grad():
        dropout_eval = _compare(lambda: fast(h), lambda: F.dropout(h, args.p, training=True),
                                args.repeats)
        softmax_eval = _compare(lambda: softmax_rows(s), lambda: s.softmax(-1), args.repeats)
    dropout_train = _compare(
        _backward(fast, h_train, torch.ones_like(h_train)),
        _backward(lambda x: F.dropout(x, args.p, training=True), h_train,
                  torch.ones_like(h_train)), args.repeats)
    softmax_train = _compare(_backward(softmax_rows, s_train, torch.ones_like(s_train)),
                             _backward(lambda x: x.softmax(-1), s_train,
                                       torch.ones_like(s_train)), args.repeats)
    return [dropout_eval, dropout_train, softmax_eval, softmax_train]

if __name__ == "__main__":
    main()
