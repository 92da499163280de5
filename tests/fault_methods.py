"""Methods for the fault tests (tests/test_faults.py), loaded by import reference.

Each fit appends "<pid> <label> <seed>" to the file named by $BAYESBENCH_FIT_LOG (when set),
so a test can count how often each run was trained and by which process.
"""

from __future__ import annotations

import os
import signal
import time

from bayesbench.methods.map import MAP


def _log_fit(ctx, label: str) -> None:
    path = os.environ.get("BAYESBENCH_FIT_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()} {label} {ctx.seed}\n")


class Logged(MAP):
    """map, after sleeping ``sleep`` seconds; with ``die`` its worker kills itself instead."""

    name = "logged"
    description = "map that logs its fit (fault tests)"

    def __init__(self, sleep: float = 0.0, die: bool = False) -> None:
        super().__init__()
        self.sleep, self.die = sleep, die

    def fit(self, task, ctx):
        _log_fit(ctx, f"logged-{self.sleep}-{self.die}")
        if self.die:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        time.sleep(self.sleep)
        super().fit(task, ctx)


class Blocking(MAP):
    """Never finishes training by itself (it sleeps up to ``seconds``): for Ctrl-C tests."""

    name = "blocking"
    description = "a fit that blocks (fault tests)"

    def __init__(self, seconds: float = 600.0) -> None:
        super().__init__()
        self.seconds = seconds

    def fit(self, task, ctx):
        _log_fit(ctx, "blocking")
        time.sleep(self.seconds)
        super().fit(task, ctx)
