"""Remembered grids: a rerun with nothing left to train answers without importing torch.

Resolving a grid (validating the config against every method's and dataset's signature,
hashing each run's spec) needs the method and dataset classes, so it imports torch,
scikit-learn and pandas: about 3 s here before a single key is known. A rerun of a grid that
is already complete (the most common rerun: "is everything stored?") then waits 4 s to learn
that nothing is to be done.

So ``bayesbench run`` remembers, in the store itself (table ``plans``), each grid it resolved:
the run keys of its specs under a *fingerprint* of everything the keys are computed from —

- the config file's bytes, and the command's grid flags (``--methods``, ``--datasets``,
  ``--seeds``, ``--quick``, ``--threads``, the device);
- bayesbench's own source code (every ``.py`` file of the package: a changed default, a raised
  ``version`` or a new parameter all change a run key, and all are in the code);
- the installed distributions (the names of the ``*.dist-info`` folders on ``sys.path``: an
  upgraded, added or removed package, a plugin among them).

A later ``run`` with the same fingerprint reads that plan and checks, in one query, whether
every run of it is complete in the store; only then does it answer "nothing to run" at once.
Anything else (a run missing or failed, a changed file, no plan yet) takes the ordinary path,
which is the only one that trains and the only one that writes plans. Grids that depend on
inputs outside these files — a dataset or method from outside the bayesbench package (its
code is not fingerprinted), or the ``files`` dataset (its data files are not) — are never
remembered, and ``--device auto`` is trusted to mean the CPU only where no GPU device node
exists. Only standard-library modules are imported here.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLANS_KEPT = 32
"""Plans kept per store (the most recently written); older ones are dropped."""

_PLANS_SQL = """
CREATE TABLE IF NOT EXISTS plans (
    fingerprint TEXT PRIMARY KEY,
    keys        TEXT NOT NULL,
    unsupported INTEGER NOT NULL,
    created_at  TEXT NOT NULL
)"""

_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
"""Device nodes through which a CUDA (or ROCm, or WSL) torch could see a GPU."""


@dataclass(frozen=True)
class GridFlags:
    """The flags of ``bayesbench run`` that decide which runs the grid holds, as given."""

    methods: str | None
    datasets: str | None
    seeds: str | None
    quick: bool
    threads: int | None
    device: str


def device_type_without_torch(device: str) -> str | None:
    """The device type ``resolve_device(device)`` would give, where it is known without
    importing torch: ``cpu`` for ``cpu``, and for ``auto`` on a Linux machine with no GPU
    device node. None where only torch can tell."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and sys.platform.startswith("linux") and not any(
            os.path.exists(node) for node in _GPU_NODES):
        return "cpu"
    return None


@functools.lru_cache(maxsize=1)
def package_source_digest() -> str:
    """SHA-256 of bayesbench's own source (every ``.py`` file of the package, with its path
    inside it): two processes with the same digest compute the same runs the same way.
    Computed once per process."""
    return _package_source_digest().hex()


def _package_source_digest() -> bytes:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.digest()


def _installed_distributions() -> list[str]:
    names: list[str] = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                names += sorted(e.name for e in it
                                if e.name.endswith((".dist-info", ".egg-info", ".egg-link")))
        except OSError:  # not a folder (a zip, a missing path)
            continue
    return names


def fingerprint(config_path: Path, flags: GridFlags) -> str | None:
    """The fingerprint of the grid ``bayesbench run`` would resolve from ``config_path`` with
    ``flags``; None where it cannot be known without torch (see the module docs)."""
    device = device_type_without_torch(flags.device)
    if device is None:
        return None
    try:
        config_bytes = Path(config_path).read_bytes()
    except OSError:
        return None
    h = hashlib.sha256()
    h.update(config_bytes)
    h.update(json.dumps([flags.methods, flags.datasets, flags.seeds, flags.quick,
                         flags.threads or 1, device]).encode())
    hash_code(h)
    return h.hexdigest()


