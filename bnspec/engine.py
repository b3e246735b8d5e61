"""The run: every property's cases through every adapter's warm worker, judged (:mod:`bnspec.judging`)
and explained (:mod:`bnspec.attribution`), streamed to ``results.jsonl`` as they finish, resumable,
then summarised (:mod:`bnspec.summary`). A case whose outcome the result cache holds
(:mod:`bnspec.cache`) is read from it; an adapter's worker starts only when some case misses.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnspec.accuracy import ACCURACY_CASES, accuracy_error, at_rank
from bnspec.adapter import Adapter, conversion_verdicts
from bnspec.attribution import Judgement, judge_observation
from bnspec.cache import ResultCache
from bnspec.case import Case
from bnspec.errors import BnspecError
from bnspec.known import KnownDivergence, find
from bnspec.observe import observe
from bnspec.profiles import get_semantics
from bnspec.properties import generate
from bnspec.records import Observation, Record, Status, atomic_write, repro_id
from bnspec.shrink import minimal_failing
from bnspec.summary import summarize
from bnspec.worker import Worker

__all__ = ["RUN_FILE", "Record", "ResumeError", "RunOptions", "check_case", "load_records", "run", "stored_run"]


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
    accuracy: bool = True  # the fixed accuracy cases after the properties (bnspec.accuracy)
    cache: bool = True  # read and write the result cache (bnspec.cache); False: compute everything

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it completes."""
        return {"properties": list(self.properties), "examples": self.examples, "seed": self.seed,
                "baseline": self.baseline}


def check_case(adapter: Adapter, case: Case, worker: Worker, opts: RunOptions, prop: str,
               index: int) -> tuple[Record, Observation, Judgement | None]:
    """Run one case through one adapter and judge it: the record, what the adapter did, and the
    judgement where it gave something to judge (the shrinker starts from both)."""
    rec = Record(adapter.name, prop, index, case.case_id(), case.label, Status.CONFORMS)
    obs = observe(worker, case, timeout=opts.timeout)
    rec.seconds = obs.seconds
    if obs.unsupported is not None:
        rec.status, rec.detail = Status.NOT_APPLICABLE, obs.unsupported
        return rec, obs, None
    if obs.failure is not None:
        rec.status, rec.detail, rec.failure = Status.FAILURE, str(obs.failure), obs.failure.kind
        return rec, obs, None
    if obs.result is not None:
        rec.conversion = conversion_verdicts(obs.result)
    judgement = judge_observation(case, adapter.declared_profile().semantics, get_semantics(opts.baseline), obs)
    verdict = judgement.verdict
    if verdict.comparison is not None:
        worst = verdict.comparison.worst()
        if worst is not None:
            rec.err_u, rec.allowed_u, rec.unit = worst.err_u, worst.allowed_u, worst.unit
    if not verdict.ok:
        rec.status, rec.detail, rec.explanation = Status.MISMATCH, verdict.note, judgement.explanation
        rec.closest, rec.closest_ratio = judgement.closest, judgement.closest_ratio
        rec.margins = [list(m) for m in judgement.margins]
    rec.baseline_agrees = judgement.baseline_agrees
    rec.baseline_knobs = list(judgement.baseline_knobs)
    return rec, obs, judgement


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
    if not resume:
        atomic_write(out / RUN_FILE, json.dumps({**opts.identity(), "adapters": {a.name: a.ref for a in adapters}},
                                                indent=2, sort_keys=True))
    records = _kept_records(adapters, opts, load_records(out) if resume else [])
    finished = {(r.adapter, r.property, r.example) for recs in records.values() for r in recs}
    cache = ResultCache() if opts.cache else None
    writer = ResultsWriter(out / "results.jsonl", resume=resume)
    started = time.time()
    workers: dict[str, Worker] = {}
    elapsed: dict[str, float] = {}
    closing: dict[str, float] = {}
    saved: dict[str, float] = {}
    accuracy: dict[str, dict[str, Any]] = {}

    def one_adapter(adapter: Adapter) -> None:
        t_start = time.perf_counter()
        recs = records[adapter.name]
        saved[adapter.name] = 0.0

        def worker() -> Worker:  # made on the first case the cache does not hold
            if adapter.name not in workers:
                workers[adapter.name] = Worker(adapter, memory_limit_mb=opts.memory_limit_mb)
            return workers[adapter.name]

        try:
            for prop in opts.properties:
                for index in range(opts.examples):
                    if (adapter.name, prop, index) in finished:
                        continue
                    rec, seconds = _one_case(adapter, worker, opts, out, prop, index, recs, cache)
                    saved[adapter.name] += seconds
                    recs.append(rec)
                    writer.write(rec)
                    if progress:
                        progress(adapter.name, rec)
            if opts.accuracy:
                accuracy[adapter.name] = _accuracy(adapter, worker, opts, cache)
        finally:
            t_close = time.perf_counter()
            if adapter.name in workers:
                workers[adapter.name].close()
            closing[adapter.name] = time.perf_counter() - t_close
            elapsed[adapter.name] = time.perf_counter() - t_start

    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            list(pool.map(one_adapter, sorted(adapters, key=_slow_first)))
    finally:
        writer.close()
    for recs in records.values():
        recs.sort(key=lambda r: (opts.properties.index(r.property), r.example))
    summary = summarize(adapters, records, workers, properties=opts.properties, seed=opts.seed,
                        examples=opts.examples, baseline=opts.baseline, known=opts.known, started=started,
                        accuracy=accuracy)
    _add_wall_timing(summary, elapsed, closing, saved)
    return summary


