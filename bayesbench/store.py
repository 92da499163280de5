"""The results store: one SQLite file holding every finished run.

Tables
------
``bayesbench_schema(name, value)``
    Marks the file as a bayesbench store and records the schema version.
``runs``
    One row per run, keyed by :attr:`RunResult.key` (the RunSpec hash). Writing a key again
    replaces the row (a rerun of a failed run overwrites its failure), except that a failed
    result never replaces a complete one: a finished result is never lost.
``metrics(key, split, metric, value)``
    Tidy metric values, for queries and for :meth:`ResultStore.metrics_frame`.
``predictions(key, data, bytes)``
    What every metric of the run is computed from, per evaluation split
    (:mod:`bayesbench.predictions`, compressed), written with the run; ``bayesbench rescore``
    recomputes the metrics from it.
``claims(key, owner, host, pid, claimed_at, heartbeat)``
    Runs in flight. A ``bayesbench run`` claims a run (:meth:`ResultStore.claim`, one
    ``BEGIN IMMEDIATE`` transaction) before it trains it, renews its claims' heartbeat while it
    works (:meth:`ResultStore.renew_claims`) and drops the claim when it writes the result, so
    two processes on one store never train the same run twice. A claim is lost when its
    heartbeat is older than the lease, or at once when its owner ran on this host and its
    process is gone (killed, crashed): the next process takes the run over.
``plans(fingerprint, keys, unsupported, created_at)``
    Grids ``bayesbench run`` resolved, by a fingerprint of their inputs (written and read by
    :mod:`bayesbench.run_plan`, never by this class): a rerun of a complete grid reads one row
    and answers without importing torch.

Each :meth:`ResultStore.write` is one transaction committed at once, so a crash loses at most
the run in flight. WAL journaling plus a busy timeout lets readers (``report``) look at the
file while a benchmark is still writing to it. Only the driver process writes (never a worker).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bayesbench.errors import StoreError
from bayesbench.results import MetricValue, RunResult

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
_APP_NAME = "bayesbench"
_BUSY_TIMEOUT_S = 30.0
CLAIM_LEASE_S = 120.0
"""A claim whose heartbeat is older than this is lost (its owner is taken for dead)."""

# Scalar columns of ``runs``, in RunResult field order; JSON columns follow.
_RUN_COLUMNS = [
    "key", "label", "method", "dataset", "seed", "config_hash", "quick", "status", "error",
    "device", "git_commit", "started_at", "finished_at",
]
_JSON_COLUMNS = ["spec", "versions", "reliability"]

_CLAIMS_SQL = """
CREATE TABLE IF NOT EXISTS claims (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    heartbeat  REAL NOT NULL
);"""

_PREDICTIONS_SQL = """
CREATE TABLE IF NOT EXISTS predictions (
    key   TEXT PRIMARY KEY REFERENCES runs(key) ON DELETE CASCADE,
    data  BLOB NOT NULL,
    bytes INTEGER NOT NULL
);"""

_SCHEMA_SQL = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS bayesbench_schema (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    key         TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    method      TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    quick       INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('complete', 'failed')),
    error       TEXT,
    device      TEXT,
    git_commit  TEXT,
    started_at  TEXT,
    finished_at TEXT,
    spec        TEXT NOT NULL,
    versions    TEXT NOT NULL,
    reliability TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    key    TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    split  TEXT NOT NULL,
    metric TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (key, split, metric)
);
CREATE INDEX IF NOT EXISTS metrics_by_metric ON metrics(metric, split);
{_CLAIMS_SQL}
{_PREDICTIONS_SQL}
INSERT OR IGNORE INTO bayesbench_schema (name, value)
    VALUES ('app', '{_APP_NAME}'), ('schema_version', '{SCHEMA_VERSION}');
COMMIT;
"""


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim: this host and process, plus a nonce (pids get reused)."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> ClaimOwner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


