"""Known divergences as data: declared, cited ways a framework departs from its own profile.

Like array-api-compat's xfail files, but structured: each entry names the adapter, the
properties, the knob (or the message) that identifies the divergence, why, and a link. A run
marks a non-conformance that an entry matches as *known*; it fails on one no entry matches, and
reports an entry that matched nothing although its adapter and properties ran (it vanished:
the framework changed, or the entry was wrong).

The built-in registry is ``bnspec/known_divergences.toml``; ``bnspec run --known FILE`` reads a
port project's own instead.
"""

from __future__ import annotations

import fnmatch
import re
import struct
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bnspec.errors import BnspecError
from bnspec.records import Explanation, Status
from bnspec.semantics import ALL_KNOBS, READINGS

_KINDS = tuple(s.value for s in Status if s.is_nonconformance)
_KEYS = {"id", "adapter", "properties", "knob", "explanation", "match", "kind", "reason", "link", "examples"}
# The details of a mismatch that is a departure rather than a wrong value: the framework raised
# where the profile defines a result, or returned one where it raises. Only these may be
# identified by a message alone; a wrong value is identified by its whole explanation.
_DEPARTURE = re.compile(r"^(raised |expected an error)")


class InvalidRegistry(BnspecError):
    pass


@dataclass(frozen=True)
class KnownDivergence:
    id: str
    adapter: tuple[str, ...]  # fnmatch patterns over adapter names
    properties: tuple[str, ...]  # the properties it shows in; empty: any
    reason: str
    link: str
    # The explanations that identify it, each a set of "knob" or "knob=value" terms (a reading
    # such as "eps" too): a mismatch is this divergence only when one alternative of its
    # explanation flips exactly those knobs -- the whole observation, nothing left over.
    explanations: tuple[frozenset[str], ...] = ()
    match: str | None = None  # a regular expression searched in the detail (alone: a departure)
    kind: Status = Status.MISMATCH  # "fail" (a wrong result) | "failure" (a crash, timeout, bad output)
    examples: int = 1  # examples per property a run needs before its absence means it vanished

    def matches(self, adapter: str, prop: str, status: Status, detail: str, explanation: Explanation) -> bool:
        if status != self.kind or not self.covers(adapter):
            return False
        if self.properties and prop not in self.properties:
            return False
        if self.explanations:
            if not any(_accounts(terms, alt) for alt in explanation.alternatives for terms in self.explanations):
                return False
        elif status == Status.MISMATCH and not _DEPARTURE.search(detail):
            return False  # a wrong value no explanation names is never known by its message
        return self.match is None or re.search(self.match, detail) is not None

    @property
    def knob(self) -> str | None:
        """The knob of a one-knob entry (None otherwise)."""
        if len(self.explanations) == 1 and len(self.explanations[0]) == 1:
            return next(iter(self.explanations[0])).split("=")[0]
        return None

    def covers(self, adapter: str) -> bool:
        return any(fnmatch.fnmatchcase(adapter, pattern) for pattern in self.adapter)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "adapter": list(self.adapter), "properties": list(self.properties),
                "explanation": [sorted(t) for t in self.explanations], "match": self.match,
                "kind": self.kind.value, "reason": self.reason,
                "link": self.link, "examples": self.examples}


def builtin_path() -> Path:
    return Path(str(resources.files("bnspec") / "known_divergences.toml"))


