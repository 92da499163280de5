"""Render a report's figures only when their inputs changed, several at once where possible.

A figure is a :class:`FigureJob`: its PNG file name, the module-level function that draws it
and that function's arguments. Its *input hash* (:func:`input_hash`) is the SHA-256 of a
canonical encoding of the arguments, of the source file of the drawing function and of the
matplotlib version, so a change to the data, to the drawing code or to matplotlib redraws it
(matplotlib settings of the user's own, e.g. a matplotlibrc, are not covered: delete the PNGs
or the manifest to redraw). The report folder keeps, in :data:`MANIFEST`, per file its input
hash and the SHA-256 of its bytes. A figure whose input hash matches and whose PNG is on disk
with the recorded bytes is left untouched; every other one is drawn, so a missing, edited or
foreign PNG never survives. report.html and the CSVs are kept the same way
(:func:`write_unless_current`; a CSV's input is its frame, :func:`frame_digest`).

Figures that are due are drawn in worker processes when there are several and more than one
core (fork start on Linux only, and only from a single-threaded process, where forking is
safe); otherwise in this process. Either way the PNG bytes are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesbench.report.files import atomic_write

MANIFEST = ".bayesbench-report.json"
"""The hidden file in a report folder recording, per file it made, its input hash and the
SHA-256 of its bytes."""
_MANIFEST_VERSION = 1
_MIN_PARALLEL = 3  # fewer due figures than this are cheaper to draw than a pool is to start


@dataclasses.dataclass
class FigureJob:
    """One figure of a report: ``draw(*args)`` returns the PNG bytes of ``name``."""

    name: str
    draw: Callable[..., bytes]
    args: tuple = ()

    def input_hash(self) -> str:
        return input_hash(self.draw, self.args)


_DOUBLE = struct.Struct("<d")
_NAN = b"n" + bytes(8)  # as long as a float's encoding: every NaN alike


def _feed(h, obj: Any) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` into hash ``h`` (order-preserving for
    sequences and mappings: the order of labels is part of what a figure shows)."""
    if obj is None or isinstance(obj, (bool, np.bool_)):
        h.update(f"{obj!r}\0".encode())
    elif isinstance(obj, str):
        raw = obj.encode("utf-8", "surrogatepass")
        h.update(f"s{len(raw)}:".encode() + raw)
    elif isinstance(obj, (int, np.integer)):
        h.update(b"i" + str(int(obj)).encode() + b"\0")
    elif isinstance(obj, (float, np.floating)):
        value = float(obj)
        h.update(_NAN if math.isnan(value) else b"f" + _DOUBLE.pack(value))
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            _feed(h, ("ndarray", obj.shape, obj.ravel().tolist()))
        else:
            h.update(f"nd:{obj.dtype.str}:{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, pd.DataFrame) and len(obj) > 1000:
        h.update(b"bigdf" + frame_digest(obj).encode())
    elif isinstance(obj, pd.DataFrame):
        h.update(b"df")
        _feed(h, [str(c) for c in obj.columns])
        _feed(h, obj.index)
        for column in obj.columns:
            _feed(h, obj[column].to_numpy())
    elif isinstance(obj, pd.Series):
        h.update(b"series")
        _feed(h, None if obj.name is None else str(obj.name))
        _feed(h, obj.index)
        _feed(h, obj.to_numpy())
    elif isinstance(obj, pd.Index):
        _feed(h, ("index", obj.to_numpy()))
    elif isinstance(obj, dict):
        h.update(b"dict" + str(len(obj)).encode() + b"\0")
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)}".encode() + b"\0")
        if all(type(x) is float for x in obj):  # the bytes of feeding each float, at once
            h.update(b"".join([_NAN if x != x else b"f" + _DOUBLE.pack(x) for x in obj]))
            return
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, (set, frozenset)):
        _feed(h, ("set", sorted(repr(x) for x in obj)))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"dc:{type(obj).__qualname__}".encode() + b"\0")
        for f in dataclasses.fields(obj):
            _feed(h, f.name)
            _feed(h, getattr(obj, f.name))
    elif pd.api.types.is_scalar(obj) and pd.isna(obj):
        h.update(b"na\0")
    else:
        raise TypeError(f"cannot hash figure input of type {type(obj).__name__}")


