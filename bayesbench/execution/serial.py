"""The serial executor: one run at a time, in the driver's own process and thread."""

from __future__ import annotations

from typing import Any

from bayesbench.execution.base import EventSink, Executor, Finished


class SerialExecutor(Executor):
    """Runs each submitted spec inside ``poll`` (a Ctrl-C interrupts it: ``in_run``), with
    ``threads`` torch threads, restored on ``close``."""

    interrupts_on_stop = True

    def __init__(self, *, device: str, threads: int, versions: dict[str, str],
                 commit: str | None, on_event: EventSink) -> None:
        import torch

        self.device = torch.device(device)
        self.versions, self.commit, self.emit = versions, commit, on_event
        self.spec: Any = None
        self.in_run = False
        self.description = "this process"
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)

    @property
    def free(self) -> int:
        return 0 if self.spec is not None else 1

    @property
    def running(self) -> list[Any]:
        return [self.spec] if self.spec is not None else []

    def submit(self, spec: Any) -> None:
        if self.spec is not None:
            raise RuntimeError("the serial executor runs one spec at a time")
        self.spec = spec

    def poll(self, timeout: float) -> list[Finished]:
        from bayesbench.runner import run_one

        if self.spec is None:
            return []
        spec, key = self.spec, self.spec.key
        self.emit(("start", key))
        self.in_run = True
        try:
            result = run_one(
                spec, self.device,
                on_epoch=lambda p, e, n, loss: self.emit(("epoch", key, p, e, n, loss)),
                on_evaluate=lambda: self.emit(("evaluate", key)),
                versions=self.versions, commit=self.commit,
            )
        finally:
            self.in_run = False
        self.spec = None
        return [Finished(spec, result=result)]

    def drain(self) -> list[Finished]:
        return []  # nothing runs unless poll runs it

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._previous_threads)