def load(path: Path | None = None) -> list[KnownDivergence]:
    """Read and validate a registry; any problem is one line naming the entry and what to fix."""
    path = path or builtin_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRegistry(f"known-divergence registry {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRegistry(f"known-divergence registry {path} is not valid TOML: {exc}") from None
    entries = data.get("divergence", [])
    if not isinstance(entries, list):
        raise InvalidRegistry(f"{path}: write each entry as a [[divergence]] table")
    from bnspec.properties import PROPERTIES

    out: list[KnownDivergence] = []
    for i, e in enumerate(entries):
        where = f"{path}: divergence {e.get('id', i)!r}"
        unknown = set(e) - _KEYS
        if unknown:
            raise InvalidRegistry(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        for key in ("id", "reason", "link"):
            if not isinstance(e.get(key), str) or not e[key]:
                raise InvalidRegistry(f"{where} needs a non-empty string {key!r}")
        patterns = [e["adapter"]] if isinstance(e.get("adapter"), str) else e.get("adapter")
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise InvalidRegistry(f"{where} needs 'adapter': a name or pattern, or a list of them")
        props = tuple(e.get("properties", ()))
        bad = [p for p in props if p not in PROPERTIES]
        if bad:
            raise InvalidRegistry(f"{where} names unknown propert(y/ies) {bad}")
        explanations = _explanations(e, where)
        if not explanations and e.get("match") is None:
            raise InvalidRegistry(f"{where} needs an 'explanation' (or 'knob') or a 'match' that identifies it")
        if e.get("kind", Status.MISMATCH.value) not in _KINDS:
            raise InvalidRegistry(f"{where}: kind must be 'fail' or 'failure'")
        try:
            re.compile(e.get("match") or "")
        except re.error as exc:
            raise InvalidRegistry(f"{where}: match is not a regular expression ({exc})") from None
        examples = e.get("examples", 1)
        if not isinstance(examples, int) or examples < 1:
            raise InvalidRegistry(f"{where}: examples must be a positive integer")
        out.append(KnownDivergence(id=e["id"], adapter=tuple(patterns), properties=props, reason=e["reason"],
                                   link=e["link"], explanations=explanations, match=e.get("match"),
                                   kind=Status(e.get("kind", Status.MISMATCH.value)),
                                   examples=examples))
    ids = [k.id for k in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidRegistry(f"{path}: duplicate id(s) {dupes}")
    return out


def _explanations(e: dict[str, Any], where: str) -> tuple[frozenset[str], ...]:
    """An entry's ``explanation`` (a list of terms, or a list of such lists) and ``knob`` (one
    knob: the explanation of that knob alone), validated."""
    raw = e.get("explanation")
    groups: list[list[Any]] = []
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise InvalidRegistry(f"{where}: explanation must be a list of 'knob' or 'knob=value' terms, "
                                  "or of such lists")
        groups = [raw] if all(isinstance(t, str) for t in raw) else raw
    if e.get("knob") is not None:
        groups.append([e["knob"]])
    out = []
    for group in groups:
        if not isinstance(group, list) or not group or not all(isinstance(t, str) and t for t in group):
            raise InvalidRegistry(f"{where}: each explanation is a non-empty list of 'knob' or 'knob=value' strings")
        for term in group:
            name = term.split("=", 1)[0]
            if name not in ALL_KNOBS and name not in READINGS:
                raise InvalidRegistry(f"{where} names unknown knob {name!r}")
        out.append(frozenset(group))
    return tuple(out)


def _accounts(terms: frozenset[str], alternative: tuple[Any, ...]) -> bool:
    """Does this alternative flip exactly the knobs ``terms`` name (with the values they give)?"""
    if {t.split("=", 1)[0] for t in terms} != {f.knob for f in alternative}:
        return False
    flips = {f.knob: f for f in alternative}
    return all("=" not in t or _value_matches(flips[t.split("=", 1)[0]], t.split("=", 1)[1]) for t in terms)


def _value_matches(flip: Any, text: str) -> bool:
    """``knob=value``; for the readings eps and momentum, ``=float32`` is the case's own value
    rounded to float32 (momentum in either convention), whatever that value is."""
    if text == "float32" and flip.knob in ("eps", "momentum"):
        d = flip.declared
        if not isinstance(d, float):
            return False
        rounded = {_f32(d), 1.0 - _f32(1.0 - d)} - {d}
        return flip.observed in rounded
    v = flip.observed
    return (str(v).lower() if isinstance(v, bool) else str(v)) == text


def _f32(v: float) -> float:
    return float(struct.unpack("f", struct.pack("f", v))[0])


def find(registry: list[KnownDivergence], adapter: str, prop: str, status: Status, detail: str,
         explanation: Explanation) -> KnownDivergence | None:
    return next((k for k in registry if k.matches(adapter, prop, status, detail, explanation)), None)


def vanished(registry: list[KnownDivergence], ran: dict[str, set[str]], seen: set[str],
             examples: int = 1) -> list[dict[str, Any]]:
    """Entries whose adapter ran every property they name (with a case it could express) and
    that matched nothing: the divergence is gone, or the entry no longer describes it. An entry
    naming no property vanishes only from a run of every property."""
    from bnspec.properties import PROPERTIES as every_property

    out = []
    for k in registry:
        if k.id in seen or examples < k.examples:
            continue
        adapters = [a for a in ran if k.covers(a)]
        needed = set(k.properties) or set(every_property)
        if adapters and all(needed <= ran[a] for a in adapters):
            out.append({**k.to_dict(), "adapters": sorted(adapters)})
    return out