ClaimStatus = Literal["claimed", "complete", "held"]


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`ResultStore.claim`: ``claimed`` (train it), ``complete`` (stored
    meanwhile, skip it) or ``held`` (another live process trains it; ``holder`` says which)."""

    status: ClaimStatus
    holder: str = ""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def _to_json(obj: Any) -> str:
    # default=str: a stray non-JSON value in a spec must not lose a finished run.
    return json.dumps(obj, sort_keys=False, default=str)


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class ResultStore:
    """SQLite results store at ``path``; created (with its parent folders) if missing.

    Use :meth:`open_existing` where a missing store is an error (``report``, ``check``).

    >>> store = ResultStore("results/bayesbench.sqlite")          # doctest: +SKIP
    >>> store.write(result); store.completed_keys()               # doctest: +SKIP
    {'3f2a...'}
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(
                f"results store {self.path} is a folder: give the path of a .sqlite file"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder for results store {self.path}: {exc}"
            ) from None
        self._initialise()

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> ResultStore:
        """Open a store that must already exist (for reading results)."""
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"no results at {p}: run `bayesbench run` first")
        return cls(p)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- connection and schema -------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success, rolls back on error and always closes.

        ``immediate``: take the write lock when the transaction starts, so that what it reads
        cannot change before it writes (a read-then-write in a deferred transaction can fail
        with SQLITE_BUSY under WAL instead of waiting for the busy timeout)."""
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if immediate:
                conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return
            with conn:  # transaction: commit or roll back
                yield conn
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"cannot use results store {self.path} ({exc}): check that it is writable and "
                "that no other process holds it locked, or choose another store path"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"results store {self.path} is unreadable ({exc}): it is not a bayesbench "
                "store or it is damaged; choose another store path or move this file away"
            ) from None
        finally:
            conn.close()

    def _initialise(self) -> None:
        with self._connect() as conn:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "bayesbench_schema" not in tables:
                if tables:
                    raise StoreError(
                        f"{self.path} is an SQLite file but not a bayesbench results store "
                        f"(it holds tables {sorted(tables)}): choose another store path"
                    )
                conn.executescript(_SCHEMA_SQL)  # its own BEGIN/COMMIT: all or nothing
            else:
                info = dict(conn.execute("SELECT name, value FROM bayesbench_schema"))
                version = int(info.get("schema_version", "0"))
                if info.get("app") != _APP_NAME or version < 1:
                    raise StoreError(
                        f"{self.path} has no valid bayesbench schema record: "
                        "choose another store path"
                    )
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"results store {self.path} has schema version {version}, newer than "
                        f"this bayesbench understands ({SCHEMA_VERSION}): upgrade bayesbench "
                        "or choose another store path"
                    )
                if "claims" not in tables:  # a store written before claims existed
                    conn.execute(_CLAIMS_SQL)
                if "predictions" not in tables:  # ... or before predictions were kept
                    conn.execute(_PREDICTIONS_SQL)
        # WAL lets report/check read while a run writes; outside the transaction by necessity.
        with contextlib.suppress(StoreError):
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode = WAL")

    # -- writing -----------------------------------------------------------------------------

    def write(self, result: RunResult) -> bool:
        """Insert or replace the run ``result.key`` and its metrics, and drop its claim, in one
        transaction. A failed result does not replace a stored complete one: then nothing is
        written (the claim is still dropped) and the answer is False; otherwise True."""
        seen: set[tuple[str, str]] = set()
        for m in result.metrics:
            if (m.split, m.metric) in seen:
                raise ValueError(
                    f"run {result.key} reports {m.metric} on split {m.split} twice"
                )
            seen.add((m.split, m.metric))
        row = [getattr(result, c) for c in _RUN_COLUMNS]
        row[_RUN_COLUMNS.index("quick")] = int(bool(result.quick))
        row += [_to_json(result.spec), _to_json(result.versions), _to_json(result.reliability)]
        columns = _RUN_COLUMNS + _JSON_COLUMNS
        with self._connect(immediate=True) as conn:
            conn.execute("DELETE FROM claims WHERE key = ?", (result.key,))
            if result.status != "complete":
                stored = conn.execute("SELECT status FROM runs WHERE key = ?",
                                      (result.key,)).fetchone()
                if stored is not None and stored[0] == "complete":
                    return False
            conn.execute("DELETE FROM metrics WHERE key = ?", (result.key,))
            conn.execute("DELETE FROM predictions WHERE key = ?", (result.key,))
            conn.execute("DELETE FROM runs WHERE key = ?", (result.key,))
            conn.execute(
                f"INSERT INTO runs ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                row,
            )
            conn.executemany(
                "INSERT INTO metrics (key, split, metric, value) VALUES (?, ?, ?, ?)",
                [(result.key, m.split, m.metric, float(m.value)) for m in result.metrics],
            )
            if result.predictions is not None:
                conn.execute("INSERT INTO predictions (key, data, bytes) VALUES (?, ?, ?)",
                             (result.key, result.predictions, len(result.predictions)))
        return True

    def replace_metrics(self, key: str, metrics: Iterable[MetricValue],
                        spec: dict[str, Any], reliability: dict[str, Any] | None) -> None:
        """Replace the metrics of the stored run ``key`` whose splits ``metrics`` cover (other
        splits, such as cost and fit, are kept), its spec and reliability statistics, in one
        transaction (``bayesbench rescore``)."""
        metrics = list(metrics)
        splits = {m.split for m in metrics}
        with self._connect(immediate=True) as conn:
            kept = [row for row in conn.execute(
                "SELECT split, metric, value FROM metrics WHERE key = ? ORDER BY rowid", (key,))
                if row[0] not in splits]
            conn.execute("DELETE FROM metrics WHERE key = ?", (key,))
            # the order a run reports in: the scored splits first, then cost and fit
            conn.executemany(
                "INSERT INTO metrics (key, split, metric, value) VALUES (?, ?, ?, ?)",
                [(key, m.split, m.metric, float(m.value)) for m in metrics]
                + [(key, *row) for row in kept])
            conn.execute("UPDATE runs SET spec = ?, reliability = ? WHERE key = ?",
                         (_to_json(spec), _to_json(reliability), key))

    def predictions(self, key: str) -> bytes | None:
        """The stored predictions blob of run ``key`` (None when none were kept)."""
        with self._connect() as conn:
            row = conn.execute("SELECT data FROM predictions WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def predictions_of(self, keys: list[str]) -> dict[str, bytes]:
        """Run key -> stored predictions blob, for those of ``keys`` that kept any."""
        out: dict[str, bytes] = {}
        with self._connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                out.update((k, bytes(d)) for k, d in conn.execute(
                    f"SELECT key, data FROM predictions WHERE key IN ({marks})", chunk))
        return out

    def predictions_sizes(self) -> dict[str, int]:
        """Run key -> bytes of its stored predictions."""
        with self._connect() as conn:
            return dict(conn.execute("SELECT key, bytes FROM predictions"))

    # -- claims on runs in flight ---------------------------------------------------------------

    def claim(self, key: str, owner: ClaimOwner, lease_s: float = CLAIM_LEASE_S) -> Claim:
        """Atomically claim run ``key`` for ``owner`` before training it (module docstring)."""
        now = time.time()
        with self._connect(immediate=True) as conn:
            stored = conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if stored is not None and stored[0] == "complete":
                return Claim("complete")
            held = conn.execute("SELECT owner, host, pid, heartbeat FROM claims WHERE key = ?",
                                (key,)).fetchone()
            if held is not None and held[0] != owner.id:
                holder, host, pid, heartbeat = held
                alive = now - heartbeat < lease_s and (host != owner.host
                                                       or _process_alive(pid))
                if alive:
                    return Claim("held", f"pid {pid} on {host}")
            conn.execute(
                "INSERT OR REPLACE INTO claims (key, owner, host, pid, claimed_at, heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?)", (key, owner.id, owner.host, owner.pid, now, now))
        return Claim("claimed")

    def renew_claims(self, owner: ClaimOwner) -> None:
        """Refresh the heartbeat of every claim ``owner`` holds (call well within the lease)."""
        with self._connect() as conn:
            conn.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?",
                         (time.time(), owner.id))

    def release_claims(self, owner: ClaimOwner, keys: Iterable[str] | None = None) -> None:
        """Drop ``owner``'s claims on ``keys`` (all of them when None)."""
        with self._connect() as conn:
            if keys is None:
                conn.execute("DELETE FROM claims WHERE owner = ?", (owner.id,))
            else:
                conn.executemany("DELETE FROM claims WHERE owner = ? AND key = ?",
                                 [(owner.id, k) for k in keys])

    def claims(self) -> list[tuple[str, str]]:
        """(key, owner id) of every claim on record, live or not."""
        with self._connect() as conn:
            return list(conn.execute("SELECT key, owner FROM claims ORDER BY key"))

    # -- reading -----------------------------------------------------------------------------

    def completed_keys(self) -> set[str]:
        """Keys of runs that finished successfully (failed runs are rerun on resume)."""
        with self._connect() as conn:
            return {k for (k,) in conn.execute("SELECT key FROM runs WHERE status = 'complete'")}

    def get(self, key: str) -> RunResult | None:
        """The stored run ``key``, or None."""
        found = self._load("WHERE key = ?", (key,))
        return found[0] if found else None

    def results(self, status: str | None = None) -> list[RunResult]:
        """All stored runs (optionally only ``"complete"`` or ``"failed"``), sorted by
        dataset, label, seed."""
        if status is None:
            return self._load("", ())
        if status not in ("complete", "failed"):
            raise ValueError(f"status must be 'complete', 'failed' or None, not {status!r}")
        return self._load("WHERE status = ?", (status,))

    def _load(self, where: str, params: tuple[Any, ...]) -> list[RunResult]:
        columns = _RUN_COLUMNS + _JSON_COLUMNS
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM runs {where} "
                "ORDER BY dataset, label, seed, key",
                params,
            ).fetchall()
            metrics: dict[str, list[MetricValue]] = {}
            for key, split, metric, value in conn.execute(
                # rowid order = the order the run reported its metrics in
                f"SELECT key, split, metric, value FROM metrics "
                f"WHERE key IN (SELECT key FROM runs {where}) ORDER BY rowid",
                params,
            ):
                # SQLite stores NaN as NULL; give it back as NaN.
                v = math.nan if value is None else float(value)
                metrics.setdefault(key, []).append(MetricValue(split, metric, v))
        out = []
        for row in rows:
            d = dict(zip(columns, row))
            d["quick"] = bool(d["quick"])
            for c in _JSON_COLUMNS:
                d[c] = _from_json(d[c])
            d["metrics"] = metrics.get(d["key"], [])
            out.append(RunResult(**d))
        return out

    def runs_frame(self) -> pd.DataFrame:
        """One row per stored run (complete and failed): the scalar columns of ``runs``, and
        ``cpu``, the CPU model the run recorded (None for runs stored before it was)."""
        import pandas as pd  # here: the driver of `bayesbench run` never needs pandas (0.5 s)

        with self._connect() as conn:
            frame = pd.read_sql_query(
                f"SELECT {', '.join(_RUN_COLUMNS)}, json_extract(versions, '$.cpu') AS cpu "
                "FROM runs ORDER BY dataset, label, seed, key",
                conn,
            )
        frame["quick"] = frame["quick"].astype(bool)
        return frame

    def metrics_frame(self) -> pd.DataFrame:
        """Tidy metric values of complete runs: key, label, method, dataset, seed, quick,
        finished_at, split, metric, value (one row per run × split × metric)."""
        import pandas as pd

        with self._connect() as conn:
            frame = pd.read_sql_query(
                "SELECT r.key, r.label, r.method, r.dataset, r.seed, r.quick, r.finished_at, "
                "m.split, m.metric, m.value "
                "FROM metrics m JOIN runs r ON r.key = m.key "
                "WHERE r.status = 'complete' "
                "ORDER BY r.dataset, r.label, r.seed, r.key, m.rowid",
                conn,
            )
        frame["quick"] = frame["quick"].astype(bool)
        frame["value"] = frame["value"].astype(float)
        return frame
