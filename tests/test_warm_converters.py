"""Warm helpers: a conversion path whose halves live in two environments keeps one warm
interpreter per environment across cases (``adapters/converters/_helper.py``), and a case gives
the same Result in it as in a fresh one.

The first tests drive the helper protocol with a tiny handler module (no framework); the others
run the real paths (their converter environments) in workers and check that the helper is warm,
that it leaks nothing from one case into the next, and that it goes with its worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bnspec.adapters.converters._helper import Helper, HelperDied
from bnspec.case import Case, Result, make_case
from bnspec.discovery import load_adapter_ref
from bnspec.worker import Worker

HANDLER = textwrap.dedent('''
    import os, sys, time

    PREPARED = []

    def prepare(*args):
        PREPARED.append(args)

    def handle(request):
        op = request["op"]
        if op == "echo":
            print("framework chatter on stdout")  # must not reach the replies
            sys.stdout.flush()
            return {"echo": request["value"], "pid": os.getpid(), "prepared": PREPARED}
        if op == "raise":
            raise ValueError("bad value\\nsecond line of the message")
        if op == "die":
            sys.stderr.write("dying now\\n")
            sys.stderr.flush()
            os._exit(3)
        if op == "sleep":
            time.sleep(request["seconds"])
            return {}
''')


@pytest.fixture
def handler_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "bnspec_test_handler.py").write_text(HANDLER)
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie nobody reaped) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.05)
    return False


def test_a_helper_answers_every_request_from_one_warm_interpreter(handler_env) -> None:
    h = Helper(sys.executable, "bnspec_test_handler:handle", ("a", "b"), handler_env)
    try:
        first = h.call({"op": "echo", "value": [1.5, "x"]})
        second = h.call({"op": "echo", "value": 2})
    finally:
        h.close()
    assert first["echo"] == [1.5, "x"] and second["echo"] == 2
    assert first["pid"] == second["pid"] and h.starts == 1
    assert first["prepared"] == [["a", "b"]]  # prepare(*args) ran once, before the first request
    assert _gone(first["pid"])


def test_a_request_that_raises_is_answered_with_its_last_traceback_line(handler_env) -> None:
    h = Helper(sys.executable, "bnspec_test_handler:handle", (), handler_env)
    try:
        answer = h.call({"op": "raise"})
        assert answer == {"error": "second line of the message", "error_type": "ValueError"}
        assert h.call({"op": "echo", "value": 1})["echo"] == 1  # still warm
        assert h.starts == 1
    finally:
        h.close()


def test_a_helper_that_dies_reports_its_stderr_and_is_started_again(handler_env) -> None:
    h = Helper(sys.executable, "bnspec_test_handler:handle", (), handler_env)
    try:
        pid = h.call({"op": "echo", "value": 0})["pid"]
        with pytest.raises(HelperDied) as info:
            h.call({"op": "die"})
        assert info.value.code == 3 and info.value.last_line == "dying now"
        assert h.call({"op": "echo", "value": 1})["pid"] != pid and h.starts == 2
    finally:
        h.close()


def test_a_helper_past_its_timeout_is_stopped_and_started_again(handler_env) -> None:
    h = Helper(sys.executable, "bnspec_test_handler:handle", (), handler_env)
    try:
        pid = h.call({"op": "echo", "value": 0})["pid"]
        with pytest.raises(TimeoutError):
            h.call({"op": "sleep", "seconds": 30}, timeout=0.5)
        assert _gone(pid) and not h.alive
        assert h.call({"op": "echo", "value": 1})["echo"] == 1
    finally:
        h.close()


_PARENT = textwrap.dedent('''
    import os, sys, gc
    from bnspec.adapters.converters._helper import helper
    h = helper(sys.executable, "bnspec_test_handler:handle")
    print(h.call({"op": "echo", "value": 1})["pid"], flush=True)
    if sys.argv[1] == "os_exit":
        os._exit(0)  # how a worker leaves: no atexit, no finalizers
    if sys.argv[1] == "close":
        h.close()
        gc.collect()
    # "atexit": left to the interpreter's exit
''')


@pytest.mark.parametrize("how", ["close", "atexit", "os_exit"])
def test_a_helper_ends_with_its_parent_without_resource_warnings(handler_env, how) -> None:
    proc = subprocess.run([sys.executable, "-W", "default", "-c", _PARENT, how], env=handler_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert _gone(int(proc.stdout.split()[0]))


# -- the real paths ---------------------------------------------------------------------------------
PATHS = {
    "torch_nobuco": "bnspec.adapters.converters.nobuco:TORCH_NOBUCO",
    "torch_onnx_onnx2tf": "bnspec.adapters.converters.onnx2tf:TORCH_ONNX_ONNX2TF",
    "flax_nnx_jax2onnx_onnx2torch": "bnspec.adapters.converters.chains:FLAX_NNX_JAX2ONNX_ONNX2TORCH",
}


def _cases() -> tuple[Case, Case]:
    rng = np.random.default_rng(7)
    a = make_case([rng.normal(1.0, 2.0, (6, 3)) for _ in range(3)], modes=["train", "eval", "train"],
                  gamma=rng.uniform(0.5, 2, 3), beta=rng.normal(size=3), running_mean=rng.normal(size=3),
                  running_var=rng.uniform(0.5, 2, 3), eps=1e-3, momentum=0.1, dtype="float32")
    b = make_case([rng.normal(-1.0, 0.5, (4, 2)) for _ in range(2)], modes=["train", "eval"],
                  eps=1e-5, momentum=0.3, dtype="float32")  # a fresh layer, other shape
    return a, b


def _comparable(result: Result) -> dict:
    d = result.to_dict()
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "seconds"}
    return d


def _helper_pids(worker: Worker) -> set[int]:
    assert worker.proc is not None
    pid = worker.proc.pid
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return children


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PATHS))
def test_a_warm_path_gives_each_case_the_result_of_a_fresh_interpreter(name) -> None:
    adapter = load_adapter_ref(PATHS[name])
    if not adapter.installed():
        pytest.skip(f"{name}: its environments are not created")
    a, b = _cases()
    warm = Worker(adapter)
    try:
        first = [_comparable(warm.run(c, timeout=300)) for c in (a, b, a, b, b)]
        helpers = _helper_pids(warm)
        assert len(helpers) == 1, helpers  # one warm helper, kept across the cases
        assert warm.restarts == 0
    finally:
        if name == "torch_nobuco":
            warm._kill()  # how a worker past its timeout or memory limit goes: its process group
        else:
            warm.close()
    assert all(_gone(p) for p in helpers)  # it went with its worker
    # the same case, again and after another one, in the same warm interpreter
    assert first[0] == first[2] and first[1] == first[3] == first[4]
    # and in a fresh worker (a fresh helper) that has seen nothing before
    fresh = Worker(adapter)
    try:
        assert _comparable(fresh.run(b, timeout=300)) == first[1]
    finally:
        fresh.close()
