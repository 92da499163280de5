"""What `bayesbench run` shows while the grid runs.

On a terminal: a live display (the grid's bar with its ETA, one line per run in flight with
its training phase, epoch and loss, then "evaluating"). Elsewhere (CI, Slurm logs, a pipe):
one plain line per finished run, with the count, the run's time, its headline metrics and the
ETA, so a log shows progress as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def first_line(error: str | None) -> str:
    """A stored error's summary line (the traceback below it is for `bayesbench show`)."""
    return (error or "").split("\n", 1)[0]


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; ``8.2`` -> ``8s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class GridProgress:
    """Progress of a grid of ``specs`` of which ``stored`` keys are complete already.

    The ETA is (time since start) / (runs finished since start) × (runs left): the observed
    throughput of this grid, parallel workers included; unknown until the first run ends.
    """

    def __init__(self, specs: Sequence[Any], stored: set[str], console: Console,
                 live: bool | None = None) -> None:
        self.names = {s.key: f"{s.label} · {s.dataset_label} · seed {s.seed}" for s in specs}
        self.total = len(specs)
        self.completed = sum(1 for s in specs if s.key in stored)
        self.finished_here = 0
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.started = time.monotonic()
        self.run_started: dict[str, float] = {}
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> GridProgress:
        if self.live:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                      TimeElapsedColumn(), console=self.console)
            self._progress.__enter__()
            self._grid = self._progress.add_task("grid", total=self.total,
                                                 completed=self.completed, info="")
        elif self.completed < self.total:
            self.console.print(f"{self.total - self.completed} of {self.total} run(s) to do, "
                               f"{self.completed} already stored", highlight=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    # -- what the grid reports -------------------------------------------------------------

    def eta(self) -> str:
        left = self.total - self.completed
        if left <= 0:
            return "done"
        if not self.finished_here:
            return "eta unknown"
        rate = (time.monotonic() - self.started) / self.finished_here
        return f"eta {format_duration(rate * left)}"

    def _say(self, text: str) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(text, soft_wrap=True, highlight=False)

    def on_event(self, event: tuple) -> None:
        kind, key = event[0], event[1]
        name = self.names.get(key, key)
        if kind == "start":
            self.run_started[key] = time.monotonic()
            if self._progress is not None:
                self._tasks[key] = self._progress.add_task(f"  {escape(name)}", total=None,
                                                           info="starting")
        elif kind == "epoch" and key in self._tasks and self._progress is not None:
            _, _, phase, epoch, total, loss = event
            self._progress.update(self._tasks[key], completed=epoch, total=total,
                                  info=f"{escape(str(phase))} loss {loss:.3f}")
        elif kind == "evaluate" and key in self._tasks and self._progress is not None:
            task = self._progress.tasks[self._progress.task_ids.index(self._tasks[key])]
            self._progress.update(self._tasks[key], completed=task.total or 1,
                                  total=task.total or 1, info="evaluating")
        elif kind == "held":
            self._say(f"[yellow]waiting[/yellow] {escape(name)}: another bayesbench run "
                      f"({escape(event[2])}) is training it")
        elif kind == "skipped":
            self._advance()
            self._say(f"stored by another process: {escape(name)}")
        elif kind == "unsupported":
            self._advance()
            self._say(f"[yellow]skipped[/yellow] {escape(name)}: {escape(str(event[2]))}")
        elif kind == "kept":
            self._advance()
            self._say(f"[yellow]not stored[/yellow] {escape(name)} failed "
                      f"({escape(str(event[2]))}) but a complete result is stored: kept that")

    def _advance(self) -> None:
        self.completed += 1
        if self._progress is not None:
            self._progress.update(self._grid, completed=self.completed, info=self.eta())

    def on_result(self, result: Any) -> None:
        self.finished_here += 1
        self._advance()
        seconds = time.monotonic() - self.run_started.pop(result.key, time.monotonic())
        name = escape(self.names.get(result.key, result.key))
        if self._progress is not None:
            task = self._tasks.pop(result.key, None)
            if task is not None:
                self._progress.remove_task(task)
            if result.status == "failed":
                self._say(f"[red]failed[/red] {name}: {escape(first_line(result.error))}")
            return
        width = len(str(self.total))
        head = f"[{self.completed:>{width}}/{self.total}]"
        if result.status == "complete":
            acc, ece = result.metric("test", "accuracy"), result.metric("test", "ece")
            scores = "" if acc is None or ece is None else f"  accuracy {acc:.3f} ece {ece:.3f}"
            self._say(f"{head} complete {name}  {format_duration(seconds)}{scores}  "
                      f"{self.eta()}")
        else:
            self._say(f"{head} [red]failed[/red] {name}: {escape(first_line(result.error))}  "
                      f"{self.eta()}")
