"""Shared fixtures: tiny tasks and configs so tests stay fast on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def dataset_cache_in_tmp(tmp_path_factory):
    """Every test (and every CLI it starts) caches built datasets in one temporary folder,
    never in the user's ``~/.cache/bayesbench``."""
    folder = tmp_path_factory.mktemp("bayesbench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAYESBENCH_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def digits_small():
    """The digits task cut to 256 training and 96 evaluation examples."""
    from bayesbench.data.digits import Digits

    return Digits().build(0).limited(256, 96)


@pytest.fixture(scope="session")
def digits_tiny():
    """The digits task cut to 256 training and 128 evaluation examples."""
    from bayesbench.data.digits import Digits

    return Digits().build(0).limited(256, 128)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m bayesbench ARGS`` in ``tmp_path``; returns the CompletedProcess."""

    def run(*args: str, extra_path: Path | None = None, columns: int = 200,
            env: dict[str, str] | None = None):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in [str(REPO), str(extra_path or ""), os.environ.get("PYTHONPATH", "")] if p
        ), OMP_NUM_THREADS="1", COLUMNS=str(columns), **(env or {}))
        return subprocess.run([sys.executable, "-m", "bayesbench", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True)

    return run


@pytest.fixture
def encoder_at_version_1(monkeypatch):
    """The built-in encoder pinned at version 1, the version the stored legacy keys were
    computed at (from version 2 on the default backbone enters every key)."""
    from bayesbench.backbones import TransformerBackbone

    monkeypatch.setattr(TransformerBackbone, "version", 1)
