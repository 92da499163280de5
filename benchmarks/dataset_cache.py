"""Build vs cached load, per dataset of the default suite, in one run (a fresh cache folder).

    OMP_NUM_THREADS=1 python benchmarks/dataset_cache.py [--repeat 3]

Per dataset, as a worker process meets it (``cold``: a fresh Python process that has
imported bayesbench.runner, as a worker has, timing the dataset's own import plus the build,
or plus the cache lookup and load) and again inside one process (``warm``: imports done;
mnist1d keeps its generated signals in memory, so its warm build is what a second build in
the same worker costs). Also the quick-run cut (``Task.limited``, what caching the limited
task too would save), the file size, and whether the loaded task is bit-identical to the
built one. Each figure is the median of ``--repeat`` tries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bayesbench.data.cache import DatasetCache
from bayesbench.registry import DATASETS

REPO = Path(__file__).resolve().parent.parent


def _median(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _same(a, b) -> bool:
    sys.path.insert(0, str(REPO))
    from tests.test_dataset_cache import assert_same_task

    try:
        assert_same_task(a, b)
        return True
    except AssertionError:
        return False


COLD = """
import json, sys, time
import torch
torch.set_num_threads(1)
import bayesbench.runner  # what a worker has imported before it builds the task
from bayesbench.data.cache import DatasetCache
from bayesbench.registry import DATASETS
name, params, use_cache = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
t0 = time.perf_counter()
cls = DATASETS.get(name)
if use_cache:
    DatasetCache.default().build(cls, name, params, 0)
else:
    cls(**params).build(0)
print(time.perf_counter() - t0)
"""


def _cold(name: str, params: dict, folder: str, use_cache: bool, repeat: int) -> float:
    env = dict(os.environ, BAYESBENCH_CACHE=folder, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    times = [float(subprocess.run([sys.executable, "-c", COLD, name, json.dumps(params),
                                   "1" if use_cache else "0"], env=env, check=True,
                                  capture_output=True, text=True).stdout)
             for _ in range(repeat)]
    return statistics.median(times)


def _measure(cache: DatasetCache, folder: str, name: str, params: dict, quick: dict,
             repeat: int) -> None:
    cls = DATASETS.get(name)
    cls(**params).build(0)  # warm-up: imports and first-touch costs
    build_s, built = _median(lambda: cls(**params).build(0), repeat)
    cache.build(cls, name, params, 0)  # stores it
    key = cache.key(cls, name, params, 0)
    load_s, loaded = _median(lambda: cache.load(name, key), repeat)
    limited_s, _ = _median(
        lambda: loaded.limited(quick["max_train"], quick["max_eval"], seed=0), repeat)
    size = cache.paths(name, key)[0].stat().st_size / 1e6
    cold_build = _cold(name, params, folder, False, repeat)
    cold_load = _cold(name, params, folder, True, repeat)
    print(f"{name:20} {cold_build:8.3f} {cold_load:8.3f} {cold_build / cold_load:10.1f}x "
          f"{build_s:8.3f} {load_s:8.3f} {build_s / load_s:10.1f}x "
          f"{limited_s:9.4f} {size:5.1f}  {_same(built, loaded)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load((REPO / "benchmarks.yaml").read_text())
    quick = cfg["quick"]
    entries = [e if isinstance(e, dict) else {"name": e} for e in cfg["datasets"]]
    with tempfile.TemporaryDirectory() as folder:
        cache = DatasetCache(Path(folder))
        print(f"{'':20} {'cold (new process)':^29} {'warm (same process)':^29}")
        print(f"{'dataset':20} {'build s':>8} {'load s':>8} {'build/load':>11} "
              f"{'build s':>8} {'load s':>8} {'build/load':>11} {'limited s':>9} {'MB':>5}  same")
        for e in entries:
            _measure(cache, folder, e["name"], e.get("params", {}), quick, args.repeat)

if __name__ == "__main__":
    main()
