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
from typing import Any, NoReturn

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


def _exit_now() -> NoReturn:
    """End this worker without the interpreter's teardown: with torch loaded, unloading every
    module takes about 1 s, which the driver's ``close`` would wait for at the end of every
    `bayesbench run`. Nothing is lost: each result was sent whole before the next ``recv``,
    and a worker holds no other state (the dataset cache writes its files atomically)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


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
            _exit_now()
        if spec is None:
            _exit_now()
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