def hash_code(h: Any) -> None:
    """Feed ``h`` (a hashlib object) what decides how runs and reports are computed besides
    their inputs: bayesbench's own source, the installed distributions, the Python version."""
    h.update(_package_source_digest())
    h.update("\n".join(_installed_distributions()).encode())
    h.update(sys.version.encode())


@dataclass(frozen=True)
class PlanStatus:
    """A remembered grid, checked against the store: ``runs`` in it, ``complete`` of them,
    plus the ``unsupported`` runs it skips (their method cannot work on their backbone)."""

    runs: int
    complete: int
    unsupported: int

    @property
    def nothing_to_run(self) -> bool:
        return self.complete == self.runs


def open_read_only(store_path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the store at ``store_path``; None when there is no such
    file or it cannot be opened (the ordinary path then reports the problem)."""
    path = Path(store_path)
    if not path.is_file():
        return None
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None


def plan_keys_in(con: sqlite3.Connection, fp: str) -> list | None:
    """The run keys of the plan ``fp`` in the open store ``con``; None when there is no such
    plan (or no plans table: a store no ``run`` has remembered a grid in) or its keys are not
    a JSON list."""
    try:
        row = con.execute("SELECT keys FROM plans WHERE fingerprint = ?", (fp,)).fetchone()
    except sqlite3.Error:
        return None
    try:
        keys = json.loads(row[0]) if row else None
    except (TypeError, ValueError):
        return None
    return keys if isinstance(keys, list) else None


def plan_keys(store_path: Path, fp: str) -> list | None:
    """:func:`plan_keys_in` of the store at ``store_path``, opened read-only."""
    con = open_read_only(store_path)
    if con is None:
        return None
    try:
        return plan_keys_in(con, fp)
    finally:
        con.close()


def lookup(store_path: Path, fp: str) -> PlanStatus | None:
    """The plan stored under ``fp`` with its completion, in one read-only query; None when
    the store or the plan does not exist (or the store cannot be read: the ordinary path
    then reports the problem)."""
    con = open_read_only(store_path)
    if con is None:
        return None
    try:
        row = con.execute(
            "SELECT json_array_length(p.keys), p.unsupported, "
            "(SELECT COUNT(*) FROM runs r, json_each(p.keys) k "
            " WHERE r.key = k.value AND r.status = 'complete') "
            "FROM plans p WHERE p.fingerprint = ?", (fp,)).fetchone()
    except sqlite3.Error:  # no plans table yet, an older store, a locked or odd file
        return None
    finally:
        con.close()
    if row is None:
        return None
    return PlanStatus(runs=int(row[0]), complete=int(row[2]), unsupported=int(row[1]))


def can_remember(specs: Iterable[Any]) -> bool:
    """Whether a grid's keys depend only on what :func:`fingerprint` covers: every method,
    dataset and backbone class is bayesbench's own, and no dataset reads user files."""
    from bayesbench.registry import BACKBONES, DATASETS, METHODS

    for spec in specs:
        classes = [METHODS.get(spec.method), DATASETS.get(spec.dataset),
                   BACKBONES.get((spec.backbone or {"name": "transformer"})["name"])]
        if any(not cls.__module__.startswith("bayesbench.") for cls in classes):
            return False
        if classes[1].__module__ == "bayesbench.data.files":
            return False
    return True


def remember(store_path: Path, fp: str, keys: list[str], unsupported: int) -> None:
    """Store the plan ``fp`` -> ``keys`` (the grid's runs that train; ``unsupported`` more are
    skipped), keeping the :data:`PLANS_KEPT` newest plans. Best effort: a store that cannot
    take it just means the next rerun takes the ordinary path."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    try:
        con = sqlite3.connect(str(store_path), timeout=30)
    except sqlite3.Error:
        return
    try:
        with con:
            con.execute(_PLANS_SQL)
            con.execute("INSERT OR REPLACE INTO plans VALUES (?, ?, ?, ?)",
                        (fp, json.dumps(keys), unsupported, now))
            con.execute("DELETE FROM plans WHERE fingerprint NOT IN (SELECT fingerprint FROM "
                        "plans ORDER BY created_at DESC LIMIT ?)", (PLANS_KEPT,))
    except sqlite3.Error:
        pass
    finally:
        con.close()
