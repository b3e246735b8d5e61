"""The engine: every property's cases through every adapter's worker, judged and attributed,
streamed to ``results.jsonl`` as they finish, then summarised.

Two verdicts per adapter and case: *conformance* to the adapter's declared profile, and
*divergence* from a baseline profile (a porting fact), each attributed to knobs.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnspec.adapter import CONVERSION_CHECKS, Adapter, conversion_verdicts
from bnspec.attribution import Observation, explain, format_explanation, judge
from bnspec.case import Case, Result, StepResult
from bnspec.errors import AdapterFailure, BnspecError, FrameworkError, SingleValueError, UnsupportedFeature
from bnspec.known import KnownDivergence, find, vanished
from bnspec.profiles import get_semantics
from bnspec.reference import reference
from bnspec.semantics import KNOBS, Semantics
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
    known: list[KnownDivergence] = field(default_factory=list)
    shrink: bool = True
    memory_limit_mb: int | None = None

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it completes."""
        return {"properties": list(self.properties), "examples": self.examples, "seed": self.seed,
                "baseline": self.baseline}


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
    known: str | None = None  # the id of the known divergence this non-conformance is
    conversion: dict[str, bool] = field(default_factory=dict)  # a conversion path's own checks
    minimal_case_id: str | None = None  # the shrunk case that still fails the same way

    def to_json(self) -> str:
        d = dict(self.__dict__)
        for k in ("err_u", "allowed_u"):
            if isinstance(d[k], float) and (d[k] != d[k] or d[k] in (float("inf"), float("-inf"))):
                d[k] = repr(d[k])
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        d = json.loads(line)
        for k in ("err_u", "allowed_u"):
            if isinstance(d.get(k), str):
                d[k] = float(d[k])
        return cls(**d)

    @property
    def bad(self) -> bool:
        """A non-conformance that no known divergence accounts for."""
        return self.status in ("fail", "failure") and self.known is None


def _case(prop: str, seed: int, index: int) -> Case:
    from bnspec.properties import generate

    return generate(prop, seed, index)


def check_case(
    adapter: Adapter, case: Case, worker: Worker, opts: RunOptions, prop: str, index: int
) -> tuple[Record, Observation | None]:
    """Run one case through one adapter and judge it: the record, and what the adapter returned
    or raised (None where it gave nothing to judge; the shrinker starts from it)."""
    rec = Record(adapter.name, prop, index, case.case_id(), case.label, "pass")
    try:
        adapter.check_supported(case)
    except UnsupportedFeature as exc:
        rec.status, rec.detail = "not_applicable", str(exc)
        return rec, None
    try:
        worker.start()  # start-up is timed apart from the framework's calls
    except AdapterFailure as exc:
        rec.status, rec.detail = "failure", str(exc)
        return rec, None
    t0 = time.perf_counter()
    obs = Observation()
    try:
        obs.result = worker.run(case, timeout=opts.timeout)
        _check_shapes(case, obs.result)
    except UnsupportedFeature as exc:
        rec.status, rec.detail = "not_applicable", str(exc)
        return rec, None
    except (FrameworkError, SingleValueError) as exc:
        obs.raised = str(exc)
    except AdapterFailure as exc:
        rec.status, rec.detail = "failure", str(exc)
        rec.seconds = time.perf_counter() - t0
        return rec, None
    rec.seconds = time.perf_counter() - t0
    if obs.result is not None:
        rec.conversion = conversion_verdicts(obs.result)
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
        knobs = _profile_difference(case, declared, baseline, obs) if verdict.ok else []
        if not knobs:
            flips = explain(case, baseline, obs, pairs=True)
            knobs = sorted({k for f in flips for k in f}) if flips else ["unexplained"]
        rec.baseline_knobs = knobs
    return rec, obs


def _profile_difference(case: Case, declared: Semantics, baseline: Semantics, obs: Observation) -> list[str]:
    """For an implementation that conforms to its declared profile: the knobs where that profile
    differs from the baseline and which matter for this case (setting one back to the baseline's
    value alone makes the declared profile disagree with what was observed)."""
    found = []
    try:
        same_as = reference(case, declared)
    except BnspecError:
        same_as = None
    for name in KNOBS:
        if KNOBS[name].set_by_case or getattr(declared, name) == getattr(baseline, name):
            continue
        try:
            reverted = declared.replace(**{name: getattr(baseline, name)})
            if same_as is not None and not KNOBS[name].numerics and _same(reference(case, reverted), same_as):
                continue  # the knob does not change this case's semantics: it cannot matter
        except BnspecError:
            pass
        if not judge(case, reverted, obs, quick=True).ok:
            found.append(name)
    return found


