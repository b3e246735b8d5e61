"""The result cache: what a run computed for one case through one adapter (its record, and the
files it stored for ``bnspec repro``) and an adapter's accuracy measurement, kept between runs in
the user's cache directory, so that a run with nothing changed starts no worker at all.

An entry is keyed by everything that can change what it holds:

- bnspec itself: its version and a hash of its own source (every ``.py``, ``.toml`` and ``.json``
  file of the ``bnspec`` package, ``bnspec.adapters`` and ``bnspec.conformance`` included; the
  known-divergence registry aside, since the engine matches a cached record against the registry
  as it is now);
- the adapter: every field of it (name, reference, profile, capabilities, interpreter, worker
  environment, a conversion path's families), its declared profile's semantics, its framework's
  version as it reads it (from package metadata), and the source of the module it comes from (a
  third-party adapter is outside bnspec's own source);
- the environments it runs in: the names of the distributions (``*.dist-info``) installed in
  the site-packages of this interpreter (which judges every case, and runs the workers of
  adapters without an interpreter of their own), of ``Adapter.python``'s environment, and of
  the sibling environments a conversion path names (``*_family``): an install, upgrade or removal
  anywhere misses, and nothing is imported or started to find out;
- the case, by its whole canonical content, with its property and index, and the options that
  can change a record (the baseline and its semantics, whether the case is shrunk, the timeout,
  the memory limit).

Entries are JSON files written atomically; one that cannot be read, or is not what its key says,
is a miss, never an error. The directory is ``platformdirs.user_cache_dir("bnspec")``, or
``$BNSPEC_CACHE_DIR``; entries live under its ``results/`` folder.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnspec.adapter import Adapter
from bnspec.case import Case
from bnspec.records import Record, atomic_write

__all__ = ["ENV_VAR", "FORMAT", "CachedCase", "ResultCache", "cache_dir", "environment", "source_hash"]

ENV_VAR = "BNSPEC_CACHE_DIR"
FORMAT = 1  # the layout of an entry; a change misses every older one
_SOURCE_SUFFIXES = (".py", ".toml", ".json")
# Matched against every record again on each run (bnspec.engine), so its edits never stale an entry.
_NOT_IN_KEY = ("known_divergences.toml",)


def cache_dir() -> Path:
    """The user's bnspec cache directory: ``$BNSPEC_CACHE_DIR``, else platformdirs'."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    import platformdirs  # only where a cache is used: `import bnspec` stays light

    return Path(platformdirs.user_cache_dir("bnspec"))


def _package_roots() -> list[Path]:
    """The folders of the bnspec package and of its mapped subpackages (found, not imported)."""
    roots: list[Path] = []
    for name in ("bnspec", "bnspec.adapters", "bnspec.conformance"):
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            path = Path(location).resolve()
            if path not in roots:
                roots.append(path)
    return roots


def source_hash(roots: Sequence[Path] | None = None) -> str:
    """A hash of bnspec's own source files (a few hundred kB: milliseconds)."""
    h = hashlib.sha256()
    seen: set[Path] = set()
    for root in roots if roots is not None else _package_roots():
        for path in sorted(root.rglob("*")):
            if (path.suffix not in _SOURCE_SUFFIXES or path.name in _NOT_IN_KEY or "__pycache__" in path.parts
                    or path in seen or not path.is_file()):
                continue
            seen.add(path)
            h.update(f"{path.relative_to(root)}\0".encode())
            h.update(_read_bytes(path))
    return h.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b"\0unreadable"


