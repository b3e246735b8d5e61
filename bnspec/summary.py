"""summary.json from the records of a run: per adapter, one cell per property, its first
non-conformance per property, its divergences from the baseline by knob, a conversion path's
own checks and its timing, and how many of its cases came from the result cache; the known
divergences that did not show.

The shape is versioned (``SCHEMA_VERSION``, ``bnspec/schema/summary.schema.json``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bnspec.adapter import CONVERSION_CHECKS, Adapter
from bnspec.known import KnownDivergence, vanished
from bnspec.records import SCHEMA_VERSION, Explanation, Record, Status, repro_id

if TYPE_CHECKING:
    from bnspec.worker import Worker


def summarize(
    adapters: Iterable[Adapter],
    records: dict[str, list[Record]],
    workers: dict[str, Worker],
    *,
    properties: Sequence[str],
    seed: int,
    examples: int,
    baseline: str,
    known: list[KnownDivergence],
    started: float,
    accuracy: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from bnspec import __version__

    entries = []
    timing: dict[str, Any] = {"started": started, "finished": time.time(), "adapters": {}}
    for adapter in sorted(adapters, key=lambda a: a.name):
        recs = records.get(adapter.name, [])
        entries.append(_entry(adapter, recs, properties))
        if accuracy and adapter.name in accuracy:
            entries[-1]["accuracy"] = accuracy[adapter.name]
        timing["adapters"][adapter.name] = _timing(workers.get(adapter.name))
    return {
        "schema_version": SCHEMA_VERSION,
        "bnspec_version": __version__,
        "seed": seed,
        "examples": examples,
        "baseline": baseline,
        "properties": list(properties),
        "adapters": entries,
        "known_vanished": vanished(known, _ran(records), _seen(records), examples),
        "timing": timing,
    }


def _entry(adapter: Adapter, recs: list[Record], properties: Sequence[str]) -> dict[str, Any]:
    by_property = {prop: [r for r in recs if r.property == prop] for prop in properties}
    non_conformances = [nc for prop, prs in by_property.items() if (nc := _non_conformance(adapter.name, prop, prs))]
    conversion = _conversion(recs)
    return {
        "name": adapter.name,
        "framework": adapter.framework,
        "framework_version": adapter.framework_version(),
        "declared_profile": adapter.declared_profile().name,
        "description": adapter.description,
        "device": "cpu",
        "conforms": not any(r.bad for r in recs),
        "cached": sum(r.cached for r in recs),  # cases read from the result cache (bnspec.cache)
        "known_divergences": sorted({r.known for r in recs if r.known}),
        "cells": {prop: _cell(prs) for prop, prs in by_property.items()},
        "non_conformances": non_conformances,
        "divergences": _divergences(adapter.name, by_property),
        "notes": adapter.capabilities.notes,
        **({"conversion": conversion} if conversion else {}),
    }


_COUNTED = (Status.CONFORMS, Status.MISMATCH, Status.NOT_APPLICABLE, Status.FAILURE)


def _cell_status(counts: dict[str, int]) -> Status:
    """The worst that happened in a property: a new failure, a new mismatch, a known divergence,
    a pass; not applicable only where nothing ran."""
    for status in (Status.FAILURE, Status.MISMATCH, Status.KNOWN, Status.CONFORMS):
        if counts[status]:
            return status
    return Status.NOT_APPLICABLE


def _cell(prs: list[Record]) -> dict[str, Any]:
    counts = {s.value: sum(r.status == s and r.known is None for r in prs) for s in _COUNTED}
    counts[Status.KNOWN.value] = sum(r.known is not None for r in prs)
    errs = [r.err_u for r in prs if isinstance(r.err_u, float)]
    return {
        "status": _cell_status(counts).value, **counts,
        "max_err_u": max(errs) if errs else None,
        "unit": next((r.unit for r in prs if r.unit), None),
        "explained_by": Explanation.union(r.explanation for r in prs).to_json(),
        "known": sorted({r.known for r in prs if r.known}),
        "baseline_knobs": sorted({k for r in prs for k in r.baseline_knobs}),
        "detail": _detail(prs),
        "cached": sum(r.cached for r in prs),
    }


def _detail(prs: list[Record]) -> str:
    """The first non-conformance's detail, else the first reason a case was not applicable."""
    bad = next((r.detail for r in prs if r.status.is_nonconformance), None)
    if bad is not None:
        return bad
    return next((r.detail for r in prs if r.status == Status.NOT_APPLICABLE), "")


def _non_conformance(adapter: str, prop: str, prs: list[Record]) -> dict[str, Any] | None:
    first_bad = next((r for r in prs if r.status.is_nonconformance), None)
    if first_bad is None:
        return None
    minimal = first_bad.minimal_case_id or first_bad.case_id
    return {
        "property": prop, "case_id": first_bad.case_id, "repro_id": repro_id(minimal, adapter),
        "kind": first_bad.status.value, "label": first_bad.label, "detail": first_bad.detail,
        "explained_by": first_bad.explanation.to_json(), "known": first_bad.known,
        **({"closest": first_bad.closest.to_json(), "closest_ratio": _finite_or_repr(first_bad.closest_ratio)}
           if first_bad.closest.knobs else {}),
        **({"margins": [[_finite_or_repr(v) for v in m] for m in first_bad.margins]} if first_bad.margins else {}),
    }


def _finite_or_repr(v: float | None) -> float | str | None:
    return v if v is None or math.isfinite(v) else repr(v)


def _divergences(adapter: str, by_property: dict[str, list[Record]]) -> dict[str, Any]:
    """Per baseline knob: the properties it shows in, and the first case that shows it."""
    divergences: dict[str, Any] = {}
    for prop, prs in by_property.items():
        for r in prs:
            for k in r.baseline_knobs:
                d = divergences.setdefault(k, {"properties": [], "example": repro_id(r.case_id, adapter)})
                if prop not in d["properties"]:
                    d["properties"].append(prop)
    return divergences


def _conversion(recs: list[Record]) -> dict[str, Any]:
    """A conversion path's own checks over its cases: ok, how many cases, the first that failed."""
    conversion: dict[str, Any] = {}
    for check in CONVERSION_CHECKS:
        verdicts = [(r, r.conversion[check]) for r in recs if check in r.conversion]
        if verdicts:
            bad = [r for r, ok in verdicts if not ok]
            conversion[check] = {"ok": not bad, "cases": len(verdicts), "failed": len(bad),
                                 "example": (f"{bad[0].property}[{bad[0].example}]" if bad else None)}
    return conversion


def _timing(worker: Worker | None) -> dict[str, Any]:
    """What the adapter's worker did in this invocation (None: it never started, every case
    came from the result cache or an earlier run's records)."""
    return {
        "startup_seconds": round(worker.startup_seconds, 3) if worker else None,
        # every adapter call this invocation made: the judged cases' and the shrinker's
        "framework_seconds": round(worker.call_seconds, 3) if worker else None,
        "restarts": worker.restarts if worker else 0,
        "peak_rss_mb": round(worker.peak_rss_mb) if worker else None,
    }


def _ran(records: dict[str, list[Record]]) -> dict[str, set[str]]:
    """Per adapter, the properties where some case was judged (a vanished known divergence
    needs its properties to have run)."""
    ran: dict[str, set[str]] = {}
    for name, recs in records.items():
        for r in recs:
            if r.status in (Status.CONFORMS, Status.MISMATCH):
                ran.setdefault(name, set()).add(r.property)
    return ran


def _seen(records: dict[str, list[Record]]) -> set[str]:
    return {r.known for recs in records.values() for r in recs if r.known}
