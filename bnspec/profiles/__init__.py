"""Named profiles: each framework's BatchNorm as a :class:`Semantics` value, every knob cited.

One module per framework family defines
its profiles; this module only collects them. A citation names the doc page or the framework's
file and function that decides the knob; ``confirmed`` says how the value was checked by
running the framework (the adapter tests and ``bnspec fingerprint`` re-check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bnspec.errors import UnknownName
from bnspec.semantics import KNOBS, Semantics


@dataclass(frozen=True)
class Profile:
    name: str
    framework: str
    title: str
    semantics: Semantics
    cite: dict[str, str] = field(default_factory=dict)  # knob -> where it is decided
    confirmed: str = ""  # how the values were confirmed by running the framework
    state_names: dict[str, str] = field(default_factory=dict)  # running_mean/var, gamma, beta

    def __post_init__(self) -> None:
        missing = [k for k in KNOBS if k not in self.cite]
        if missing:
            raise ValueError(f"profile {self.name!r} cites no source for knob(s) {missing}")


def _collect() -> dict[str, Profile]:
    from bnspec.profiles import equinox, flax, haiku, keras, onnx, paper, tensorflow, torch

    found: dict[str, Profile] = {}
    for module in (torch, keras, tensorflow, flax, haiku, equinox, onnx, paper):
        for profile in module.PROFILES:
            if profile.name in found:
                raise ValueError(f"profile {profile.name!r} is defined twice")
            found[profile.name] = profile
    return found


PROFILES: dict[str, Profile] = _collect()


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownName("profile", name, list(PROFILES)) from None


def get_semantics(name: str) -> Semantics:
    return get_profile(name).semantics


__all__ = ["PROFILES", "Profile", "get_profile", "get_semantics"]
