"""The records bnspec's modules hand each other: what an adapter did with a case, the status of
a judged case, the knob flips that explain a mismatch, and the per-case result record that
``results.jsonl`` streams.

Typed values, never text: the reports and the CLI render them (``bnspec.reports``), nothing
parses a rendered one back. This module sits at the bottom of the layers with the spec and the
case types: it imports nothing else of bnspec.
"""

from __future__ import annotations

import builtins
import enum
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bnspec.case import Result
from bnspec.errors import AdapterFailure, FailureKind

# The shape of summary.json (bnspec/schema/summary.schema.json). 2: an explanation is a list of
# alternatives, each a list of {knob, observed, declared}; 1 had one rendered string per
# alternative (``bnspec report merge`` still reads it).
SCHEMA_VERSION = 2


class Status(enum.StrEnum):
    """The status of one judged case (and of a cell of the matrix: ``KNOWN``). The values are
    the strings ``results.jsonl`` and ``summary.json`` carry."""

    CONFORMS = "pass"  # agrees with the declared profile
    MISMATCH = "fail"  # a result (or an error) the declared profile does not define
    FAILURE = "failure"  # nothing to judge: a crash, timeout, memory blow-up, import error, bad output
    NOT_APPLICABLE = "not_applicable"  # the implementation cannot express the case
    KNOWN = "known"  # a cell whose non-conformances are all registered known divergences

    @property
    def is_nonconformance(self) -> bool:
        """A mismatch or a failure: it fails the run unless a known divergence accounts for it."""
        return self in (Status.MISMATCH, Status.FAILURE)


@dataclass(frozen=True)
class KnobFlip:
    """One knob set away from a profile: the value under which the reference reproduces what was
    observed, and the profile's own (the declared profile's, or the baseline's)."""

    knob: str
    observed: Any
    declared: Any

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "observed": _plain(self.observed), "declared": _plain(self.declared)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KnobFlip:
        return cls(d["knob"], _frozen(d["observed"]), _frozen(d["declared"]))


Alternative = tuple[KnobFlip, ...]  # flips that together explain an observation


@dataclass(frozen=True)
class Explanation:
    """The alternative sets of knob flips that each explain an observation; none: unexplained."""

    alternatives: tuple[Alternative, ...] = ()

    @classmethod
    def of(cls, alternatives: Iterable[dict[str, tuple[Any, Any]] | Iterable[KnobFlip]]) -> Explanation:
        """From ``[{knob: (observed, declared)}, ...]`` or from sequences of flips."""
        alts = []
        for alt in alternatives:
            if isinstance(alt, dict):
                alts.append(tuple(KnobFlip(k, v[0], v[1]) for k, v in alt.items()))
            else:
                alts.append(tuple(alt))
        return cls(tuple(alts))

    @classmethod
    def union(cls, explanations: Iterable[Explanation]) -> Explanation:
        """Every alternative of ``explanations`` once, in a stable order (a cell of many cases)."""
        seen = {alt for e in explanations for alt in e.alternatives}
        return cls(tuple(sorted(seen, key=_alternative_key)))

    def __bool__(self) -> bool:
        return bool(self.alternatives)

    def __iter__(self) -> Iterator[Alternative]:
        return iter(self.alternatives)

    def __len__(self) -> int:
        return len(self.alternatives)

    @property
    def knobs(self) -> tuple[str, ...]:
        """The knobs any alternative flips, sorted."""
        return tuple(sorted({f.knob for alt in self.alternatives for f in alt}))

    def flips(self, knob: str) -> bool:
        """Some alternative sets ``knob`` away from the profile."""
        return any(f.knob == knob for alt in self.alternatives for f in alt)

    def as_dicts(self) -> list[dict[str, tuple[Any, Any]]]:
        """``[{knob: (observed, declared)}, ...]``, one per alternative."""
        return [{f.knob: (f.observed, f.declared) for f in alt} for alt in self.alternatives]

    def first_profile_change(self) -> dict[str, Any]:
        """The first alternative as ``{knob or reading: observed value}``
        (``bnspec.attribution.candidate`` turns it into a case and a profile)."""
        return {f.knob: f.observed for f in self.alternatives[0]} if self.alternatives else {}

    def to_json(self) -> list[list[dict[str, Any]]]:
        return [[f.to_json() for f in alt] for alt in self.alternatives]

    @classmethod
    def from_json(cls, data: Iterable[Iterable[dict[str, Any]]]) -> Explanation:
        return cls(tuple(tuple(KnobFlip.from_json(f) for f in alt) for alt in data))


