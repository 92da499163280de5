"""Remembered reports: a report whose inputs are unchanged answers without importing pandas.

Writing a report imports pandas, scipy.stats and matplotlib's helpers (about 2 s here) and
reads every run of the store (another second or two) even when every file it would write is
already in the folder, unchanged. So ``bayesbench report`` records, in the report folder's
manifest (:data:`MANIFEST`, key :data:`RECORD_KEY`), the files its last complete report wrote
(name, size, SHA-256 of the bytes, in the order it printed them) and the notes it printed,
under a *fingerprint* of everything a report is computed from:

- the store's contents, exactly: every row of every table the report can read (``runs``
  with its status, finish time, spec, versions and reliability statistics, ``metrics``,
  ``predictions``' blobs, the schema record, and any table added later), each row with its
  rowid, and the tables' SQL, read in one read transaction. A rescore deletes and reinserts a
  run's metric rows and updates its spec, an overwritten run is deleted and inserted again, an
  in-place ``UPDATE`` changes a value: each changes the digest, where a count, a maximum rowid
  or a sum of lengths could stay the same. Left out: ``claims`` (runs in flight) and ``plans``
  (a report reads only the grid's keys from them: next item). Reading the 342 runs of a full
  suite (112 MB of predictions) this way takes about 0.25 s;
- the configured grid the header counts (``--config``): the config file's path (it is printed)
  and bytes, and the run keys the report counts it from, looked up as
  :func:`bayesbench.report.grid.configured_keys` does (the plan ``bayesbench run`` remembered
  in the store, else the folder's ``.bayesbench-grid.json``). Where neither holds them the
  report resolves the config itself: then the fingerprint is completed after the report, from
  the keys it recorded in the folder;
- the command's flags: the store path as given (it is printed in the leaderboard) and the
  kind of runs reported (``--quick/--full``, or the kind the report picks without them: then
  ``report`` and ``report --full`` of a store with full runs share their record);
- bayesbench's own source and the installed distributions with the Python version, as
  :mod:`bayesbench.run_plan` fingerprints them (a changed drawing function, metric direction,
  table layout or an upgraded pandas or matplotlib all change the files).

A later ``report`` with the same fingerprint whose recorded files are all still in the folder
with the recorded bytes prints what the ordinary path would print and writes nothing. Anything
else — a run added, changed or failed, a rescore, another config, flag, code or package, a
missing or edited report file, ``--write-baseline``, ``BAYESBENCH_REPORT_FAST=0`` — takes the
ordinary path, which records the fingerprint it computed *before* reading the store (a run
stored while the report is written then makes the next fingerprint differ, never match).

The notes replayed are those of the recorded report less the one saying it replaced another
leaderboard: with the folder's leaderboard.md unchanged the ordinary path would not say that
again. A machine where ``--device auto`` may see a GPU resolves the configured grid through
torch every time (:func:`bayesbench.run_plan.device_type_without_torch`), so a report with a
config is never remembered there.

Only standard-library modules are imported here, and this module sits beside
:mod:`bayesbench.run_plan` rather than in :mod:`bayesbench.report`, whose ``__init__`` imports
pandas (making it lazy would turn ``bayesbench.report.aggregate``, today the function, into
the module of that name once any report module is imported).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bayesbench import run_plan

MANIFEST = ".bayesbench-report.json"
"""The report folder's manifest (:data:`bayesbench.report.render.MANIFEST`, the same file)."""
RECORD_KEY = "last_report"
"""The manifest's entry for the last complete report (the report's renderer ignores it, and
drops it whenever it rewrites the manifest)."""
SWITCH = "BAYESBENCH_REPORT_FAST"
"""Environment variable: ``0`` turns the remembered report off (every report is written)."""
GRID_RECORD = ".bayesbench-grid.json"
"""The folder's record of the last grid it resolved (written by
:func:`bayesbench.report.grid.configured_keys`, read by :func:`recorded_grid_keys`)."""
_RECORD_VERSION = 1
_TABLES_NOT_READ = frozenset({"claims", "plans"})


@dataclass(frozen=True)
class RememberedReport:
    """What the last complete report printed: its notes and the paths it wrote."""

    notes: tuple[str, ...]
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ReportPlan:
    """The fingerprint of a report's inputs (None: cannot be known without the ordinary path)
    and, when the folder holds a complete report of exactly these inputs, what it printed."""

    fingerprint: str | None
    remembered: RememberedReport | None = None
    pending: tuple[str, str] | None = None
    """(the digest of every input but the grid's keys, the grid's fingerprint) where the
    report is to resolve the configured grid: :func:`remember` completes the fingerprint."""