def measure_accuracy(adapter: Adapter, worker: Worker, timeout: float) -> dict[str, Any]:
    """Per accuracy case, the worst y error against the declared profile's exact result in u
    (``err_u``; a string where not finite), or why there is none (``note``). A finding, not a
    verdict: recomputed on resume (a few cases), never failing the run."""
    semantics = adapter.declared_profile().semantics
    rows: dict[str, Any] = {}
    rank = 2 if 2 in adapter.capabilities.ranks else min(adapter.capabilities.ranks)
    for name, spec in ACCURACY_CASES.items():
        case = at_rank(spec.build(), rank)  # the fused TF kernels take ranks 4-5 only
        obs = observe(worker, case, timeout=timeout)
        if obs.result is None:
            why = (f"not applicable: {obs.unsupported}" if obs.unsupported is not None else
                   f"failure: {obs.failure}" if obs.failure is not None else f"raised {obs.raised}")
            rows[name] = {"err_u": None, "note": why}
            continue
        err = accuracy_error(case, semantics, obs.result)
        rows[name] = {"err_u": round(err, 3) if math.isfinite(err) else repr(err), "note": ""}
    return rows


def _accuracy(adapter: Adapter, worker: Callable[[], Worker], opts: RunOptions,
              cache: ResultCache | None) -> dict[str, Any]:
    """measure_accuracy, through the cache. A measurement in which the worker failed or
    restarted says something about this machine now, not about the adapter: it is not kept."""
    key = (cache.accuracy_key(adapter, {"timeout": opts.timeout, "memory_limit_mb": opts.memory_limit_mb})
           if cache is not None else None)
    rows = cache.load_accuracy(key) if cache is not None and key is not None else None
    if rows is not None:
        return rows
    w = worker()
    restarts = w.restarts
    rows = measure_accuracy(adapter, w, opts.timeout)
    if (cache is not None and key is not None and w.restarts == restarts
            and not any(r["note"].startswith("failure") for r in rows.values())):
        cache.store_accuracy(key, rows)
    return rows


def _record_options(opts: RunOptions, *, shrinks: bool) -> dict[str, Any]:
    """What besides the case and the adapter can change a record (the cache keys it): not the
    jobs, nor the known divergences (matched again on every record, cached or not)."""
    return {"baseline": opts.baseline, "baseline_semantics": get_semantics(opts.baseline), "shrink": shrinks,
            "timeout": opts.timeout, "memory_limit_mb": opts.memory_limit_mb}


def _kept_records(adapters: list[Adapter], opts: RunOptions, done: list[Record]) -> dict[str, list[Record]]:
    """Per adapter, the records of an earlier run this run keeps, their known divergences
    looked up again in the registry as it is now."""
    records: dict[str, list[Record]] = {a.name: [] for a in adapters}
    for r in done:
        if r.adapter in records and r.property in opts.properties and r.example < opts.examples:
            if r.status.is_nonconformance:
                r.known = _known_id(opts, r)
            records[r.adapter].append(r)
    return records