def _alternative_key(alt: Alternative) -> tuple[tuple[str, str, str], ...]:
    return tuple((f.knob, repr(f.observed), repr(f.declared)) for f in alt)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


def _frozen(v: Any) -> Any:
    """JSON's lists back into the tuples knob values are (``initial_running``)."""
    return tuple(_frozen(x) for x in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class Failure:
    """Why an adapter gave nothing to judge (an :class:`~bnspec.errors.AdapterFailure`, as data)."""

    kind: FailureKind
    message: str

    @classmethod
    def of(cls, exc: AdapterFailure) -> Failure:
        return cls(exc.kind, exc.message)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class Observation:
    """What an adapter did with a case: a Result, or the framework raised; or nothing to judge,
    because the adapter cannot express the case (``unsupported``) or failed (``failure``)."""

    result: Result | None = None
    raised: str | None = None  # "TypeName: message"
    unsupported: str | None = None  # why the implementation cannot express the case
    failure: Failure | None = None
    seconds: float = 0.0  # the adapter call's (a worker's start-up aside)

    @property
    def judgeable(self) -> bool:
        """A result or an error to compare with a profile."""
        return self.result is not None or self.raised is not None


def atomic_write(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a reader never sees half a file). The temporary file's
    name is this writer's own, so that two writers of one path (two runs sharing the result
    cache) never write into each other's; the last rename wins, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def repro_id(case_id: str, adapter: str) -> str:
    """The id `bnspec repro` takes, and the stored case's file name: safe for any adapter name."""
    return f"{case_id}-{re.sub(r'[^A-Za-z0-9_.-]', '_', adapter)}"


@dataclass
class Record:
    """One case through one adapter, judged: a line of ``results.jsonl``."""

    adapter: str
    property: str
    example: int
    case_id: str
    label: str
    status: Status
    detail: str = ""
    explanation: Explanation = field(default_factory=Explanation)  # of a mismatch, against the declared profile
    failure: FailureKind | None = None  # what went wrong, for Status.FAILURE
    err_u: float | None = None
    allowed_u: float | None = None
    unit: str | None = None
    baseline_agrees: bool | None = None
    baseline_knobs: list[str] = field(default_factory=list)  # ["unexplained"] where no flip explains
    seconds: float = 0.0
    known: str | None = None  # the id of the known divergence this non-conformance is
    conversion: dict[str, bool] = field(default_factory=dict)  # a conversion path's own checks
    minimal_case_id: str | None = None  # the shrunk case that still fails the same way
    # of a mismatch no flip explains: the single flip that comes closest, and by how many times
    # its own bound it still misses
    closest: Explanation = field(default_factory=Explanation)
    closest_ratio: float | None = None
    # per alternative of ``explanation`` (the first few): [share of its bound the observation
    # uses, times its bound the nearest placebo misses by]
    margins: list[list[float | None]] = field(default_factory=list)
    cached: bool = False  # read from the result cache (bnspec.cache), not computed by this run

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["explanation"] = self.explanation.to_json()
        d["closest"] = self.closest.to_json()
        for k in ("err_u", "allowed_u", "closest_ratio"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = repr(d[k])
        d["margins"] = [[v if v is None or math.isfinite(v) else repr(v) for v in m] for m in self.margins]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        """Raises ``TypeError``/``ValueError``/``KeyError`` on a line that is not a record."""
        d = json.loads(line)
        if not isinstance(d, dict):
            raise TypeError("not an object")
        for k in ("err_u", "allowed_u", "closest_ratio"):
            if isinstance(d.get(k), str):
                d[k] = float(d[k])
        d["closest"] = Explanation.from_json(d.get("closest", []))
        d["margins"] = [[float(v) if isinstance(v, str) else v for v in m] for m in d.get("margins", [])]
        d["status"] = Status(d["status"])
        d["explanation"] = Explanation.from_json(d.get("explanation", []))
        return cls(**d)

    @builtins.property  # `property` is a field of a record
    def bad(self) -> bool:
        """A non-conformance that no known divergence accounts for."""
        return self.status.is_nonconformance and self.known is None
