"""The entry point of one worker process of :class:`~bayesbench.execution.local_pool.LocalPool`.

Protocol over one duplex pipe: the driver sends a RunSpec (or None to stop); the worker answers
with any number of ``("event", event)`` messages and then one ``("result", RunResult)``.

The worker ties its life to the driver's *before* importing torch (seconds of start-up): on
Linux the kernel kills it when the driver dies (``PR_SET_PDEATHSIG``); elsewhere a thread polls
the parent pid. It ignores SIGINT: Ctrl-C reaches the whole process group, and the driver
decides what stops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    # the parent may have died before prctl took effect: then we are an orphan already
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def worker_main(conn: Any, parent_pid: int, threads: int, device: str,
                versions: dict[str, str], commit: str | None) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    import torch

    from bayesbench.runner import run_one

    torch.set_num_threads(threads)
    dev = torch.device(device)
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        key = spec.key

        def emit(event: tuple, key: str = key) -> None:
            conn.send(("event", event))

        emit(("start", key))
        result = run_one(
            spec, dev,
            on_epoch=lambda phase, e, n, loss, k=key: emit(("epoch", k, phase, e, n, loss)),
            on_evaluate=lambda k=key: emit(("evaluate", k)),
            versions=versions, commit=commit,
        )
        conn.send(("result", result))
