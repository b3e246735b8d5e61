"""The engine: every property's cases through every adapter's worker, judged and attributed,
streamed to ``results.jsonl`` as they finish, then summarised.

Two verdicts per adapter and case: *conformance* to the adapter's declared profile, and
*divergence* from a baseline profile (a porting fact), each attributed to knobs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnspec.adapter import Adapter
from bnspec.attribution import Observation, explain, format_explanation, judge
from bnspec.case import Case
from bnspec.errors import AdapterFailure, FrameworkError, SingleValueError, UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.worker import Worker

SCHEMA_VERSION = 1


@dataclass
class RunOptions:
    properties: list[str]
    examples: int = 3
    seed: int = 0
    baseline: str = "pytorch"
    jobs: int = 1
    timeout: float = 120.0


@dataclass
class Record:
    adapter: str
    property: str
    example: int
    case_id: str
    label: str
    status: str  # pass | fail | not_applicable | failure
    detail: str = ""
    explained_by: list[str] = field(default_factory=list)
    err_u: float | None = None
    allowed_u: float | None = None
    unit: str | None = None
    baseline_agrees: bool | None = None
    baseline_knobs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        d = dict(self.__dict__)
        for k in ("err_u", "allowed_u"):
            if isinstance(d[k], float) and (d[k] != d[k] or d[k] in (float("inf"), float("-inf"))):
                d[k] = repr(d[k])
        return json.dumps(d, sort_keys=True)


def _case(prop: str, seed: int, index: int) -> Case:
    from bnspec.conformance.cases import generate

    return generate(prop, seed, index)


def check_case(adapter: Adapter, case: Case, worker: Worker, opts: RunOptions, prop: str, index: int) -> Record:
    """Run one case through one adapter and judge it."""
    rec = Record(adapter.name, prop, index, case.case_id(), case.label, "pass")
    try:
        adapter.check_supported(case)
    except UnsupportedFeature as exc:
        rec.status, rec.detail = "not_applicable", str(exc)
        return rec
    t0 = time.perf_counter()
    obs = Observation()
    try:
        obs.result = worker.run(case, timeout=opts.timeout)
    except UnsupportedFeature as exc:
        rec.status, rec.detail = "not_applicable", str(exc)
        return rec
    except (FrameworkError, SingleValueError) as exc:
        obs.raised = str(exc)
    except AdapterFailure as exc:
        rec.status, rec.detail = "failure", str(exc)
        rec.seconds = time.perf_counter() - t0
        return rec
    rec.seconds = time.perf_counter() - t0
    declared = get_semantics(adapter.profile)
    verdict = judge(case, declared, obs)
    if verdict.comparison is not None:
        worst = verdict.comparison.worst()
        if worst is not None:
            rec.err_u, rec.allowed_u, rec.unit = worst.err_u, worst.allowed_u, worst.unit
    if not verdict.ok:
        rec.status, rec.detail = "fail", verdict.note
        rec.explained_by = [format_explanation([f]) for f in explain(case, declared, obs)]
    baseline = get_semantics(opts.baseline)
    base_verdict = judge(case, baseline, obs)
    rec.baseline_agrees = base_verdict.ok
    if not base_verdict.ok:
        flips = explain(case, baseline, obs, pairs=True)
        rec.baseline_knobs = sorted({k for f in flips for k in f}) if flips else ["unexplained"]
    return rec


class ResultsWriter:
    """Appends records to results.jsonl, flushed and fsynced per line: a killed run loses nothing
    that finished."""

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a" if resume else "w", encoding="utf-8")

    def write(self, rec: Record) -> None:
        with self._lock:
            self._fh.write(rec.to_json() + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def run(
    adapters: list[Adapter],
    opts: RunOptions,
    out: Path,
    progress: Callable[[str, Record], None] | None = None,
) -> dict[str, Any]:
    """Run everything, stream results.jsonl and the minimal cases, return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases").mkdir(exist_ok=True)
    writer = ResultsWriter(out / "results.jsonl")
    started = time.time()
    workers: dict[str, Worker] = {}
    records: dict[str, list[Record]] = {}

    def one_adapter(adapter: Adapter) -> None:
        worker = workers[adapter.name] = Worker(adapter)
        recs = records[adapter.name] = []
        try:
            for prop in opts.properties:
                for index in range(opts.examples):
                    case = _case(prop, opts.seed, index)
                    rec = check_case(adapter, case, worker, opts, prop, index)
                    if rec.status in ("fail", "failure"):
                        _save_case(out, adapter, case, rec)
                    recs.append(rec)
                    writer.write(rec)
                    if progress:
                        progress(adapter.name, rec)
        finally:
            worker.close()

    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            list(pool.map(one_adapter, adapters))
    finally:
        writer.close()
    return summarize(adapters, records, workers, opts, started)