def enabled() -> bool:
    """Whether remembered reports are used (:data:`SWITCH` is not ``0``)."""
    return os.environ.get(SWITCH, "1").strip() != "0"


def code_digest() -> bytes:
    """bayesbench's own source and the installed distributions with the Python version (what
    :func:`bayesbench.run_plan.fingerprint` covers besides the config)."""
    h = hashlib.sha256()
    run_plan.hash_code(h)
    return h.digest()


@dataclass(frozen=True)
class _StoreState:
    digest: bytes
    full: bool
    """Whether a report not told ``--quick/--full`` picks full runs."""
    plan_keys: dict[bool, object]
    """Per kind (quick: True), the keys of the plan the grid's fingerprint finds, or None."""


def _store_state(store_path: Path, grid_fps: dict[bool, str]) -> _StoreState | None:
    """Read the store in one snapshot: the SHA-256 of every row of the tables a report reads
    (module docstring), whether a report not told the kind picks full runs (a complete full
    run with a metric row exists, or no complete run at all: as :func:`bayesbench.report.
    aggregate.select_runs` decides), and the keys of the plans ``grid_fps`` name. None when
    the store cannot be read (the ordinary path then reports the problem)."""
    con = run_plan.open_read_only(store_path)
    if con is None:
        return None
    try:
        con.isolation_level = None
        con.execute("BEGIN")  # one snapshot for every query below
        h = hashlib.sha256()
        tables = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                             "ORDER BY name").fetchall()
        h.update(repr(tables).encode())
        for name, _ in tables:
            if name in _TABLES_NOT_READ or name.startswith("sqlite_"):
                continue
            cursor = con.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid')
            h.update(f"\0table {name} {[d[0] for d in cursor.description]!r}\0".encode())
            while rows := cursor.fetchmany(4096):
                for row in rows:  # blobs by their bytes, other values by their exact repr
                    for value in row:
                        if isinstance(value, bytes):
                            h.update(b"b%d:" % len(value))
                            h.update(value)
                        else:
                            h.update(repr(value).encode("utf-8", "surrogatepass") + b"\0")
                    h.update(b"\n")
        complete_kinds = {bool(q) for (q,) in con.execute(
            "SELECT DISTINCT r.quick FROM runs r WHERE r.status = 'complete' "
            "AND EXISTS (SELECT 1 FROM metrics m WHERE m.key = r.key)")}
        plan_keys: dict[bool, object] = {}
        if grid_fps and any(name == "plans" for name, _ in tables):
            for kind, fp in grid_fps.items():
                plan_keys[kind] = run_plan.plan_keys_in(con, fp)
        con.execute("COMMIT")
    except sqlite3.Error:  # not a store, a locked or damaged file
        return None
    finally:
        con.close()
    return _StoreState(h.digest(), False in complete_kinds or not complete_kinds, plan_keys)


