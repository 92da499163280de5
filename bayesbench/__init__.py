"""bayesbench: benchmark Bayesian and uncertainty-aware transformers.

The Python API (:mod:`bayesbench.api`) is importable from here; it loads on first use, so
``import bayesbench`` (and ``bayesbench --help``) stays fast:

>>> import bayesbench
>>> round(bayesbench.score([[0.9, 0.1], [0.2, 0.8]], [0, 0])["test"]["accuracy"], 2)
0.5
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("GridRun", "get_run", "load_aggregates", "load_config", "load_metrics", "load_runs",
        "run", "score")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from bayesbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bayesbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
