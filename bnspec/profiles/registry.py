"""Finding profiles: bnspec's own modules first, then the ``bnspec.profiles`` entry-point group.

A package registers each of its profiles as one entry point whose name is the profile's name and
whose value is the :class:`Profile` object (``mybn = "mybn_bnspec:MYBN"``). The rules (those of
pluggy and xarray's backends):

- built-in names are reserved: a third-party profile with one is refused, with a warning;
- entry points that are the same (an editable and a regular install of one distribution) are one;
- two distributions registering one name make it ambiguous: both are refused, naming both;
- each entry point is loaded in ``try`` and validated exactly like a built-in profile; a broken one
  is a warning when every profile is listed, and a one-line :class:`ProfileLoadError` when the
  user asked for it by name;
- a profile is loaded once and cached; ``ep.load()`` keeps its distribution, so the version that
  registered it is known (:func:`profile_source`).

Asking for a built-in profile by name loads no entry point.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

from bnspec.errors import BnspecError, UnknownName
from bnspec.profiles.profile import Profile
from bnspec.semantics import Semantics

GROUP = "bnspec.profiles"


class ProfileLoadError(BnspecError):
    """A third-party profile could not be loaded or is invalid; the message is one line naming the
    entry point, its distribution and what is wrong."""


class ProfileWarning(UserWarning):
    """A third-party profile was skipped (broken, or a duplicate name)."""


@dataclass(frozen=True)
class ProfileSource:
    """Where a profile comes from: bnspec itself, or a distribution's entry point."""

    distribution: str
    version: str | None = None
    entry_point: str | None = None  # "name = module:attr"; None for a built-in

    @property
    def builtin(self) -> bool:
        return self.entry_point is None

    def __str__(self) -> str:
        if self.builtin:
            return "built-in (bnspec)"
        return f"{self.distribution} {self.version or '?'} (entry point {self.entry_point})"


_BUILTIN_SOURCE = ProfileSource("bnspec")


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, Profile]:
    """bnspec's own profiles, one module per framework family, in this order."""
    from bnspec.profiles import (
        equinox,
        flax,
        haiku,
        jax_data_parallel,
        keras,
        onnx,
        onnx_reference,
        paper,
        tensorflow,
        tf_data_parallel,
        torch,
        torch_data_parallel,
    )

    found: dict[str, Profile] = {}
    for module in (torch, keras, tensorflow, flax, haiku, equinox, onnx, onnx_reference, paper,
                   torch_data_parallel, jax_data_parallel, tf_data_parallel):
        for profile in module.PROFILES:
            if profile.name in found:
                raise ValueError(f"profile {profile.name!r} is defined twice")
            found[profile.name] = profile
    return found