def _save_case(out: Path, adapter: Adapter, case: Case, rec: Record) -> None:
    data = {"adapter": adapter.name, "adapter_ref": adapter.ref, "profile": adapter.profile,
            "property": rec.property, "case": case.to_dict()}
    _atomic_write(out / "cases" / f"{rec.case_id}-{adapter.name}.json", json.dumps(data, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def summarize(
    adapters: Iterable[Adapter],
    records: dict[str, list[Record]],
    workers: dict[str, Worker],
    opts: RunOptions,
    started: float,
) -> dict[str, Any]:
    from bnspec import __version__

    entries = []
    timing: dict[str, Any] = {"started": started, "finished": time.time(), "adapters": {}}
    for adapter in sorted(adapters, key=lambda a: a.name):
        recs = records.get(adapter.name, [])
        cells: dict[str, Any] = {}
        divergences: dict[str, Any] = {}
        non_conformances = []
        for prop in opts.properties:
            prs = [r for r in recs if r.property == prop]
            counts = {s: sum(r.status == s for r in prs) for s in ("pass", "fail", "not_applicable", "failure")}
            status = ("failure" if counts["failure"] else "fail" if counts["fail"] else
                      "pass" if counts["pass"] else "not_applicable")
            errs = [r.err_u for r in prs if isinstance(r.err_u, float)]
            knobs = sorted({k for r in prs for k in r.baseline_knobs})
            cells[prop] = {
                "status": status, **counts,
                "max_err_u": max(errs) if errs else None,
                "unit": next((r.unit for r in prs if r.unit), None),
                "explained_by": sorted({e for r in prs for e in r.explained_by}),
                "baseline_knobs": knobs,
                "detail": next((r.detail for r in prs if r.status in ("fail", "failure")),
                               next((r.detail for r in prs if r.status == "not_applicable"), "")),
            }
            first_bad = next((r for r in prs if r.status in ("fail", "failure")), None)
            if first_bad is not None:
                non_conformances.append({
                    "property": prop, "case_id": first_bad.case_id, "repro_id": f"{first_bad.case_id}-{adapter.name}",
                    "kind": first_bad.status, "label": first_bad.label, "detail": first_bad.detail,
                    "explained_by": first_bad.explained_by,
                })
            for r in prs:
                for k in r.baseline_knobs:
                    d = divergences.setdefault(k, {"properties": [], "example": f"{r.case_id}-{adapter.name}"})
                    if prop not in d["properties"]:
                        d["properties"].append(prop)
        worker = workers.get(adapter.name)
        entries.append({
            "name": adapter.name,
            "framework": adapter.framework,
            "framework_version": adapter.framework_version(),
            "declared_profile": adapter.profile,
            "description": adapter.description,
            "device": "cpu",
            "conforms": not any(r.status in ("fail", "failure") for r in recs),
            "cells": cells,
            "non_conformances": non_conformances,
            "divergences": divergences,
            "notes": adapter.capabilities.notes,
        })
        timing["adapters"][adapter.name] = {
            "startup_seconds": round(worker.startup_seconds, 3) if worker else None,
            "framework_seconds": round(sum(r.seconds for r in recs), 3),
            "restarts": worker.restarts if worker else 0,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "bnspec_version": __version__,
        "seed": opts.seed,
        "examples": opts.examples,
        "baseline": opts.baseline,
        "properties": list(opts.properties),
        "adapters": entries,
        "timing": timing,
    }