def _known_id(opts: RunOptions, rec: Record) -> str | None:
    known = find(opts.known, rec.adapter, rec.property, rec.status, rec.detail, rec.explanation)
    return known.id if known else None


def _one_case(adapter: Adapter, worker: Callable[[], Worker], opts: RunOptions, out: Path, prop: str,
              index: int, earlier: list[Record], cache: ResultCache | None) -> tuple[Record, float]:
    """One case judged; a non-conformance matched against the known divergences and its case
    stored for `bnspec repro` (the first mismatch of a property shrunk first), as is a case that
    diverges from the baseline. Read from the cache where it holds the case (then also the
    framework seconds it saved); written to it otherwise, unless the worker failed or restarted
    on it (a crash, timeout or memory blow-up is this machine's, now: the next run tries again)."""
    case = generate(prop, opts.seed, index)
    shrinks = opts.shrink and not any(r.property == prop and r.status.is_nonconformance for r in earlier)
    key = None
    if cache is not None:
        key = cache.case_key(adapter, case, prop, index, _record_options(opts, shrinks=shrinks))
        hit = cache.load_case(key, adapter.name, prop, index, case.case_id())
        if hit is not None:
            if hit.record.status.is_nonconformance:
                hit.record.known = _known_id(opts, hit.record)
            for name, text in hit.files:
                atomic_write(out / "cases" / name, text)
            return hit.record, hit.framework_seconds
    runner = worker()
    calls, restarts = runner.call_seconds, runner.restarts
    rec, _, judgement = check_case(adapter, case, runner, opts, prop, index)
    files = []
    if rec.status.is_nonconformance:
        rec.known = _known_id(opts, rec)
        minimal = case
        if shrinks and rec.status == Status.MISMATCH and judgement is not None:
            minimal = minimal_failing(runner, case, adapter.declared_profile().semantics, judgement.verdict,
                                      judgement.explanation, timeout=opts.timeout)
        rec.minimal_case_id = minimal.case_id()
        files.append(_case_file(adapter, minimal, rec))
    elif rec.baseline_knobs:  # a divergence from the baseline: `bnspec repro` shows it
        files.append(_case_file(adapter, case, rec))
    for name, text in files:
        atomic_write(out / "cases" / name, text)
    if cache is not None and key is not None and rec.status != Status.FAILURE and runner.restarts == restarts:
        cache.store_case(key, rec, files, runner.call_seconds - calls)
    return rec, 0.0


def _add_wall_timing(summary: dict[str, Any], elapsed: dict[str, float], closing: dict[str, float],
                     saved: dict[str, float]) -> None:
    for name, seconds in elapsed.items():
        t = summary["timing"]["adapters"][name]
        # the framework seconds the cases read from the cache took when they were computed
        t["cached_framework_seconds"] = round(saved.get(name, 0.0), 3)
        t["wall_seconds"] = round(seconds, 3)
        t["shutdown_seconds"] = round(closing.get(name, 0.0), 3)  # the framework exiting
        # bnspec's own share: judging, attribution, shrinking, IPC, over what this invocation
        # ran (a resumed run's earlier cases excluded); start-up, shut-down and every framework
        # call aside, the shrinker's included (a conversion path's take seconds each)
        t["bnspec_seconds"] = round(seconds - (t["startup_seconds"] or 0.0) - t["shutdown_seconds"]
                                    - (t["framework_seconds"] or 0.0), 3)


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
        except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            raise ResumeError(f"{path}:{n} is not a bnspec result record of this version "
                              f"({exc.__class__.__name__}); start a new run with another --out") from None
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


def _case_file(adapter: Adapter, case: Case, rec: Record) -> tuple[str, str]:
    """The name and text of the file under ``out/cases/`` that `bnspec repro` replays."""
    data = {"adapter": adapter.name, "adapter_ref": adapter.ref, "profile": adapter.declared_profile().name,
            "property": rec.property, "original_case_id": rec.case_id, "case": case.to_dict()}
    return f"{repro_id(case.case_id(), adapter.name)}.json", json.dumps(data, sort_keys=True)
