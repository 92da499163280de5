"""Every wait a user sees, for this checkout against a baseline commit, measured in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_report.py --baseline 46fe854

For each of the two trees (the baseline commit, checked out into a temporary git worktree, and
this checkout) it measures, interleaved so that a change in the machine's load hits both alike:

- ``bayesbench run --quick --workers 2`` on an empty store (dataset cache empty: what a first
  run waits), then the same on another empty store with the dataset cache filled
  (``--suite-repeats N``: N times, interleaved, each into a fresh store; the median is shown);
- the same command again with nothing to train (the no-op rerun);
- ``bayesbench report`` of those quick runs: into an empty folder, then again with its
  inputs unchanged (answered from the folder's record, :mod:`bayesbench.report_plan`), and
  again with ``BAYESBENCH_REPORT_FAST=0`` (the ordinary path: what a report whose inputs
  changed a little costs, and all a tree without the record does);
- ``bayesbench list``;
- training time × map of chosen methods (``benchmarks/method_speed.py`` of each tree).

Both trees run with this interpreter (the same installed packages), each from its own source
(``PYTHONPATH``), in a fresh temporary folder with that tree's ``benchmarks.yaml``. It prints
one table: baseline, this checkout, their ratio, and the goal; ``--markdown`` prints it as the
README's table. Nothing is asserted: the numbers are for a person to read.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Tree:
    name: str
    root: Path
    work: Path
    cache: Path
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def env(self, cache: Path | None = None, **extra: str) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.root), OMP_NUM_THREADS="1",
                    BAYESBENCH_CACHE=str(cache or self.cache), COLUMNS="120", **extra)

    def timed(self, what: str, args: list[str], cache: Path | None = None,
              **extra: str) -> float:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, *args], cwd=self.work,
                             env=self.env(cache, **extra), capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"{self.name}: {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stderr[-3000:]}")
        self.seconds.setdefault(what, []).append(seconds)
        return seconds

    def bayesbench(self, what: str, *args: str, cache: Path | None = None,
                   **extra: str) -> float:
        return self.timed(what, ["-m", "bayesbench", *args], cache, **extra)


def _worktree(ref: str, where: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"--baseline {ref}: not a commit of {REPO}")
    path = where / f"baseline-{sha.stdout.strip()[:10]}"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), sha.stdout.strip()],
                   cwd=REPO, check=True, capture_output=True)
    return path


def _method_ratios(tree: Tree, methods: str, epochs: int, repeats: int) -> dict[str, float]:
    script = tree.root / "benchmarks" / "method_speed.py"
    res = subprocess.run([sys.executable, str(script), "--dataset", "digits", "--epochs",
                          str(epochs), "--repeats", str(repeats), "--methods", methods],
                         cwd=tree.work, env=tree.env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{tree.name}: method_speed.py failed:\n{res.stderr[-3000:]}")
    ratios = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\S+)\s+([\d.]+)\s+([\d.]+)$", line.strip())
        if m:
            ratios[m.group(1)] = float(m.group(3))
    return ratios


GOALS = {
    "quick suite, empty cache": "≤ 60 s",
    "quick suite, warm cache": "≤ 45 s",
    "no-op rerun": "≤ 1.5 s",
    "report of the quick runs, empty folder": "",
    "report of the quick runs, unchanged inputs": "≤ 3 s",
    "report of the quick runs, written again": "",
    "bayesbench list": "≈ 1 s",
}
TRAIN_GOALS = {"dirichlet_attention": "≤ 1.25", "mfvi": "≤ 1.3", "sngp": "≤ 1.15"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None,
                    help="commit to compare with (default: none, this checkout only)")
    ap.add_argument("--skip-suite", action="store_true",
                    help="no quick suites (then no rerun/report either): list and training only")
    ap.add_argument("--methods", default="map,dirichlet_attention,mfvi,sngp")
    ap.add_argument("--epochs", type=int, default=5, help="epochs for the training ratios")
    ap.add_argument("--repeats", type=int, default=3,
                    help="repeats of each short measurement (the median is shown)")
    ap.add_argument("--suite-repeats", type=int, default=1,
                    help="warm-cache quick suites per tree, interleaved, each into a fresh "
                         "store (the median is shown; on 2 shared cores one suite's time moves "
                         "by about 10 %% from run to run)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bayesbench-speed-"))
    trees: list[Tree] = []
    try:
        roots = [("baseline", _worktree(args.baseline, tmp))] if args.baseline else []
        roots.append(("this checkout", REPO))
        for name, root in roots:
            work = tmp / f"work-{len(trees)}"
            work.mkdir()
            shutil.copy(root / "benchmarks.yaml", work / "benchmarks.yaml")
            trees.append(Tree(name, root, work, tmp / f"cache-{len(trees)}"))
        for tree in trees:  # imports compiled, files read once: every tree starts warm
            tree.bayesbench("warm-up", "--help")
        if not args.skip_suite:
            quick = ["run", "--quick", "--workers", "2"]
            for tree in trees:
                tree.bayesbench("quick suite, empty cache", *quick, "--store", "cold.sqlite")
            for i in range(args.suite_repeats):
                for tree in trees:  # the first store is the one reported and rerun below
                    store = "warm.sqlite" if i == 0 else f"warm-{i}.sqlite"
                    tree.bayesbench("quick suite, warm cache", *quick, "--store", store)
            report = ["report", "--store", "warm.sqlite", "--out", "report"]
            for tree in trees:
                tree.bayesbench("report of the quick runs, empty folder", *report)
            for _ in range(args.repeats):
                for tree in trees:
                    tree.bayesbench("no-op rerun", *quick, "--store", "warm.sqlite")
                for tree in trees:
                    tree.bayesbench("report of the quick runs, unchanged inputs", *report)
                for tree in trees:
                    tree.bayesbench("report of the quick runs, written again", *report,
                                    BAYESBENCH_REPORT_FAST="0")
        for _ in range(args.repeats):
            for tree in trees:
                tree.bayesbench("bayesbench list", "list")
        ratios = {tree.name: _method_ratios(tree, args.methods, args.epochs, args.repeats)
                  for tree in trees}
    finally:
        if args.baseline:
            for tree in trees[:-1]:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree.root)],
                               cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    rows: list[tuple[str, str, str, str, str]] = []
    for what, goal in GOALS.items():
        if what not in trees[-1].seconds:
            continue
        vals = [statistics.median(t.seconds[what]) for t in trees]
        cells = [f"{v:.2f} s" for v in vals]
        ratio = f"{vals[0] / vals[-1]:.2f}× faster" if len(vals) == 2 else ""
        rows.append((what, *(cells if len(cells) == 2 else ["", cells[0]]), ratio, goal))
    for method, goal in TRAIN_GOALS.items():
        if method not in ratios[trees[-1].name]:
            continue
        vals = [ratios[t.name].get(method) for t in trees]
        cells = [f"{v:.2f} × map" if v is not None else "" for v in vals]
        rows.append((f"training {method} (digits, {args.epochs} epochs, 1 thread)",
                     *(cells if len(cells) == 2 else ["", cells[0]]), "", goal))
    header = ("what a user waits for", f"baseline {args.baseline or ''}".strip(),
              "this checkout", "ratio", "goal")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    suites = "one quick suite each" if args.suite_repeats == 1 else \
        f"medians of {args.suite_repeats} warm-cache quick suites, one empty-cache one"
    print(f"(medians of {args.repeats} for the short measurements; {suites}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
