"""A pool of spawned worker processes on this machine, each running one run at a time.

Unlike :class:`concurrent.futures.ProcessPoolExecutor`, one worker dying (killed, out of
memory) costs only the run it had: the driver knows which run each worker holds, reports that
run as died, and starts a fresh worker for the next one. Workers never touch the store.

On CUDA the workers share the visible GPUs round-robin (worker i on ``cuda:i % G``), so
``--workers 4`` on one GPU runs 4 runs on it at once, each in its own process (its own CUDA
context and RNG: the numbers do not depend on what runs beside it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from bayesbench.execution.base import Executor, Finished, device_for_slot
from bayesbench.execution.worker import worker_main

__all__ = ["Finished", "LocalPool", "describe_exit"]


@dataclass
class _Worker:
    process: Any
    conn: Connection
    spec: Any = None  # the RunSpec it runs, or None when idle


def describe_exit(exitcode: int | None) -> str:
    """``-9`` -> 'killed by SIGKILL', ``3`` -> 'exited with code 3'."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class LocalPool(Executor):
    """``size`` worker processes (spawned, ``threads`` torch threads each) for ``device``.

    ``submit`` hands a spec to an idle worker (starting one if needed); ``poll`` forwards
    progress events to ``on_event`` and returns what finished; ``close`` stops the workers;
    ``kill`` stops them at once.
    """

    def __init__(self, size: int, *, threads: int, device: str, versions: dict[str, str],
                 commit: str | None, on_event: Callable[[tuple], None],
                 gpu_count: int | None = None) -> None:
        self._ctx = mp.get_context("spawn")  # fork is unsafe once torch has started threads
        self._threads, self._device, self._run_args = threads, device, (versions, commit)
        if device == "cuda" and gpu_count is None:
            import torch

            gpu_count = torch.cuda.device_count()
        self._gpu_count = gpu_count or 0
        self._on_event = on_event
        self._workers: list[_Worker | None] = [None] * size
        self.description = f"{size} local worker processes"
        if device == "cuda":
            self.description += f" sharing {self._gpu_count} GPU(s)"

    def device_of(self, slot: int) -> str:
        """The device of worker ``slot`` (round-robin over the GPUs on CUDA)."""
        return device_for_slot(self._device, slot, self._gpu_count)

    @property
    def free(self) -> int:
        return sum(1 for w in self._workers if w is None or w.spec is None)

    @property
    def running(self) -> list[Any]:
        return [w.spec for w in self._workers if w is not None and w.spec is not None]

    def _start(self, slot: int) -> _Worker:
        ours, theirs = self._ctx.Pipe(duplex=True)
        args = (theirs, os.getpid(), self._threads, self.device_of(slot), *self._run_args)
        process = self._ctx.Process(target=worker_main, args=args, daemon=True,
                                    name="bayesbench-worker")
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def submit(self, spec: Any) -> None:
        for i, w in enumerate(self._workers):
            if w is not None and w.spec is None and not w.process.is_alive():
                self._discard(i)  # an idle worker that died: replace it
                w = None
            if w is None:
                w = self._workers[i] = self._start(i)
            if w.spec is None:
                try:
                    w.conn.send(spec)
                except OSError:  # it died between the check and the send: use a fresh one
                    self._discard(i)
                    w = self._workers[i] = self._start(i)
                    w.conn.send(spec)
                w.spec = spec
                return
        raise RuntimeError("no idle worker: check `free` before submitting")

    def _discard(self, i: int) -> None:
        w = self._workers[i]
        self._workers[i] = None
        if w is not None:
            w.conn.close()
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5)

    def poll(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` s for messages; return the runs that finished or died."""
        busy = [w for w in self._workers if w is not None and w.spec is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                         timeout=timeout))
        done: list[Finished] = []
        for w in busy:
            dead = w.process.sentinel in ready
            if w.conn in ready or dead:
                finished = self._drain(w)
                if finished is None and dead:
                    w.process.join(timeout=5)
                    finished = Finished(w.spec, died=describe_exit(w.process.exitcode))
                if finished is not None:
                    done.append(finished)
                    if finished.died:
                        self._discard(self._workers.index(w))
                    else:
                        w.spec = None
        return done

    def _drain(self, w: _Worker) -> Finished | None:
        """Read every message waiting on ``w``'s pipe; the Finished if its result came."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "event":
                    self._on_event(payload)
                elif kind == "result":
                    return Finished(w.spec, result=payload)
        except Exception as exc:  # a worker killed mid-message: what arrived is unreadable
            w.process.join(timeout=5)
            if w.process.exitcode is not None:
                return Finished(w.spec, died=describe_exit(w.process.exitcode))
            return Finished(w.spec, died=f"sent an unreadable message ({type(exc).__name__})")
        return None

    def close(self) -> None:
        """Ask idle workers to exit, then make sure every worker is gone."""
        for w in self._workers:
            if w is not None and w.spec is None:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for i in range(len(self._workers)):
            w = self._workers[i]
            if w is not None and w.spec is None:
                w.process.join(timeout=5)
            self._discard(i)

    def kill(self) -> None:
        """Stop every worker now (Ctrl-C): what they were running is lost."""
        for w in self._workers:
            if w is not None and w.process.is_alive():
                w.process.kill()
        for i in range(len(self._workers)):
            self._discard(i)
