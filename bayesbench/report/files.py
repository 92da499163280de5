"""Small file helpers of the report and the gate: atomic writes, Markdown tables, safe and
unique file names, output-path checks (kept apart so that every report module can import
them without import cycles)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path

from bayesbench.errors import OutputPathError


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` per column is "l" or "r" (default: first
    column left, the rest right). Pipes inside cells are escaped."""
    def esc(cell: object) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    align = align or ["l"] + ["r"] * (len(headers) - 1)
    rule = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME_PART = 80
"""Longest label or dataset name used as is in a file name (file systems allow 255 bytes)."""


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_file_name(name: str) -> str:
    """A file-name part for ``name``: ``name`` itself when it is made of ``A-Za-z0-9_.-``
    only and at most :data:`MAX_NAME_PART` characters (so existing report names stay), else
    its slug (other characters as ``_``, cut to 60) + ``-`` + 8 hex digits of its SHA-256, so
    ``a b`` and ``a_b`` never share a file."""
    slug = _UNSAFE.sub("_", name)
    if slug == name and 0 < len(name) <= MAX_NAME_PART:
        return name
    return f"{slug[:60]}-{_short_hash(name)}"


_safe_name = safe_file_name  # the name other modules import


def unique_file_names(keys: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """One file-name stem per key (e.g. ``(dataset,)`` or ``(dataset, group)``): the parts'
    :func:`safe_file_name` joined by ``_``, plus a hash of the key where two keys would
    otherwise share a stem, also ignoring case (``("a_b", "c")`` vs ``("a", "b_c")``, or
    ``Digits`` vs ``digits`` on macOS and Windows)."""
    stems = {key: "_".join(safe_file_name(part) for part in key) for key in dict.fromkeys(keys)}
    by_stem: dict[str, list[Hashable]] = defaultdict(list)
    for key, stem in stems.items():
        by_stem[stem.lower()].append(key)
    return {key: stem if len(by_stem[stem.lower()]) == 1 else f"{stem}-{_short_hash(*key)}"
            for key, stem in stems.items()}


def check_output_folder(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Raise :class:`OutputPathError` (naming ``what``) unless ``path`` is a folder, or can be
    made one, that this process may write; call it before writing anything."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {p}: is an existing file, not a folder; give a folder "
                              "path (it is created if missing)")
    _check_writable_parent(p, what)
    return p


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be written as a file."""
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{what} {p}: is a folder; give a file path, e.g. "
                              f"{p / 'baseline.csv'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what} {p}: the file is not writable; check its permissions")
    _check_writable_parent(p.parent, what, shown=p)
    return p


def _check_writable_parent(folder: Path, what: str, shown: Path | None = None) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder."""
    shown = shown if shown is not None else folder
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {shown}: '{existing}' is a file, so no folder can be "
                              "made there; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {shown}: the folder '{existing}' is not writable; "
                              "choose another path or fix its permissions")
