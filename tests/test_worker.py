"""Fault isolation: a crash, a hang or an import error costs the case that was running only."""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import make_case
from bnspec.discovery import load_adapter_ref
from bnspec.errors import AdapterFailure
from bnspec.worker import Worker

FIX = "tests.fixtures.bad_adapters"


def _case(n: int):
    return make_case(np.arange(n * 2, dtype=float).reshape(n, 2), modes="train")


def test_a_segfault_costs_that_case_and_the_worker_restarts_for_the_next():
    w = Worker(load_adapter_ref(f"{FIX}:SEGFAULT"))
    try:
        assert w.run(_case(2)).steps[0].y.shape == (2, 2)
        with pytest.raises(AdapterFailure) as info:
            w.run(make_case(np.ones((3, 2, 2, 2))))  # the fixture crashes on rank 4-5 input
        assert info.value.kind == "crash"
        assert w.run(_case(2)).steps[0].y.shape == (2, 2)
        assert w.restarts == 1
    finally:
        w.close()


def test_a_hang_past_the_timeout_is_killed_and_reported_as_a_timeout():
    w = Worker(load_adapter_ref(f"{FIX}:HANG"))
    try:
        with pytest.raises(AdapterFailure) as info:
            w.run(_case(2), timeout=2)
        assert info.value.kind == "timeout"
    finally:
        w.close()


def test_an_import_error_marks_the_adapter_failed_without_retrying():
    w = Worker(load_adapter_ref(f"{FIX}:IMPORT_ERROR"))
    with pytest.raises(AdapterFailure) as info:
        w.run(_case(2))
    assert info.value.kind == "import" and "imaginary_framework" in str(info.value)
    with pytest.raises(AdapterFailure):
        w.run(_case(2))


def test_a_framework_printing_on_stdout_does_not_corrupt_the_protocol():
    w = Worker(load_adapter_ref(f"{FIX}:PRINTS"))
    try:
        assert w.run(_case(2)).steps[0].y.shape == (2, 2)
    finally:
        w.close()


def test_result_meta_reaches_the_parent_as_plain_strings():
    # torch.__version__ is a TorchVersion (a str subclass): unpickled in the parent, it imported
    # torch there (~1 s, and a framework in the CLI's process)
    from bnspec.worker import _plain

    class Version(str):
        pass

    meta = _plain({"torch": Version("2.13.0"), "nested": {"v": [Version("1"), (Version("2"),)]}, "n": 3})
    assert type(meta["torch"]) is str and type(meta["nested"]["v"][0]) is str
    assert type(meta["nested"]["v"][1][0]) is str and meta["n"] == 3
