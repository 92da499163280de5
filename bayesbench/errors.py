"""Errors a user can cause. The CLI prints them without a traceback and exits with code 2."""


class BayesbenchError(Exception):
    """Base class: the message names the input at fault and how to fix it."""

    exit_code = 2


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


class StoreError(BayesbenchError):
    """The results store cannot be opened or has an incompatible schema."""
