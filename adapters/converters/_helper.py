"""Warm helper processes: the half of a conversion path that runs in another environment than the
path's worker (export in one, run in another) runs in one long-lived interpreter per environment,
kept across cases like the worker itself.

The worker starts a helper lazily (or from ``setup``, without waiting for it):

    <python> -m bnspec.adapters.converters._helper MODULE:FUNCTION [ARG ...]

The helper imports ``MODULE``, calls its ``prepare(*ARGS)`` if it has one (the imports and
settings that make the first case as fast as the next; a failure there is left for the case to
meet), and then answers requests: one JSON object a line on its stdin, ``FUNCTION(request)``'s
JSON object a line on its stdout. Like the worker, it moves the replies to a private file
descriptor and points fd 1 at stderr, so a framework that prints cannot corrupt them. A request
that raises is answered ``{"error": LINE, "error_type": NAME}``, LINE being the last line of the
traceback (what a fresh interpreter's stderr would end with). On end of file (the worker exited or
closed it) the helper exits at once, skipping the interpreter's teardown.

The helper shares the worker's process group, so a worker killed for a timeout or its memory takes
its helpers with it, and asks Linux to kill it when the process that started it ends
(``PR_SET_PDEATHSIG``), so a worker that leaves with ``os._exit`` leaves no helper behind; a helper
that dies is started again on the next request. Each request must behave as in a fresh
interpreter: the handler resets whatever global state its framework keeps between calls
(``nobuco``: the Keras session).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import IO, Any

_PARENT = "BNSPEC_HELPER_PARENT"  # the pid of the process that started the helper


class HelperDied(Exception):
    """The helper process ended before answering; ``last_line`` is its stderr's last line."""

    def __init__(self, code: int | None, last_line: str) -> None:
        super().__init__(f"helper exited with code {code}: {last_line}")
        self.code = code
        self.last_line = last_line


class Helper:
    """The worker's handle on one warm helper process."""

    def __init__(self, python: str, target: str, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.python = python
        self.target = target
        self.args = tuple(args)
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stderr: IO[bytes] | None = None
        self._buffer = b""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the helper unless it runs; returns at once (the helper prepares on its own)."""
        if self.alive:
            return
        self._reap()
        self._stderr = tempfile.TemporaryFile()
        self._buffer = b""
        self.proc = subprocess.Popen(
            [self.python, "-m", "bnspec.adapters.converters._helper", self.target, *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env={**self.env, _PARENT: str(os.getpid())})
        self.starts += 1

    def call(self, request: Mapping[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """The helper's answer to ``request``. Raises HelperDied when the helper ended first
        (it is started again on the next call), TimeoutError (the helper is stopped)."""
        self.start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        assert self._stderr is not None
        self._stderr.seek(0)
        self._stderr.truncate()  # the helper writes at the shared offset: this request's only
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = self._readline(proc.stdout.fileno(), time.monotonic() + timeout)
        except (BrokenPipeError, EOFError):
            code = proc.wait()
            last = self._stderr_last_line()
            self._reap()
            raise HelperDied(code, last) from None
        except TimeoutError:
            self.close()
            raise
        return json.loads(line)

    def _readline(self, fd: int, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stderr_last_line(self) -> str:
        if self._stderr is None:
            return "(no output)"
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return (text.strip().splitlines() or ["(no output)"])[-1]

    def close(self, timeout: float = 5.0) -> None:
        """End the helper: end of file on its stdin (it exits at once), killed if it lingers."""
        proc = self.proc
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def _reap(self) -> None:
        """Drop a helper that has ended: its pipes and its stderr file."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


_HELPERS: dict[tuple[str, str, tuple[str, ...]], Helper] = {}


def helper(python: str, target: str, args: Sequence[str] = (),
           env: Mapping[str, str] | None = None) -> Helper:
    """This process's helper for ``target`` in ``python`` (one per environment and target, kept
    until this process exits)."""
    key = (python, target, tuple(args))
    if key not in _HELPERS:
        _HELPERS[key] = Helper(python, target, args, env)
    return _HELPERS[key]


@atexit.register
def close_all() -> None:
    """End every helper of this process (a worker leaving with os._exit skips this: its helpers
    see end of file and exit on their own)."""
    for h in list(_HELPERS.values()):
        h.close()


def error_line(exc: BaseException) -> str:
    """The last line a fresh interpreter's traceback of ``exc`` would end with."""
    text = "".join(traceback.format_exception_only(type(exc), exc))
    return (text.strip().splitlines() or [type(exc).__name__])[-1]


# -- the helper side ------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Be killed when the process that started us ends (Linux), and end now if it already has."""
    parent = int(os.environ.pop(_PARENT, "0") or 0)
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: end of file on stdin still ends us
        pass
    if parent and os.getppid() != parent:
        os._exit(0)


def serve(target: str, args: Sequence[str]) -> None:
    _die_with_parent()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything printed by a framework goes to stderr, not into the replies
    module_name, _, function = target.partition(":")
    module = import_module(module_name)
    prepare = getattr(module, "prepare", None)
    if prepare is not None:
        try:
            prepare(*args)
        except Exception:  # noqa: BLE001 - the first request meets it again and reports it
            traceback.print_exc()
    handle = getattr(module, function)
    for line in iter(sys.stdin.buffer.readline, b""):
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - the framework's failure is the answer
            traceback.print_exc()
            reply = {"error": error_line(exc), "error_type": type(exc).__name__}
        try:
            proto.write(json.dumps(reply) + "\n")
            proto.flush()
        except OSError:  # the worker is gone
            break
    # End of file: the worker exited or closed us. Skip the interpreter's teardown (TensorFlow's
    # atexit and thread shut-down take seconds); nothing is left to write.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
