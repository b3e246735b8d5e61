"""Shared helpers for the adapter tests: run a real adapter in its worker process and check
its result against the reference under the adapter's declared profile (tolerance model)."""

from __future__ import annotations

import atexit

from bnspec.case import Case, Result
from bnspec.discovery import load_adapter_ref
from bnspec.profiles import get_semantics
from bnspec.tolerance import compare
from bnspec.worker import Worker

_WORKERS: dict[str, Worker] = {}


def run(adapter_ref: str, case: Case, timeout: float = 300.0) -> Result:
    """Run ``case`` through the adapter ``module:attr`` in its (cached, warm) worker process.

    Raises UnsupportedFeature, SingleValueError or AdapterFailure like the engine sees them."""
    worker = _WORKERS.get(adapter_ref)
    if worker is None:
        worker = _WORKERS[adapter_ref] = Worker(load_adapter_ref(adapter_ref))
    return worker.run(case, timeout=timeout)


def assert_conforms(adapter_ref: str, case: Case, profile: str | None = None) -> Result:
    __tracebackhide__ = True
    adapter = load_adapter_ref(adapter_ref)
    observed = run(adapter_ref, case)
    comparison = compare(case, get_semantics(profile or adapter.profile), observed)
    assert comparison.ok, comparison.describe()
    return observed


@atexit.register
def _close() -> None:
    for w in _WORKERS.values():
        w.close()
