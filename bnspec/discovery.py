"""Finding adapters: the ``bnspec.adapters`` entry-point group, and ``module:attr`` references.

Built-in adapters are registered in bnspec's own pyproject exactly like a third party's. A
broken third-party adapter is a warning, unless the user asked for it by name. Loading an
adapter module never imports its framework (that happens in the worker's ``setup``).

Profiles are found the same way, under the ``bnspec.profiles`` group, by
:mod:`bnspec.profiles.registry`: every profile lookup goes through it, so it sits with the
profiles, below the adapter protocol that refers to them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from bnspec.adapter import Adapter
from bnspec.errors import BnspecError, UnknownName

GROUP = "bnspec.adapters"


class AdapterLoadError(BnspecError):
    """An adapter reference could not be loaded."""


def load_adapter_ref(ref: str) -> Adapter:
    """Load ``module.path:ATTR`` or ``path/to/file.py:ATTR``."""
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr:
        raise AdapterLoadError(f"adapter reference {ref!r} is not of the form module:attr")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise AdapterLoadError(f"adapter file {module_name!r} does not exist")
            mod_key = f"bnspec_user_adapter_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_key, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_key] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except AdapterLoadError:
        raise
    except Exception as exc:  # a user's module may raise anything on import
        raise AdapterLoadError(f"cannot import {module_name!r} for adapter {ref!r}: {exc}") from exc
    try:
        adapter = getattr(module, attr)
    except AttributeError:
        raise AdapterLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(adapter, type):
        adapter = adapter()
    if not isinstance(adapter, Adapter):
        raise AdapterLoadError(
            f"{ref!r} is a {type(adapter).__name__}, not a bnspec.adapter.Adapter instance"
        )
    adapter.ref = ref
    return adapter


@lru_cache(maxsize=1)
def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        seen.setdefault(ep.name, ep)  # deduplicate (editable + regular installs)
    builtin = [e for e in seen.values() if e.value.startswith("bnspec.")]
    third = [e for e in seen.values() if not e.value.startswith("bnspec.")]
    return tuple(sorted(builtin, key=lambda e: e.name) + sorted(third, key=lambda e: e.name))


def adapter_names() -> list[str]:
    return [ep.name for ep in _entry_points()]


def discover(names: list[str] | None = None) -> dict[str, Adapter]:
    """Adapters by name; ``names`` restricts (and then a broken one is an error)."""
    eps = {ep.name: ep for ep in _entry_points()}
    if names is not None:
        for n in names:
            if n not in eps:
                raise UnknownName("adapter", n, list(eps))
    found: dict[str, Adapter] = {}
    for name in names if names is not None else list(eps):
        try:
            adapter = load_adapter_ref(eps[name].value)
        except AdapterLoadError as exc:
            if names is not None:
                raise
            warnings.warn(f"skipping broken adapter {name!r}: {exc}", stacklevel=2)
            continue
        if adapter.name != name:
            adapter.name = name
        found[name] = adapter
    return found
