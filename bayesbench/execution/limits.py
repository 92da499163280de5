"""Limits on how many processes and threads a run may use on this machine (light: no torch,
so ``bayesbench run`` checks its flags before anything heavy loads)."""

from __future__ import annotations

import os

from bayesbench.errors import ConfigError


def check_parallelism(workers: int, threads: int | None) -> None:
    """``--workers`` and ``--threads``: each at least 1 and at most 4 per CPU core of this
    machine (every worker is a process with its own torch; more only thrashes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    limit = 4 * cores
    for flag, value in (("--workers", workers), ("--threads", threads)):
        if value is None:
            continue
        if not 1 <= value <= limit:
            raise ConfigError(
                f"{flag} {value}: must be from 1 to {limit} (4 per CPU core; this machine has "
                f"{cores}); e.g. {flag} {min(2, cores)}")
