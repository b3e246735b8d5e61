"""Worker processes: one per adapter, spawned, kept warm, restarted on crash or timeout.

The parent speaks to ``python -m bnspec.worker`` over its stdin/stdout with length-prefixed
pickles of plain data and NumPy arrays (Case in, Result out). The worker moves the protocol to a
private file descriptor and points fd 1 at stderr, so a framework that prints cannot corrupt it.
A segfault, hang or import error costs the case that was running, never the run.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from bnspec.adapter import Adapter
from bnspec.case import Case, Result
from bnspec.errors import AdapterFailure, FrameworkError, SingleValueError, UnsupportedFeature

_HEADER = struct.Struct("!Q")
DEFAULT_ENV = {
    # Two cores: one framework thread per worker, so --jobs 2 uses both without oversubscribing.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "ORT_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # every token a --flag: XLA's parser silently drops whatever follows a bare one (a bare
    # "intra_op_parallelism_threads=1" here once hid the host device count appended after it)
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONWARNINGS": "ignore",
}


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_POLL = 0.1  # seconds between memory checks while waiting for a worker


def _recv_exact(fd: int, n: int, deadline: float | None, watch: Callable[[], None] | None = None) -> bytes:
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if select.select([fd], [], [], min(left, _POLL) if watch else left)[0]:
                    break
                if watch is not None:
                    watch()
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None, watch: Callable[[], None] | None = None) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(fd, _HEADER.size, deadline, watch))
    return pickle.loads(_recv_exact(fd, size, deadline, watch))


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc; 0 where unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc: each thread's ``children`` list, else a scan
    of every process's parent)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    try:
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                kids.extend(int(k) for k in fh.read().split())
        return kids
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
        pass
    except OSError:
        return kids
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants in MiB: a worker's warm helper
    processes (a converter path's export or conversion in another environment) count as the
    worker's own."""
    total, seen, todo = 0.0, set(), [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss_mb(p)
        todo.extend(_children(p))
    return total


class _OverMemory(Exception):
    pass


class Worker:
    """The parent's handle on one adapter's worker process."""

    def __init__(self, adapter: Adapter, *, start_timeout: float = 300.0, memory_limit_mb: float | None = None) -> None:
        if not adapter.ref:
            raise ValueError(f"adapter {adapter.name!r} has no module:attr reference")
        self.adapter = adapter
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.failed: AdapterFailure | None = None  # set when the framework cannot even start
        self.meta: dict[str, Any] = {}
        self.restarts = 0
        self.startup_seconds = 0.0
        self.call_seconds = 0.0  # every run request's round trip, the shrinker's included
        self.memory_limit_mb = memory_limit_mb  # resident memory past which a case is stopped
        self.peak_rss_mb = 0.0
        self._stderr = tempfile.TemporaryFile()

    # -- lifecycle --
    def start(self) -> None:
        if self.failed is not None:
            raise self.failed
        if self.proc is not None and self.proc.poll() is None:
            return
        if self._stderr.closed:  # closed by close(): a worker may be started again
            self._stderr = tempfile.TemporaryFile()
        # BNSPEC_CALLER_PYTHON: the interpreter running bnspec, for a worker in another environment
        # that runs part of its path in the caller's (torch -> ONNX -> onnx2tf exports with torch)
        env = {**os.environ, **DEFAULT_ENV, "BNSPEC_CALLER_PYTHON": sys.executable, **self.adapter.worker_env}
        python = self.adapter.python or sys.executable
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [python, "-m", "bnspec.worker", self.adapter.ref],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
        )
        try:
            reply = self._request(("setup",), self.start_timeout)
        except AdapterFailure as exc:
            self.failed = AdapterFailure("import", f"worker did not start: {exc}")
            raise self.failed from None
        if reply[0] != "ok":
            self.failed = AdapterFailure("import", reply[1])
            self._kill()
            raise self.failed
        self.meta = reply[1]
        self.startup_seconds += time.monotonic() - t0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                _send(self.proc.stdin.fileno(), ("exit",))  # type: ignore[union-attr]
                self.proc.wait(timeout=5)
            except Exception:
                self._kill()
        self._release()
        self._stderr.close()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        """Forget a finished worker, closing our ends of its pipes (no ResourceWarning)."""
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        self.proc = None

    def stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read().decode(errors="replace").strip()

    def _watch(self) -> None:
        if self.proc is None:
            return
        used = tree_rss_mb(self.proc.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, used)
        if self.memory_limit_mb is not None and used > self.memory_limit_mb:
            raise _OverMemory

    # -- one case --
    def run(self, case: Case, timeout: float = 120.0) -> Result:
        """The adapter's Result, or raises UnsupportedFeature, FrameworkError (the framework
        raised: a behaviour to compare) or AdapterFailure (crash, timeout, import, bad output)."""
        self.start()
        t0 = time.monotonic()
        try:
            reply = self._request(("run", case), timeout)
        finally:
            self.call_seconds += time.monotonic() - t0
        kind = reply[0]
        if kind == "result":
            result = reply[1]
            if not isinstance(result, Result):
                raise AdapterFailure("bad_output", f"adapter returned {type(result).__name__}")
            result.meta.setdefault("seconds", reply[2])
            return result
        if kind == "unsupported":
            raise UnsupportedFeature(reply[1])
        if kind == "single_value":
            raise SingleValueError(reply[1])
        if kind == "raised":
            raise FrameworkError(reply[1], reply[2])
        raise AdapterFailure("bad_output", f"unexpected reply {kind!r}")

    def _request(self, message: tuple[Any, ...], timeout: float) -> Any:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _send(self.proc.stdin.fileno(), message)
            return _recv(self.proc.stdout.fileno(), time.monotonic() + timeout, self._watch)
        except _OverMemory:
            used = self.peak_rss_mb
            self._kill()
            self.restarts += 1
            raise AdapterFailure("memory", f"worker used {used:,.0f} MiB, over the limit of "
                                           f"{self.memory_limit_mb:,.0f} MiB; worker restarted") from None
        except TimeoutError:
            self._kill()
            self.restarts += 1
            raise AdapterFailure("timeout", f"no answer within {timeout:g} s; worker restarted") from None
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self.proc.wait() if self.proc is not None else None
            self._release()
            self.restarts += 1
            tail = self.stderr_tail(400).replace("\n", " | ")
            raise AdapterFailure("crash", f"worker exited with code {code}: {tail}") from None


