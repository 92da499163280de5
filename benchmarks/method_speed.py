"""Training time of each method relative to `map`, measured in one process run.

Every method trains on the same task with the same model and epochs (the harness's shared
budget); repeats interleave the methods so slow drifts of the machine hit all of them alike.
Prints the median seconds and the median of each repeat's ratio to that repeat's map, and for
laplace also its post-hoc posterior fit as a percentage of map's training (target <= 5 %).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/method_speed.py --dataset digits \
        --epochs 5 --repeats 3 --methods map,mfvi,swag,sghmc,laplace,dirichlet_attention

A method may carry parameters the way sweep labels write them, e.g.
``mfvi@dropout=true+bf16_variance=false``.

On a Hugging Face model (``--backbone hf``; a token dataset, ``markov`` by default there): a
tiny random-init BERT (width 32, 2 layers, 2 heads: offline) unless ``--model`` names a saved
model directory (``--pretrained`` loads its weights and tokenizer). Methods the backbone
cannot run are listed with the reason and left out:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/method_speed.py --backbone hf \
        --epochs 4 --max-train 384 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from bayesbench.backbones import make_backbone, unsupported_reason
from bayesbench.methods.base import FitContext, TrainingConfig
from bayesbench.registry import DATASETS, METHODS

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64}
"""The random-init model of ``--backbone hf`` without ``--model``."""


def make_method(label: str):
    """``name`` or ``name@key=value+key=value`` (values parsed as YAML)."""
    name, _, settings = label.partition("@")
    params = {}
    for item in filter(None, settings.split("+")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return METHODS.get(name)(**params)


def backbone_spec(args: argparse.Namespace) -> dict:
    """The ``{"name", "params"}`` of the backbone the methods are timed on."""
    if args.backbone != "hf":
        return {"name": args.backbone, "params": {}}
    if args.model is None:
        return {"name": "hf", "params": {"model": "bert", "pretrained": False,
                                         "config": TINY_BERT}}
    return {"name": "hf", "params": {"model": args.model, "pretrained": args.pretrained}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=None, help="default: digits (hf: markov)")
    ap.add_argument("--methods", default="map,temperature_scaling,mc_dropout,mfvi,laplace,swag,"
                    "sghmc,sngp,dirichlet_attention,bam_attention")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=None,
                    help="at most this many training examples")
    ap.add_argument("--backbone", default="transformer", help="transformer or hf")
    ap.add_argument("--model", default=None,
                    help="hf: a saved model directory or hub id (default: a tiny random BERT)")
    ap.add_argument("--pretrained", action="store_true", help="hf: load --model's weights")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dataset = args.dataset or ("markov" if args.backbone == "hf" else "digits")
    backbone = make_backbone(backbone_spec(args))
    names = args.methods.split(",")
    if names[0] != "map":
        names = ["map"] + [n for n in names if n != "map"]
    skipped = {n: unsupported_reason(make_method(n), backbone) for n in names}
    skipped = {n: why for n, why in skipped.items() if why}
    if "map" in skipped:
        raise SystemExit(f"map cannot run on this backbone: {skipped['map']}")
    names = [n for n in names if n not in skipped]
    task = DATASETS.get(dataset)().build(0)
    if args.max_train is not None:
        task = task.limited(args.max_train, None, seed=0)
    backbone.check_task(task)
    ctx = FitContext(training=TrainingConfig(epochs=args.epochs), seed=0, backbone=backbone)
    # one untimed fit first: the first optimizer of a process imports torch._dynamo (~1 s)
    make_method("map").fit(task, FitContext(training=TrainingConfig(epochs=1), seed=0,
                                            backbone=backbone))
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
    print(f"{dataset} on {backbone_label(args)}, {args.epochs} epochs, "
          f"{len(task.train)} training examples, {args.repeats} repeats, 1 thread")
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
    for name, why in skipped.items():
        print(f"not run: {name}: {why}")


def backbone_label(args: argparse.Namespace) -> str:
    if args.backbone != "hf":
        return f"the {args.backbone} backbone"
    if args.model is None:
        return "the hf backbone (tiny random-init BERT: width 32, 2 layers, 2 heads)"
    return f"the hf backbone ({args.model}, {'pretrained' if args.pretrained else 'random init'})"


if __name__ == "__main__":
    main()
