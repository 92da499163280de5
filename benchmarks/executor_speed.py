"""Wall time of the quick grid through each executor, in one run: 1 local worker (serial),
2 local worker processes, and a 2-worker Dask LocalCluster; printed with throughput ratios.

Goals (issue 13): 2 workers >= 1.6x the throughput of 1; Dask within 10 % of the local pool.
Each executor gets a fresh store (nothing skipped); its start-up (worker processes importing
torch, the Dask cluster) counts, as it does for a user. Run it on a quiet machine:

    OMP_NUM_THREADS=1 python benchmarks/executor_speed.py                 # the default suite
    OMP_NUM_THREADS=1 python benchmarks/executor_speed.py --datasets digits --methods map,mfvi

On a GPU machine, runs sharing one GPU (issue 13: measure 1, 2 and 4 concurrent runs):

    OMP_NUM_THREADS=1 python benchmarks/executor_speed.py --device cuda --local 1,2,4 --skip-dask
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bayesbench.config import ExecutorConfig, expand, load_config  # noqa: E402
from bayesbench.runner import run_grid  # noqa: E402
from bayesbench.store import ResultStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "benchmarks.yaml"))
    parser.add_argument("--methods", help="comma-separated method labels (default: all)")
    parser.add_argument("--datasets", help="comma-separated dataset labels (default: all)")
    parser.add_argument("--skip-dask", action="store_true", help="local executors only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--local", default="1,2", help="local worker counts to time, e.g. 1,2,4")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

    cfg = load_config(args.config)
    split = (lambda v: v.split(",") if v else None)  # noqa: E731
    device = torch.device(args.device)
    specs = expand(cfg, quick=True, methods=split(args.methods), datasets=split(args.datasets),
                   device=device.type)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"quick grid: {len(specs)} runs, {cores} cores, load average "
          f"{os.getloadavg()[0]:.2f} before the start", flush=True)

    counts = [int(n) for n in args.local.split(",")]
    executors = [(_local_name(n), ExecutorConfig(workers=n)) for n in counts]
    if not args.skip_dask:
        executors.append(("Dask LocalCluster, 2 workers", ExecutorConfig(kind="dask", workers=2)))
    walls: dict[str, float] = {}
    failed: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bayesbench-executor-speed-") as tmp:
        for i, (name, executor) in enumerate(executors):
            store = ResultStore(Path(tmp) / f"{i}.sqlite")
            t0 = time.perf_counter()
            outcome = run_grid(specs, store, device=device, executor=executor)
            walls[name] = time.perf_counter() - t0
            failed[name] = len(outcome.failed)
            print(f"  {name}: {walls[name]:.1f} s ({len(outcome.results)} runs, "
                  f"{failed[name]} failed)", flush=True)

    serial = walls[_local_name(counts[0])]
    print(f"\n| executor ({device.type}) | wall s | runs/min | throughput vs "
          f"{_local_name(counts[0])} |")
    print("| --- | ---: | ---: | ---: |")
    for name, wall in walls.items():
        print(f"| {name} | {wall:.1f} | {len(specs) / wall * 60:.1f} | {serial / wall:.2f}x |")
    pool = walls.get(_local_name(2))
    if pool is not None and counts[0] == 1:
        print(f"\n2 local workers: {serial / pool:.2f}x the throughput of 1 (goal >= 1.6x)")
    if "Dask LocalCluster, 2 workers" in walls and pool is not None:
        dask = walls["Dask LocalCluster, 2 workers"]
        print(f"Dask, 2 workers: {pool / dask:.2f}x the throughput of the local pool "
              f"(wall {100 * (dask / pool - 1):+.1f} %; goal within 10 %)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _local_name(workers: int) -> str:
    return "1 local worker (serial)" if workers == 1 else f"{workers} local worker processes"


if __name__ == "__main__":
    main()
