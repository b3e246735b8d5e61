"""A :class:`Profile`: one implementation's BatchNorm as a :class:`Semantics` value, every knob
cited. Built-in and third-party profiles are validated by the same code, on construction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bnspec.errors import BnspecError, InvalidSemantics
from bnspec.semantics import ALL_KNOBS, KNOBS, REPLICA_KNOBS, Semantics

# Profile names appear in reports, file names and command lines.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class InvalidProfile(BnspecError, ValueError):
    """A profile's semantics are invalid, or a knob has no citation; the message names the profile
    and what to fix."""


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
        validate(self)


def validate(profile: Profile) -> None:
    """Raise :class:`InvalidProfile` (one line) unless ``profile`` is a valid, fully cited one."""
    name = profile.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidProfile(f"profile name {name!r} is invalid: letters, digits, '_', '.', '-'")
    who = f"profile {name!r}"
    for attr in ("framework", "title", "confirmed"):
        if not isinstance(getattr(profile, attr), str):
            raise InvalidProfile(f"{who}: {attr} must be a str, not {type(getattr(profile, attr)).__name__}")
    if not profile.framework.strip() or not profile.title.strip():
        raise InvalidProfile(f"{who}: framework and title must not be empty")
    sem = profile.semantics
    if not isinstance(sem, Semantics):
        raise InvalidProfile(f"{who}: semantics is a {type(sem).__name__}, not a bnspec.Semantics")
    try:  # a Semantics is validated when built; rebuild it in case it was built around that
        Semantics(**{k: getattr(sem, k) for k in KNOBS})
    except InvalidSemantics as exc:
        raise InvalidProfile(f"{who}: {exc}") from None
    cite = profile.cite
    if not isinstance(cite, dict):
        raise InvalidProfile(f"{who}: cite must be a dict knob -> citation, not {type(cite).__name__}")
    missing = [k for k in KNOBS if not (isinstance(cite.get(k), str) and cite[k].strip())]
    if missing:
        raise InvalidProfile(
            f"{who} cites no source for knob(s) {missing}: every knob needs a citation (the doc "
            "page, or the file and function that decides it)")
    # the replica knobs (REPLICA_KNOBS) are cited where a profile sets one away from its default,
    # a plain layer replicated as it is: what a data-parallel profile decides, it cites
    default = Semantics()
    uncited = [k for k in REPLICA_KNOBS if getattr(sem, k) != getattr(default, k)
               and not (isinstance(cite.get(k), str) and cite[k].strip())]
    if uncited:
        raise InvalidProfile(f"{who} sets replica knob(s) {uncited} without citing a source")
    unknown = sorted(set(cite) - set(ALL_KNOBS))
    if unknown:
        raise InvalidProfile(f"{who} cites unknown knob(s) {unknown}; knobs are: {', '.join(ALL_KNOBS)}")
    if not _str_dict(profile.state_names):
        raise InvalidProfile(f"{who}: state_names must map str to str (running_mean -> its name)")


def _str_dict(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
