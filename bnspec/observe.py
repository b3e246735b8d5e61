"""One way to run an adapter on a case and observe it: in this process, or through its warm
worker process (:class:`bnspec.worker.Worker`). The engine, ``bnspec repro``, the pytest plugin,
the fingerprint and the benchmarks all go through :func:`observe`.
"""

from __future__ import annotations

import time

import numpy as np

from bnspec.adapter import Adapter
from bnspec.case import Case, Result
from bnspec.errors import AdapterFailure, FrameworkError, SingleValueError, UnsupportedFeature
from bnspec.records import Failure, Observation
from bnspec.worker import Worker

_SET_UP = "_bnspec_setup_done"  # an adapter run in process is set up once


def observe(runner: Adapter | Worker, case: Case, *, timeout: float = 120.0) -> Observation:
    """What ``runner`` does with ``case``: its Result (of the right shapes), or what the
    framework raised, or why there is nothing to judge (``unsupported``: the adapter cannot
    express the case; ``failure``: a crash, timeout, memory blow-up, import error or malformed
    output). Never raises for anything the adapter does.

    An :class:`Adapter` runs in this process (set up on first use; ``timeout`` does not apply);
    a :class:`Worker` runs it in its process, started first (start-up is not timed)."""
    adapter = runner.adapter if isinstance(runner, Worker) else runner
    try:
        adapter.check_supported(case)
    except UnsupportedFeature as exc:
        return Observation(unsupported=str(exc))
    try:
        _start(runner)
    except AdapterFailure as exc:
        return Observation(failure=Failure.of(exc))
    t0 = time.perf_counter()
    try:
        result = runner.run(case, timeout=timeout) if isinstance(runner, Worker) else _in_process(runner, case)
        check_shapes(case, result)
    except UnsupportedFeature as exc:
        return Observation(unsupported=str(exc), seconds=time.perf_counter() - t0)
    except (FrameworkError, SingleValueError) as exc:
        return Observation(raised=str(exc), seconds=time.perf_counter() - t0)
    except AdapterFailure as exc:
        return Observation(failure=Failure.of(exc), seconds=time.perf_counter() - t0)
    return Observation(result=result, seconds=time.perf_counter() - t0)


def _start(runner: Adapter | Worker) -> None:
    if isinstance(runner, Worker):
        runner.start()
        return
    if getattr(runner, _SET_UP, False):
        return
    try:
        runner.setup()
    except Exception as exc:  # noqa: BLE001 - a framework that cannot import is a failure kind
        raised = FrameworkError.of(exc)
        raise AdapterFailure("import", f"{raised.type_name}: {raised.message}") from exc
    setattr(runner, _SET_UP, True)


def _in_process(adapter: Adapter, case: Case) -> Result:
    """The adapter's Result, its framework's error as a FrameworkError (as the worker reports it)."""
    try:
        with np.errstate(all="ignore"):  # NaN from a negative variance is an observation
            result = adapter.run(case)
    except (UnsupportedFeature, SingleValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - the framework's own error is data
        raise FrameworkError.of(exc) from exc
    if not isinstance(result, Result):
        raise AdapterFailure("bad_output", f"adapter returned {type(result).__name__}")
    return result


def check_shapes(case: Case, result: Result) -> None:
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
