"""Named profiles: each framework's BatchNorm as a :class:`Semantics` value, every knob cited.

One module per framework family defines its profiles; :mod:`bnspec.profiles.registry` collects
them, and then the profiles other packages register under the ``bnspec.profiles`` entry-point
group. A citation names the doc page or the framework's file and function that decides the knob;
``confirmed`` says how the value was checked by running the framework (the adapter tests and
``bnspec fingerprint`` re-check it).
"""

from __future__ import annotations

from bnspec.profiles.profile import InvalidProfile, Profile, validate
from bnspec.profiles.registry import (
    GROUP,
    PROFILES,
    ProfileLoadError,
    ProfileSource,
    ProfileWarning,
    all_profiles,
    builtin_profiles,
    get_profile,
    get_semantics,
    profile_names,
    profile_source,
    resolve,
)

__all__ = [
    "GROUP", "PROFILES", "InvalidProfile", "Profile", "ProfileLoadError", "ProfileSource",
    "ProfileWarning", "all_profiles", "builtin_profiles", "get_profile", "get_semantics",
    "profile_names", "profile_source", "resolve", "validate",
]