# -- the worker side --
def _plain(value: Any) -> Any:
    """``value`` with every str subclass made a str: torch.__version__ is a TorchVersion, and
    unpickling one imports torch in the parent (~1 s and a framework in the CLI's process)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value) if type(value) in (list, tuple) else value
    return value


def _serve(ref: str) -> None:
    proto_out = os.dup(1)
    os.dup2(2, 1)  # anything printed by a framework goes to stderr, not into the protocol
    proto_in = sys.stdin.fileno()
    adapter: Adapter | None = None
    while True:
        try:
            message = _recv(proto_in)
        except EOFError:
            return
        op = message[0]
        if op == "exit":
            # The parent holds every result and the adapters keep no state on disk past a call:
            # skip the interpreter's teardown (TensorFlow's atexit and thread shut-down took
            # 1-3 s a worker, 12 % of all adapter time in a default run).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if op == "setup":
            try:
                from bnspec.discovery import load_adapter_ref

                adapter = load_adapter_ref(ref)
                adapter.setup()
                _send(proto_out, ("ok", {"pid": os.getpid(), "python": sys.version.split()[0]}))
            except BaseException as exc:  # noqa: BLE001 - any import error is reported as such
                _send(proto_out, ("error", f"{type(exc).__name__}: {exc}"))
            continue
        if op == "run":
            assert adapter is not None
            t0 = time.perf_counter()
            try:
                result = adapter.run(message[1])
                result.meta = _plain(result.meta)
                _send(proto_out, ("result", result, time.perf_counter() - t0))
            except UnsupportedFeature as exc:
                _send(proto_out, ("unsupported", str(exc)))
            except SingleValueError as exc:
                _send(proto_out, ("single_value", str(exc)))
            except Exception as exc:  # noqa: BLE001 - the framework's own error is data
                raised = FrameworkError.of(exc)
                _send(proto_out, ("raised", raised.type_name, raised.message))
                traceback.print_exc()


if __name__ == "__main__":
    _serve(sys.argv[1])
