"""The dataset interface: parameters from benchmarks.yaml in, a :class:`Task` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from bayesbench.task import Task


class Dataset(ABC):
    """A benchmark dataset.

    Subclasses take their parameters as keyword arguments of ``__init__`` with defaults and
    type annotations (the config is checked against that signature), and build a
    :class:`Task` deterministically from a seed: the same seed gives the same tensors.
    Everything is generated or loaded offline.

    ``version``: raise it whenever a code change alters the tensors ``build`` returns for the
    same parameters and seed; it is part of every run's key (see :class:`Method`).

    Inputs: one tensor per split, or, for a ``tokens`` task, named tensors as a tokenizer
    returns them (a dict of ``input_ids``, ``attention_mask``, ...: a
    :class:`~bayesbench.task.TensorBatch`), the same names in every split and OOD set. The
    :class:`Task` checks them when it is made; a dataset of your own whose inputs could be
    bad may call ``self.build(0)`` in :meth:`check`, so that they stop ``bayesbench run``
    (exit 2) before anything runs.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line for `bayesbench list`
    version: ClassVar[int] = 1

    @abstractmethod
    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed."""

    def check(self) -> None:  # noqa: B027 - optional hook, a no-op for generated data
        """Raise :class:`~bayesbench.errors.DataError` if the inputs are unusable.

        Called once before any run starts, so a bad data file stops ``bayesbench run`` with
        exit code 2 and nothing stored. Built-in generated datasets need no check.
        """