def _source(ep: metadata.EntryPoint) -> ProfileSource:
    dist = ep.dist
    return ProfileSource(dist.name if dist is not None else "an unknown distribution",
                         dist.version if dist is not None else None, f"{ep.name} = {ep.value}")


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """The group's entry points by name, the same one installed twice counted once."""
    by_name: dict[str, dict[tuple[str, str], metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        by_name.setdefault(ep.name, {}).setdefault((_normalize(dist), ep.value), ep)
    return {name: tuple(v for _, v in sorted(eps.items())) for name, eps in sorted(by_name.items())}


def _normalize(dist: str) -> str:
    return dist.lower().replace("-", "_").replace(".", "_")


_LOADED: dict[tuple[str, str, str], Profile | ProfileLoadError] = {}
# Loading is serialized (fingerprints run in threads); re-entrant, for a third-party module that
# looks up a profile while it is being loaded.
_LOCK = threading.RLock()


def _load(ep: metadata.EntryPoint) -> Profile:
    """Load and validate one entry point, once; raise :class:`ProfileLoadError` (one line)."""
    key = (ep.name, ep.value, ep.dist.name if ep.dist is not None else "")
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _try_load(ep)
    found = _LOADED[key]
    if isinstance(found, ProfileLoadError):
        raise found
    return found


def _try_load(ep: metadata.EntryPoint) -> Profile | ProfileLoadError:
    where = f"profile {ep.name!r} from {_source(ep)}"
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - a third party's module may raise anything on import
        why = str(exc) if isinstance(exc, BnspecError) else f"{type(exc).__name__}: {exc}"
        return ProfileLoadError(_one_line(f"{where}: cannot load: {why}"))
    if not isinstance(obj, Profile):
        return ProfileLoadError(f"{where}: loads a {type(obj).__name__}, not a bnspec.Profile")
    if obj.name != ep.name:
        return ProfileLoadError(f"{where}: loads profile {obj.name!r}; the entry point's name must be "
                                "the profile's name")
    return obj


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _refusal(name: str) -> str | None:
    """Why the entry points registering ``name`` are refused outright (not loaded), or None."""
    eps = _entry_points().get(name, ())
    if name in builtin_profiles() and eps:
        return (f"profile {name!r} from {_source(eps[0])} is refused: the name is taken by a "
                "built-in profile (bnspec); rename it")
    if len(eps) > 1:
        return (f"profile {name!r} is registered twice, by {_source(eps[0])} and by "
                f"{_source(eps[1])}: both are refused; uninstall one")
    return None


def get_profile(name: str) -> Profile:
    """The profile called ``name``: built-in, else its entry point, loaded and validated (a broken
    or ambiguous one raises; asked for by name, it is no warning)."""
    builtin = builtin_profiles()
    if name in builtin:
        return builtin[name]
    refusal = _refusal(name)
    if refusal is not None:
        raise ProfileLoadError(refusal)
    eps = _entry_points().get(name)
    if not eps:
        raise UnknownName("profile", name, profile_names())
    return _load(eps[0])


def get_semantics(name: str) -> Semantics:
    return get_profile(name).semantics


def profile_names() -> list[str]:
    """Every registered name, built-ins first, without loading any entry point."""
    return [*builtin_profiles(), *(n for n in _entry_points() if n not in builtin_profiles())]


_ALL: tuple[dict[str, Profile], dict[str, ProfileSource]] | None = None
_BUILDING = False


def _all() -> tuple[dict[str, Profile], dict[str, ProfileSource]]:
    global _ALL, _BUILDING
    if _ALL is not None:
        return _ALL
    with _LOCK:
        if _ALL is not None:
            return _ALL
        profiles = dict(builtin_profiles())
        sources = dict.fromkeys(profiles, _BUILTIN_SOURCE)
        if _BUILDING:  # a third-party module reading PROFILES as it is loaded sees the built-ins
            return profiles, sources
        _BUILDING = True
        try:
            for name, eps in _entry_points().items():
                refusal = _refusal(name)
                if refusal is not None:
                    warnings.warn(refusal, ProfileWarning, stacklevel=4)
                    continue
                try:
                    profiles[name] = _load(eps[0])
                except ProfileLoadError as exc:
                    warnings.warn(f"skipping {exc}", ProfileWarning, stacklevel=4)
                    continue
                sources[name] = _source(eps[0])
        finally:
            _BUILDING = False
        _ALL = profiles, sources
        return _ALL


def all_profiles() -> dict[str, Profile]:
    """Every usable profile by name, built-ins first; a broken or refused third-party profile is
    skipped with a :class:`ProfileWarning` (once: the result is cached)."""
    return dict(_all()[0])


def profile_source(name: str) -> ProfileSource:
    """Where the profile ``name`` was registered (its distribution and version)."""
    builtin = builtin_profiles()
    if name in builtin:
        return _BUILTIN_SOURCE
    get_profile(name)  # raises for an unknown, broken or refused one
    return _source(_entry_points()[name][0])


def resolve(profile: str | Profile) -> Profile:
    """A declared profile, given by name or as the object itself (an adapter may carry its own).

    An object that shares its name with a registered profile must be that profile: reports, stored
    cases and ``bnspec diff`` refer to profiles by name."""
    if isinstance(profile, str):
        return get_profile(profile)
    if not isinstance(profile, Profile):
        raise BnspecError(f"a declared profile is a profile name or a bnspec.Profile, not "
                          f"{type(profile).__name__} {profile!r}")
    try:
        registered = get_profile(profile.name)
    except (UnknownName, ProfileLoadError):
        return profile
    if registered != profile:
        raise BnspecError(f"the declared profile {profile.name!r} differs from the registered profile "
                          f"of that name ({profile_source(profile.name)}); give it a name of its own")
    return profile


class _Profiles(Mapping[str, Profile]):
    """``PROFILES``: every usable profile by name, read (and third-party ones loaded) on first use."""

    def __getitem__(self, name: str) -> Profile:
        builtin = builtin_profiles()
        return builtin[name] if name in builtin else _all()[0][name]

    def __iter__(self) -> Iterator[str]:
        return iter(_all()[0])

    def __len__(self) -> int:
        return len(_all()[0])

    def __contains__(self, name: object) -> bool:
        return name in _all()[0]

    def __repr__(self) -> str:
        return f"PROFILES({', '.join(self)})"


PROFILES: Mapping[str, Profile] = _Profiles()


def _clear_cache() -> None:
    """Forget what was found (tests that install or fake entry points)."""
    global _ALL
    with _LOCK:
        builtin_profiles.cache_clear()
        _entry_points.cache_clear()
        _LOADED.clear()
        _ALL = None