def site_packages(python: str | None) -> list[Path]:
    """The site-packages folders of interpreter ``python`` (None: this one, from its sys.path)."""
    if python is None:
        return [Path(p) for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    return sorted(Path(python).parent.parent.glob("lib/python*/site-packages"))


def environment(python: str | None) -> list[Any]:
    """What is installed for ``python``: per site-packages folder, its distributions' metadata
    folder names (``name-version.dist-info``), sorted. Read from the file system only."""
    rows: list[Any] = [sys.version if python is None else python]
    for folder in site_packages(python):
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:
            names = ["<unreadable>"]
        rows.append([str(folder), names])
    return rows


def interpreters(adapter: Adapter) -> list[str | None]:
    """The interpreters an adapter's results depend on: this one (it judges, and runs a worker
    without an interpreter of its own), the adapter's, and every environment a conversion path
    names by family (a ``*_family`` field: torch_nobuco's runner, the chain's source), wherever
    :func:`bnspec.envpaths.envs_root` puts them."""
    from bnspec.envpaths import env_python

    found: list[str | None] = [None]
    if adapter.python is not None:
        found.append(adapter.python)
    for f in dataclasses.fields(adapter):
        value = getattr(adapter, f.name)
        if f.name.endswith("_family") and isinstance(value, str):
            found.append(str(env_python(value)))
    return list(dict.fromkeys(found))


def plain(value: Any) -> Any:
    """``value`` as JSON-able data for a key: dataclasses field by field, enums by value, anything
    else unknown by its repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def _module_sources(adapter: Adapter) -> list[str]:
    """Hashes of the files that define the adapter: its class's module and its reference's."""
    files: list[Path] = []
    module = sys.modules.get(type(adapter).__module__)
    if getattr(module, "__file__", None):
        files.append(Path(module.__file__))  # type: ignore[union-attr, arg-type]
    name = adapter.ref.rpartition(":")[0]
    if name.endswith(".py") or "/" in name:
        files.append(Path(name))
    elif getattr(sys.modules.get(name), "__file__", None):
        files.append(Path(sys.modules[name].__file__))  # type: ignore[arg-type]
    return [f"{p.name}:{hashlib.sha256(_read_bytes(p)).hexdigest()}" for p in dict.fromkeys(p.resolve() for p in files)]


@dataclass(frozen=True)
class CachedCase:
    """A case's cached outcome: its record (marked ``cached``), the files it stores under
    ``out/cases/`` (name, text), and the framework seconds it took when it was computed."""

    record: Record
    files: tuple[tuple[str, str], ...]
    framework_seconds: float


class ResultCache:
    """Entries under ``root/results/`` (``root``: :func:`cache_dir`). The parts of a key that
    hold for a whole run (bnspec's source, this environment) and for an adapter (its identity,
    its environments) are computed once per instance, that is once per run."""

    def __init__(self, root: Path | None = None) -> None:
        self.folder = (root if root is not None else cache_dir()) / "results"
        self._lock = threading.Lock()
        self._run: str | None = None
        self._adapters: dict[int, str] = {}
        self._environments: dict[str | None, list[Any]] = {}

    # -- keys --
    def _environment(self, python: str | None) -> list[Any]:
        if python not in self._environments:
            self._environments[python] = environment(python)
        return self._environments[python]

    def run_key(self) -> str:
        with self._lock:
            if self._run is None:
                from bnspec import __version__

                self._run = _digest({"format": FORMAT, "bnspec": __version__, "source": source_hash()})
            return self._run

    def adapter_key(self, adapter: Adapter) -> str:
        with self._lock:
            key = self._adapters.get(id(adapter))
            if key is None:
                profile = adapter.declared_profile()
                key = self._adapters[id(adapter)] = _digest({
                    # the class by name (a file's module gets a per-process name), its code by hash
                    "type": type(adapter).__qualname__,
                    "fields": plain(adapter), "profile": profile.name, "semantics": plain(profile.semantics),
                    "modules": _module_sources(adapter),
                    # read from package metadata where the adapter says (a helper environment's too)
                    "framework_version": adapter.framework_version(),
                    "environments": [self._environment(p) for p in interpreters(adapter)],
                })
            return key

    def case_key(self, adapter: Adapter, case: Case, prop: str, index: int, options: dict[str, Any]) -> str:
        """The key of ``case`` (property ``prop``, example ``index``) through ``adapter``, judged
        under ``options`` (whatever besides the case and the adapter can change the record)."""
        blob = json.dumps(case.to_dict(), sort_keys=True, separators=(",", ":"))
        return _digest({"run": self.run_key(), "adapter": self.adapter_key(adapter), "kind": "case",
                        "property": prop, "example": index, "case": hashlib.sha256(blob.encode()).hexdigest(),
                        "options": plain(options)})

    def accuracy_key(self, adapter: Adapter, options: dict[str, Any]) -> str:
        return _digest({"run": self.run_key(), "adapter": self.adapter_key(adapter), "kind": "accuracy",
                        "options": plain(options)})

    # -- entries --
    def load_case(self, key: str, adapter: str, prop: str, index: int, case_id: str) -> CachedCase | None:
        """The cached outcome, or None where there is none, or none readable that is this case's."""
        entry = self._read(key, "case")
        try:
            if entry is None:
                return None
            rec = Record.from_json(entry["record"])
            if (rec.adapter, rec.property, rec.example, rec.case_id) != (adapter, prop, index, case_id):
                return None
            files = tuple((str(name), str(text)) for name, text in entry["files"])
            if any(Path(name).name != name or name.startswith(".") for name, _ in files):
                return None
            rec.cached = True
            return CachedCase(rec, files, float(entry["framework_seconds"]))
        except (KeyError, TypeError, ValueError):
            return None

    def store_case(self, key: str, rec: Record, files: Iterable[tuple[str, str]], framework_seconds: float) -> None:
        """Keep ``rec`` (without its known-divergence match, which each run makes anew)."""
        line = dataclasses.replace(rec, known=None, cached=False).to_json()
        self._write(key, "case", {"record": line, "files": [list(f) for f in files],
                                  "framework_seconds": round(framework_seconds, 6)})

    def load_accuracy(self, key: str) -> dict[str, Any] | None:
        entry = self._read(key, "accuracy")
        rows = entry.get("rows") if entry is not None else None
        if not isinstance(rows, dict) or not all(isinstance(r, dict) and "err_u" in r and "note" in r
                                                 for r in rows.values()):
            return None
        return rows

    def store_accuracy(self, key: str, rows: dict[str, Any]) -> None:
        self._write(key, "accuracy", {"rows": rows})

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def _read(self, key: str, kind: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):  # absent, unreadable, corrupt: a miss
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key \
                or entry.get("kind") != kind:
            return None
        return entry

    def _write(self, key: str, kind: str, payload: dict[str, Any]) -> None:
        """Written whole or not at all; a cache that cannot be written is no cache, not an error."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({"format": FORMAT, "key": key, "kind": kind, **payload}, sort_keys=True))
        except (OSError, ValueError):
            pass