def recorded_grid_keys(out_dir: Path, grid_fp: str) -> list | None:
    """The keys the folder's :data:`GRID_RECORD` holds under ``grid_fp`` (None: no record
    of that grid); :func:`bayesbench.report.grid.configured_keys` reads them here too."""
    try:
        data = json.loads((out_dir / GRID_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != grid_fp:
        return None
    keys = data.get("keys")
    return keys if isinstance(keys, list) else None


def _inputs(store: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            quick: bool | None, config: str | os.PathLike[str] | None
            ) -> tuple[str, str | None, list | None] | None:
    """(the digest of every input but the configured grid's keys, the grid's fingerprint, the
    keys the report would count it from: None when it would resolve them afresh); None where
    the inputs cannot be known without the ordinary path."""
    store_path, out_dir = Path(store), Path(out_dir)
    grid_fps: dict[bool, str] = {}
    config_bytes = b""
    if config is not None:
        try:
            config_bytes = Path(config).read_bytes()
        except OSError:
            return None
        for kind in ((True, False) if quick is None else (bool(quick),)):
            fp = run_plan.fingerprint(Path(config), run_plan.GridFlags(
                None, None, None, kind, None, "auto"))
            if fp is None:  # a GPU may be visible: the grid is resolved through torch
                return None
            grid_fps[kind] = fp
    state = _store_state(store_path, grid_fps)
    if state is None:
        return None
    kind = (not state.full) if quick is None else bool(quick)  # `report` = `report --full`
    h = hashlib.sha256()
    h.update(f"bayesbench report v{_RECORD_VERSION}\0".encode())
    h.update(json.dumps([str(store_path), kind,
                         None if config is None else str(config)]).encode())
    h.update(state.digest)
    h.update(code_digest())
    if config is None:
        return h.hexdigest(), None, None
    h.update(b"\0config\0" + config_bytes)
    keys = state.plan_keys.get(kind)
    if keys is None:
        keys = recorded_grid_keys(out_dir, grid_fps[kind])
    return h.hexdigest(), grid_fps[kind], keys


def _with_grid(digest: str, keys: list | None) -> str:
    """The fingerprint: ``digest`` (:func:`_inputs`) and the configured grid's keys."""
    return hashlib.sha256(f"{digest}\0grid\0{json.dumps(keys)}".encode()).hexdigest()


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sha256_of(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def remembered(out_dir: str | os.PathLike[str], fp: str) -> RememberedReport | None:
    """The report the folder's manifest records under ``fp``, when every file it wrote is still
    there with the recorded size and bytes (and the folder is writable, as the ordinary path
    checks); None otherwise."""
    out_dir = Path(out_dir)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        return None
    record = (_read_manifest(out_dir) or {}).get(RECORD_KEY)
    if not isinstance(record, dict) or record.get("version") != _RECORD_VERSION \
            or record.get("fingerprint") != fp:
        return None
    files, notes = record.get("files"), record.get("notes")
    if not isinstance(files, list) or not files or not isinstance(notes, list) \
            or not all(isinstance(n, str) for n in notes):
        return None
    paths = []
    for entry in files:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
            return None
        name, size, sha = entry
        path = out_dir / name
        try:
            if not path.is_file() or path.stat().st_size != size:
                return None
        except OSError:
            return None
        if _sha256_of(path) != sha:
            return None
        paths.append(path)
    return RememberedReport(tuple(notes), tuple(paths))


def lookup(store: str | os.PathLike[str], out_dir: str | os.PathLike[str],
           quick: bool | None, config: str | os.PathLike[str] | None) -> ReportPlan:
    """The fingerprint of this report's inputs and, when the folder holds a complete report of
    exactly these inputs (:func:`remembered`), what it printed. Call it before the ordinary
    path reads the store, and hand the plan to :func:`remember` afterwards."""
    inputs = _inputs(store, out_dir, quick, config)
    if inputs is None:
        return ReportPlan(None)
    digest, grid_fp, keys = inputs
    if grid_fp is not None and keys is None:  # the report resolves the grid: known after it
        return ReportPlan(None, pending=(digest, grid_fp))
    fp = _with_grid(digest, keys)
    return ReportPlan(fp, remembered(out_dir, fp) if enabled() else None)


def remember(out_dir: str | os.PathLike[str], plan: ReportPlan, paths: list[Path],
             notes: list[str]) -> None:
    """Record in the folder's manifest that the complete report just written there from the
    inputs ``plan`` fingerprinted (before the report read the store) wrote ``paths`` and
    printed ``notes``. Where the report resolved the configured grid, its keys are read back
    from the folder's :data:`GRID_RECORD` it wrote. The note about replacing another
    leaderboard is left out (module docstring). Best effort: a record that cannot be written
    just means the next report takes the ordinary path."""
    out_dir = Path(out_dir)
    fp = plan.fingerprint
    if fp is None and plan.pending is not None:
        digest, grid_fp = plan.pending
        keys = recorded_grid_keys(out_dir, grid_fp)
        fp = _with_grid(digest, keys) if keys is not None else None
    data = _read_manifest(out_dir)
    if fp is None or data is None:
        return
    replacing = f"replacing {out_dir / 'leaderboard.md'}"
    files = []
    for path in map(Path, paths):
        sha = _sha256_of(path) if path.parent == out_dir else None
        if sha is None:  # only files of this folder can be checked next time
            return
        files.append([path.name, path.stat().st_size, sha])
    data[RECORD_KEY] = {"version": _RECORD_VERSION, "fingerprint": fp, "files": files,
                        "notes": [n for n in notes if not n.startswith(replacing)]}
    from bayesbench.report.files import atomic_write

    with contextlib.suppress(OSError):
        atomic_write(out_dir / MANIFEST, json.dumps(data, indent=1) + "\n")
