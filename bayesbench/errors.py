"""Errors a user can cause. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_MESSAGE = 2000
"""Longest message an error prints; the rest is cut (a value echoed in full can be huge)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 8, 8
_REPR.maxset, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 8, 120, 120, 60


def shorten(value: Any, limit: int = 200) -> str:
    """``repr(value)``, bounded: nested containers and long strings are elided (reprlib),
    and the result is cut at ``limit`` characters. Use it for every value echoed in a message."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BayesbenchError(Exception):
    """Base class: the message names the input at fault and how to fix it.

    ``str(error)`` is at most :data:`MAX_MESSAGE` characters (a final guard; messages echo
    values through :func:`shorten`)."""

    exit_code = 2

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) <= MAX_MESSAGE:
            return text
        return f"{text[:MAX_MESSAGE]}… ({len(text) - MAX_MESSAGE} more characters)"


class ConfigError(BayesbenchError):
    """benchmarks.yaml (or a flag that filters it) is invalid."""


class UnknownNameError(BayesbenchError):
    """A method, dataset or metric name that no registry knows."""


class DataError(BayesbenchError):
    """A data file or dataset parameter is unusable."""


class InputFileError(BayesbenchError):
    """A file given on the command line (predictions, labels, baseline) is unusable."""


class BaselineError(InputFileError):
    """The regression-gate baseline is missing or malformed."""


class OutputPathError(BayesbenchError):
    """An output path (``--out``, ``--write-baseline``) cannot be written as asked."""


class StoreError(BayesbenchError):
    """The results store cannot be opened or has an incompatible schema."""


class RunNotFoundError(StoreError):
    """``bayesbench show`` / :func:`bayesbench.get_run`: no stored run, or more than one,
    matches the key or label asked for."""