def _same(a: Result, b: Result) -> bool:
    if len(a.steps) != len(b.steps):
        return False
    for sa, sb in zip(a.steps, b.steps, strict=True):
        for q in (*StepResult.QUANTITIES, "y_dtype", "running_dtype"):
            va, vb = getattr(sa, q), getattr(sb, q)
            if (va is None) != (vb is None):
                return False
            if isinstance(va, str) or va is None:
                if va != vb:
                    return False
            elif not np.array_equal(va, vb, equal_nan=True):
                return False
    return True


def _check_shapes(case: Case, result: Result) -> None:
    """An adapter's output of the wrong shape or kind is a bad output, not a numerical finding."""
    if len(result.steps) != len(case.steps):
        raise AdapterFailure("bad_output", f"{len(result.steps)} step results for {len(case.steps)} steps")
    for i, (step, res) in enumerate(zip(case.steps, result.steps, strict=True)):
        for name in ("y", "dx"):
            got = getattr(res, name)
            if got is None:
                continue
            arr = np.asarray(got)
            if arr.shape != step.x.shape:
                raise AdapterFailure("bad_output", f"step {i}: {name} has shape {arr.shape}, the input {step.x.shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise AdapterFailure("bad_output", f"step {i}: {name} has dtype {arr.dtype}, not a float")
        for name in ("running_mean", "running_var", "dgamma", "dbeta"):
            got = getattr(res, name)
            if got is not None and np.shape(got) != (case.num_features,):
                raise AdapterFailure("bad_output", f"step {i}: {name} has shape {np.shape(got)}, "
                                                   f"expected ({case.num_features},)")


def _minimal(adapter: Adapter, case: Case, worker: Worker, opts: RunOptions, original: Observation) -> Case:
    """Hypothesis's smallest reduction of a case that fails conformance, failing the same way:
    still a mismatch with the declared profile, still explained by the same knob flip (or still
    explained by none). Crashes and timeouts are not shrunk: each try would cost a worker."""
    from bnspec.shrink import shrink

    declared = get_semantics(adapter.profile)
    flips = explain(case, declared, original)
    kind = _failure_kind(judge(case, declared, original))

    def still_fails(candidate: Case) -> bool:
        try:
            adapter.check_supported(candidate)
        except UnsupportedFeature:
            return False
        obs = _observe(worker, candidate, opts)
        if obs is None:
            return False
        verdict = judge(candidate, declared, obs)
        if verdict.ok or _failure_kind(verdict) != kind:
            return False
        if not flips:
            return not explain(candidate, declared, obs, pairs=False)
        return judge(candidate, declared.replace(**{k: v[0] for k, v in flips[0].items()}), obs).ok

    minimal = shrink(case, still_fails)
    if minimal is case:
        return case
    shapes = sorted({s.x.shape for s in minimal.steps})
    return minimal.replace(label=f"{case.label} [shrunk to {len(minimal.steps)} step(s) of shape "
                                 f"{', '.join(map(str, shapes))}]")


def _failure_kind(verdict: Any) -> str:
    """What went wrong, coarsely: the first quantity that mismatched, or that the framework
    raised, or that it returned a result where an error was expected. A shrunk case must keep it."""
    if verdict.comparison is not None and verdict.comparison.mismatches:
        return verdict.comparison.mismatches[0].quantity
    return verdict.note.split(" ")[0]


def _observe(worker: Worker, case: Case, opts: RunOptions) -> Observation | None:
    try:
        result = worker.run(case, timeout=opts.timeout)
        _check_shapes(case, result)
        return Observation(result=result)
    except (FrameworkError, SingleValueError) as exc:
        return Observation(raised=str(exc))
    except (AdapterFailure, UnsupportedFeature):
        return None


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


RUN_FILE = "run.json"


def run(
    adapters: list[Adapter],
    opts: RunOptions,
    out: Path,
    progress: Callable[[str, Record], None] | None = None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Run everything, stream results.jsonl and the minimal cases, return the summary.

    With ``resume``, the records already in ``out/results.jsonl`` are kept and only the cases
    they lack are run (a run killed at any point loses at most the case in flight)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases").mkdir(exist_ok=True)
    done = load_records(out) if resume else []
    if not resume:
        _atomic_write(out / RUN_FILE, json.dumps({**opts.identity(), "adapters": {a.name: a.ref for a in adapters}},
                                                  indent=2, sort_keys=True))
    writer = ResultsWriter(out / "results.jsonl", resume=resume)
    started = time.time()
    workers: dict[str, Worker] = {}
    records: dict[str, list[Record]] = {a.name: [] for a in adapters}
    finished = set()
    for r in done:
        if r.adapter in records and r.property in opts.properties and r.example < opts.examples:
            if r.status in ("fail", "failure"):  # judged again against the registry as it is now
                known = find(opts.known, r.adapter, r.property, r.status, r.detail, r.explained_by)
                r.known = known.id if known else None
            records[r.adapter].append(r)
            finished.add((r.adapter, r.property, r.example))

    elapsed: dict[str, float] = {}
    closing: dict[str, float] = {}

    def one_adapter(adapter: Adapter) -> None:
        t_start = time.perf_counter()
        worker = workers[adapter.name] = Worker(adapter, memory_limit_mb=opts.memory_limit_mb)
        recs = records[adapter.name]
        try:
            for prop in opts.properties:
                for index in range(opts.examples):
                    if (adapter.name, prop, index) in finished:
                        continue
                    case = _case(prop, opts.seed, index)
                    rec, obs = check_case(adapter, case, worker, opts, prop, index)
                    if rec.status in ("fail", "failure"):
                        known = find(opts.known, adapter.name, prop, rec.status, rec.detail, rec.explained_by)
                        rec.known = known.id if known else None
                        first = not any(r.property == prop and r.status in ("fail", "failure") for r in recs)
                        minimal = case
                        if opts.shrink and first and rec.status == "fail" and obs is not None:
                            minimal = _minimal(adapter, case, worker, opts, obs)
                        rec.minimal_case_id = minimal.case_id()
                        _save_case(out, adapter, minimal, rec)
                    elif rec.baseline_knobs:  # a divergence from the baseline: `bnspec repro` shows it
                        _save_case(out, adapter, case, rec)
                    recs.append(rec)
                    writer.write(rec)
                    if progress:
                        progress(adapter.name, rec)
        finally:
            t_close = time.perf_counter()
            worker.close()
            closing[adapter.name] = time.perf_counter() - t_close
            elapsed[adapter.name] = time.perf_counter() - t_start

    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            list(pool.map(one_adapter, sorted(adapters, key=_slow_first)))
    finally:
        writer.close()
    for recs in records.values():
        recs.sort(key=lambda r: (opts.properties.index(r.property), r.example))
    summary = summarize(adapters, records, workers, opts, started)
    for name, seconds in elapsed.items():
        t = summary["timing"]["adapters"][name]
        t["wall_seconds"] = round(seconds, 3)
        t["shutdown_seconds"] = round(closing.get(name, 0.0), 3)  # the framework exiting
        # bnspec's own share: judging, attribution, shrinking, IPC, over what this invocation
        # ran (a resumed run's earlier cases excluded); start-up, shut-down and every framework
        # call aside, the shrinker's included (a conversion path's take seconds each)
        t["bnspec_seconds"] = round(seconds - (t["startup_seconds"] or 0.0) - t["shutdown_seconds"]
                                    - (t["framework_seconds"] or 0.0), 3)
    return summary


def _slow_first(adapter: Adapter) -> int:
    """Schedule the conversion paths (an export, often another environment, per case) first, so
    that --jobs does not end waiting on one long adapter. Results do not depend on the order."""
    return 0 if adapter.ref.startswith("bnspec.adapters.converters") else 1


def load_records(out: Path) -> list[Record]:
    """The records of an earlier run in ``out``. A line cut short by a kill is dropped (and cut
    from the file, so appending goes on from a clean line)."""
    path = out / "results.jsonl"
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        path.write_bytes(keep)
    records = []
    for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
        try:
            records.append(Record.from_json(line))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ResumeError(f"{path}:{n} is not a bnspec result record ({exc.__class__.__name__}); "
                              "start a new run with another --out") from None
    return records


class ResumeError(BnspecError):
    pass


def stored_run(out: Path) -> dict[str, Any]:
    """The options and adapters of the run in ``out``, for ``--resume``."""
    try:
        return json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{out} holds no bnspec run to resume (no {RUN_FILE})") from None
    except json.JSONDecodeError:
        raise ResumeError(f"{out / RUN_FILE} is corrupt; start a new run with another --out") from None


def repro_id(case_id: str, adapter: str) -> str:
    """The id `bnspec repro` takes, and the stored case's file name: safe for any adapter name."""
    return f"{case_id}-{re.sub(r'[^A-Za-z0-9_.-]', '_', adapter)}"


def _save_case(out: Path, adapter: Adapter, case: Case, rec: Record) -> None:
    data = {"adapter": adapter.name, "adapter_ref": adapter.ref, "profile": adapter.profile,
            "property": rec.property, "original_case_id": rec.case_id, "case": case.to_dict()}
    _atomic_write(out / "cases" / f"{repro_id(case.case_id(), adapter.name)}.json", json.dumps(data, sort_keys=True))


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
    ran: dict[str, set[str]] = {}
    seen: set[str] = set()
    timing: dict[str, Any] = {"started": started, "finished": time.time(), "adapters": {}}
    for adapter in sorted(adapters, key=lambda a: a.name):
        recs = records.get(adapter.name, [])
        cells: dict[str, Any] = {}
        divergences: dict[str, Any] = {}
        non_conformances = []
        for prop in opts.properties:
            prs = [r for r in recs if r.property == prop]
            counts = {s: sum(r.status == s and r.known is None for r in prs)
                      for s in ("pass", "fail", "not_applicable", "failure")}
            counts["known"] = sum(r.known is not None for r in prs)
            status = ("failure" if counts["failure"] else "fail" if counts["fail"] else
                      "known" if counts["known"] else "pass" if counts["pass"] else "not_applicable")
            errs = [r.err_u for r in prs if isinstance(r.err_u, float)]
            knobs = sorted({k for r in prs for k in r.baseline_knobs})
            cells[prop] = {
                "status": status, **counts,
                "max_err_u": max(errs) if errs else None,
                "unit": next((r.unit for r in prs if r.unit), None),
                "explained_by": sorted({e for r in prs for e in r.explained_by}),
                "known": sorted({r.known for r in prs if r.known}),
                "baseline_knobs": knobs,
                "detail": next((r.detail for r in prs if r.status in ("fail", "failure")),
                               next((r.detail for r in prs if r.status == "not_applicable"), "")),
            }
            first_bad = next((r for r in prs if r.status in ("fail", "failure")), None)
            if first_bad is not None:
                minimal = first_bad.minimal_case_id or first_bad.case_id
                non_conformances.append({
                    "property": prop, "case_id": first_bad.case_id, "repro_id": repro_id(minimal, adapter.name),
                    "kind": first_bad.status, "label": first_bad.label, "detail": first_bad.detail,
                    "explained_by": first_bad.explained_by, "known": first_bad.known,
                })
            if any(r.status in ("pass", "fail") for r in prs):
                ran.setdefault(adapter.name, set()).add(prop)
            seen.update(r.known for r in prs if r.known)
            for r in prs:
                for k in r.baseline_knobs:
                    d = divergences.setdefault(k, {"properties": [], "example": repro_id(r.case_id, adapter.name)})
                    if prop not in d["properties"]:
                        d["properties"].append(prop)
        conversion: dict[str, Any] = {}
        for check in CONVERSION_CHECKS:
            verdicts = [(r, r.conversion[check]) for r in recs if check in r.conversion]
            if verdicts:
                bad = [r for r, ok in verdicts if not ok]
                conversion[check] = {"ok": not bad, "cases": len(verdicts), "failed": len(bad),
                                     "example": (f"{bad[0].property}[{bad[0].example}]" if bad else None)}
        worker = workers.get(adapter.name)
        entries.append({
            "name": adapter.name,
            "framework": adapter.framework,
            "framework_version": adapter.framework_version(),
            "declared_profile": adapter.profile,
            "description": adapter.description,
            "device": "cpu",
            "conforms": not any(r.bad for r in recs),
            "known_divergences": sorted({r.known for r in recs if r.known}),
            "cells": cells,
            "non_conformances": non_conformances,
            "divergences": divergences,
            "notes": adapter.capabilities.notes,
            **({"conversion": conversion} if conversion else {}),
        })
        timing["adapters"][adapter.name] = {
            "startup_seconds": round(worker.startup_seconds, 3) if worker else None,
            # every adapter call this invocation made: the judged cases' and the shrinker's
            "framework_seconds": round(worker.call_seconds, 3) if worker else None,
            "restarts": worker.restarts if worker else 0,
            "peak_rss_mb": round(worker.peak_rss_mb) if worker else None,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "bnspec_version": __version__,
        "seed": opts.seed,
        "examples": opts.examples,
        "baseline": opts.baseline,
        "properties": list(opts.properties),
        "adapters": entries,
        "known_vanished": vanished(opts.known, ran, seen, opts.examples),
        "timing": timing,
    }