def frame_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of ``frame``'s columns, dtypes and values, fast for large frames: numeric
    columns by their bytes, other columns by their distinct values and each row's code
    (``None`` and ``"None"`` differ). Two frames with one digest write the same CSV."""
    h = hashlib.sha256()
    _feed(h, ([str(c) for c in frame.columns], [str(t) for t in frame.dtypes], len(frame)))
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, np.dtype) and values.dtype.kind in "biufcmM":
            h.update(np.ascontiguousarray(values.to_numpy()).tobytes())
        else:
            # the distinct values (exact, type-tagged) and each row's code; a missing value
            # (None, NaN, NA: an empty CSV cell) is code -1
            codes, uniques = pd.factorize(values.astype(object), use_na_sentinel=True)
            _feed(h, list(uniques))
            h.update(codes.astype(np.int64).tobytes())
    return h.hexdigest()


_CODE_HASHES: dict[str, str] = {}


def code_hash(draw: Callable[..., Any]) -> str:
    """SHA-256 of the source file that defines ``draw`` (cached per file)."""
    path = inspect.getsourcefile(draw) or ""
    if path not in _CODE_HASHES:
        try:
            _CODE_HASHES[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            _CODE_HASHES[path] = "unknown"
    return _CODE_HASHES[path]


@functools.cache
def package_version(name: str) -> str:
    """The installed version of distribution ``name`` (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def input_hash(draw: Callable[..., Any], args: Sequence[Any], *,
               packages: Sequence[str] = ("matplotlib",)) -> str:
    """The input hash of ``draw(*args)`` (module docstring): ``args``, the source file of
    ``draw`` and the versions of ``packages`` (no import: a report whose figures are all
    current never loads matplotlib)."""
    h = hashlib.sha256()
    _feed(h, (f"{draw.__module__}:{draw.__qualname__}", code_hash(draw),
              [package_version(p) for p in packages]))
    _feed(h, tuple(args))
    return h.hexdigest()


def _read_manifest(out_dir: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _is_current(path: Path, entry: object, inputs: str) -> bool:
    if not isinstance(entry, dict) or entry.get("inputs") != inputs:
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == entry.get("sha256")


def _draw(job: FigureJob) -> bytes:
    return job.draw(*job.args)


def _parallel_workers(due: int, workers: int | None) -> int:
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            workers = os.cpu_count() or 1
    workers = min(workers, due)
    if (workers < 2 or due < _MIN_PARALLEL or not sys.platform.startswith("linux")
            or threading.active_count() > 1):
        return 1
    return workers


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None,
             chunksize: int = 1) -> list[Any]:
    """``[fn(item) for item in items]``, in up to ``workers`` forked processes (None: the
    usable cores) where the module docstring allows it, else in this process; a pool that
    cannot start or loses a worker leaves the work to this process. ``fn`` must be a
    module-level function, pure: the result is the same either way. ``chunksize``: items
    sent to a worker at once (more for many cheap items)."""
    n = _parallel_workers(len(items), workers)
    if n > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        with contextlib.suppress(OSError, ImportError, BrokenProcessPool):
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(fn, items, chunksize=chunksize))
    return [fn(item) for item in items]


def is_current(out_dir: str | os.PathLike[str], name: str, inputs: str) -> bool:
    """Whether the folder's :data:`MANIFEST` records ``out_dir / name`` as made from
    ``inputs`` and the file still has the recorded bytes (what :func:`write_unless_current`
    skips on)."""
    out_dir = Path(out_dir)
    return _is_current(out_dir / name, _read_manifest(out_dir).get(name), inputs)


def render_figures(jobs: Sequence[FigureJob], out_dir: str | os.PathLike[str],
                   workers: int | None = None, rendered: list[str] | None = None
                   ) -> list[Path]:
    """Write each job's PNG into ``out_dir`` unless it is current (module docstring); update
    the folder's :data:`MANIFEST`. ``workers``: processes to draw with (None: the usable
    cores). When ``rendered`` is a list, the names of the figures drawn are appended to it.
    Returns the paths of all jobs' PNGs, in ``jobs`` order."""
    out_dir = Path(out_dir)
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"two figures share a file name: {names}")
    manifest = _read_manifest(out_dir)
    hashes = [job.input_hash() for job in jobs]
    due = [i for i, (job, inputs) in enumerate(zip(jobs, hashes))
           if not _is_current(out_dir / job.name, manifest.get(job.name), inputs)]
    pngs = fork_map(_draw, [jobs[i] for i in due], workers)
    for i, data in zip(due, pngs):
        atomic_write(out_dir / jobs[i].name, data)
        manifest[jobs[i].name] = {"inputs": hashes[i],
                                  "sha256": hashlib.sha256(data).hexdigest()}
        if rendered is not None:
            rendered.append(jobs[i].name)
    if due or not (out_dir / MANIFEST).is_file():
        _write_manifest(out_dir, manifest)
    return [out_dir / name for name in names]


def _write_manifest(out_dir: Path, manifest: dict[str, dict[str, str]]) -> None:
    record = {"version": _MANIFEST_VERSION,
              "files": {k: manifest[k] for k in sorted(manifest)}}
    atomic_write(out_dir / MANIFEST, json.dumps(record, indent=1) + "\n")


def recorded_hashes(out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """File name -> the SHA-256 of its bytes, as the folder's :data:`MANIFEST` records it;
    trust an entry only right after :func:`render_figures` or :func:`write_unless_current`
    checked its file."""
    return {name: entry["sha256"] for name, entry in _read_manifest(Path(out_dir)).items()
            if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)}


def write_unless_current(out_dir: str | os.PathLike[str], name: str, inputs: str,
                         produce: Callable[[], str | bytes]) -> tuple[Path, bool]:
    """Write ``produce()`` to ``out_dir / name`` unless the folder's :data:`MANIFEST` records
    that the file was made from ``inputs`` (an :func:`input_hash`) and the file still has the
    recorded bytes. Returns (the path, whether it was written)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    path = out_dir / name
    if _is_current(path, manifest.get(name), inputs):
        return path, False
    data = produce()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, raw)
    manifest[name] = {"inputs": inputs, "sha256": hashlib.sha256(raw).hexdigest()}
    _write_manifest(out_dir, manifest)
    return path, True
