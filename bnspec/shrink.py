"""Minimal cases: Hypothesis shrinks a failing case to the smallest reduction that still fails
the same way.

A reduction keeps a window of the step plan, a prefix of the batch, of the channels and of each
spatial extent. Hypothesis searches these (derandomized, no example database, a fixed budget, so
a run reproduces from its seed) and shrinks every choice toward the smallest: one step, one
sample, one channel. "The same way" is the caller's predicate: the reduced case still disagrees
with the declared profile, and the knob flip that explained the original still explains it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bnspec.adapter import Adapter
from bnspec.attribution import explain, explains_alternative
from bnspec.case import Case
from bnspec.errors import BnspecError
from bnspec.judging import Verdict, judge
from bnspec.observe import observe
from bnspec.records import Explanation
from bnspec.semantics import Semantics
from bnspec.worker import Worker

BUDGET = 20  # adapter calls per shrink: each is a framework call (and, for JAX, a compile)


def reduce(case: Case, first: int, count: int, n: int | tuple[int, ...], c: int, spatial: tuple[int, ...]) -> Case:
    """The case restricted to steps[first:first+count], samples [:n], channels [:c] and each
    spatial extent's prefix. A case with replicas takes ``n`` per replica: the first len(n)
    replicas, each its shard's first n[r] samples (the split shrinks with the batch)."""
    rows: slice | np.ndarray = slice(0, n) if isinstance(n, int) else np.concatenate(
        [np.arange(lo, lo + k) for (lo, _), k in zip(case.shards, n, strict=False)]).astype(int)
    index = (rows, slice(0, c), *(slice(0, s) for s in spatial))

    def cut(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[index[: a.ndim]])

    steps = tuple(
        dataclasses.replace(s, x=cut(s.x), grad_output=None if s.grad_output is None else cut(s.grad_output))
        for s in case.steps[first : first + count]
    )
    per_channel = {k: (None if getattr(case, k) is None else getattr(case, k)[:c])
                   for k in ("gamma", "beta", "running_mean", "running_var")}
    if not isinstance(n, int):
        per_channel["replicas"] = tuple(n)
    return case.replace(steps=steps, **per_channel)


def size(case: Case) -> tuple[int, int]:
    return (len(case.steps), sum(int(s.x.size) for s in case.steps))


_home_lock = threading.Lock()
_home_users = 0
_home_restore: tuple[tempfile.TemporaryDirectory[str], Any] | None = None


@contextlib.contextmanager
def _own_hypothesis_home() -> Iterator[None]:
    """Hypothesis writes into its home directory, ./.hypothesis unless the user set one, even with
    database=None: its cache of the constants it finds in loaded modules. While bnspec shrinks,
    the home is a temporary directory of its own, so that a run writes nothing outside --out and
    the user cache; the user's own setting comes back after (shrinks run in parallel threads:
    the first in sets it, the last out restores it)."""
    global _home_users, _home_restore
    from hypothesis import configuration

    with _home_lock:
        if _home_users == 0:
            home = tempfile.TemporaryDirectory(prefix="bnspec-hypothesis-")
            # None where Hypothesis has not resolved it yet (it then reads its environment again).
            _home_restore = (home, getattr(configuration, "__hypothesis_home_directory", None))
            configuration.set_hypothesis_home_dir(home.name)
        _home_users += 1
    try:
        yield
    finally:
        with _home_lock:
            _home_users -= 1
            if _home_users == 0 and _home_restore is not None:
                home, previous = _home_restore
                configuration.set_hypothesis_home_dir(previous)
                home.cleanup()
                _home_restore = None


def shrink(case: Case, still_fails: Callable[[Case], bool], budget: int = BUDGET) -> Case:
    """The smallest reduction of ``case`` for which ``still_fails`` holds (``case`` itself when
    Hypothesis finds none within ``budget`` calls)."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    steps = len(case.steps)
    shape = min((s.x.shape for s in case.steps), key=lambda sh: int(np.prod(sh)))
    n, c, *spatial = shape

    @st.composite
    def reductions(draw: Any) -> Case:
        first = draw(st.integers(0, steps - 1), label="first step")
        count = draw(st.integers(1, steps - first), label="steps kept")
        samples: int | tuple[int, ...]
        if case.replicas is None:
            samples = draw(st.integers(1, n), label="samples")
        else:  # fewest replicas, smallest shards (an empty shard stays empty)
            kept = draw(st.integers(1, len(case.replicas)), label="replicas kept")
            samples = tuple(draw(st.integers(min(1, k), k), label=f"replica {r} samples")
                            for r, k in enumerate(case.replicas[:kept]))
        return reduce(case, first, count, samples,
                      draw(st.integers(1, c), label="channels"),
                      tuple(draw(st.integers(1, s), label=f"spatial {i}") for i, s in enumerate(spatial)))

    seen: dict[str, bool] = {}  # answers are remembered: Hypothesis replays, and must see the same

    def condition(candidate: Case) -> bool:
        key = candidate.case_id()
        if key not in seen:
            if len(seen) >= budget or size(candidate) >= size(case):
                return False
            try:
                seen[key] = bool(still_fails(candidate))
            except BnspecError:
                seen[key] = False
        return seen[key]

    try:
        with _own_hypothesis_home():
            return find(reductions(), condition, settings=settings(
                max_examples=budget * 4, derandomize=True, database=None, deadline=None,
                phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return case
    except Exception:  # noqa: BLE001 - e.g. Hypothesis's Flaky: a flaky adapter keeps its case
        return case


def minimal_failing(runner: Adapter | Worker, case: Case, declared: Semantics, verdict: Verdict,
                    explanation: Explanation, *, timeout: float = 120.0) -> Case:
    """Hypothesis's smallest reduction of a case that fails conformance (``verdict``, explained
    by ``explanation``), failing the same way: still a mismatch with the declared profile of the
    same kind, still explained by the same knob flip (or still explained by none). Crashes and
    timeouts are not shrunk: each try would cost a worker."""

    def still_fails(candidate: Case) -> bool:
        obs = observe(runner, candidate, timeout=timeout)
        if not obs.judgeable:
            return False
        candidate_verdict = judge(candidate, declared, obs)
        if candidate_verdict.ok or candidate_verdict.kind != verdict.kind:
            return False
        if not explanation:
            return not explain(candidate, declared, obs, pairs=False)
        return explains_alternative(candidate, declared, explanation.first_profile_change(), obs)

    minimal = shrink(case, still_fails)
    if minimal is case:
        return case
    shapes = sorted({s.x.shape for s in minimal.steps})
    return minimal.replace(label=f"{case.label} [shrunk to {len(minimal.steps)} step(s) of shape "
                                 f"{', '.join(map(str, shapes))}]")
