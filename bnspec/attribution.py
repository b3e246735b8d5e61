"""Attribution: which knob flips of a profile make the reference match what was observed.

A mismatch is explained by the single flips (then the pairs) whose reference output, under the
flipped profile's own tolerance (numerics knobs widen or narrow it), accepts the observation.
The momentum value the adapter passed is held fixed (``passed_as`` = the declared convention),
so a framework that reads it the other way round is attributed to ``momentum_weights``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Result
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.reference import reference
from bnspec.semantics import KNOBS, Semantics
from bnspec.tolerance import Comparison, compare



@dataclass
class Observation:
    """What an adapter did with a case: a Result, or the framework raised."""

    result: Result | None = None
    raised: str | None = None  # "TypeName: message"


@dataclass
class Verdict:
    ok: bool
    comparison: Comparison | None
    note: str = ""


def judge(case: Case, sem: Semantics, obs: Observation, passed_as: str | None = None,
          *, quick: bool = False) -> Verdict:
    """Does the observation agree with ``sem``? Expected errors must be observed errors.
    ``quick``: stop at the first mismatch (the verdict is all the caller needs)."""
    with np.errstate(all="ignore"):  # NaN/Inf propagation is a property under test, not noise
        return _judge(case, sem, obs, passed_as, quick)


def _judge(case: Case, sem: Semantics, obs: Observation, passed_as: str | None, quick: bool = False) -> Verdict:
    try:
        expected = reference(case, sem, passed_as=passed_as)  # type: ignore[arg-type]
    except SingleValueError as exc:
        if obs.raised is not None:
            return Verdict(True, None, f"raised as expected ({obs.raised})")
        return Verdict(False, None, f"expected an error ({exc}); the implementation returned a result")
    except UnsupportedFeature as exc:
        return Verdict(False, None, f"the profile cannot express this case: {exc}")
    if obs.raised is not None:
        return Verdict(False, None, f"raised {obs.raised}; the profile defines a result")
    assert obs.result is not None
    comparison = compare(case, sem, obs.result, expected, stop_at_mismatch=quick)
    worst = comparison.worst()
    return Verdict(comparison.ok, comparison, worst.describe() if worst is not None else "")


def alternatives(sem: Semantics) -> list[dict[str, Any]]:
    """Every single knob flip away from ``sem`` (the knobs a Case sets are never flipped)."""
    return [{name: v} for name, knob in KNOBS.items() if knob.flippable
            for v in knob.alternatives_of(getattr(sem, name))]


def explain(
    case: Case, base: Semantics, obs: Observation, *, passed_as: str | None = None, pairs: bool = True
) -> list[dict[str, tuple[Any, Any]]]:
    """The knob changes ``{knob: (observed value, base value)}`` that explain ``obs``.

    Single flips first; pairs only when no single flip explains."""
    passed_as = passed_as or base.momentum_weights
    singles = alternatives(base)
    found = _explaining(case, base, singles, obs, passed_as)
    if not found and pairs:
        combos = [{**a, **b} for a, b in itertools.combinations(singles, 2) if not set(a) & set(b)]
        found = _explaining(case, base, combos, obs, passed_as)
    return [{k: (v, getattr(base, k)) for k, v in f.items()} for f in found]


_PREFIX = 2


def _explaining(case: Case, base: Semantics, flips: list[dict[str, Any]], obs: Observation,
                passed_as: str) -> list[dict[str, Any]]:
    """The flips that explain ``obs``. A flip that explains every step explains the first few,
    so long trajectories are screened on a short prefix first (the reference and the tolerance
    of step i depend on steps 0..i only) and only the survivors are judged on the whole case."""
    if len(case.steps) > _PREFIX and obs.result is not None and len(obs.result.steps) == len(case.steps):
        short = case.replace(steps=case.steps[:_PREFIX])
        short_obs = Observation(result=Result(obs.result.steps[:_PREFIX], obs.result.meta))
        flips = [f for f in flips if _explains(short, base, f, short_obs, passed_as)]
    return [f for f in flips if _explains(case, base, f, obs, passed_as)]


def _explains(case: Case, base: Semantics, flip: dict[str, Any], obs: Observation, passed_as: str) -> bool:
    try:
        candidate = base.replace(**flip)
    except Exception:  # an invalid combination is no explanation
        return False
    return judge(case, candidate, obs, passed_as, quick=True).ok


def format_explanation(flips: list[dict[str, tuple[Any, Any]]], observed_word: str = "observed",
                       base_word: str = "declared") -> str:
    if not flips:
        return "unexplained"
    parts = []
    for f in flips:
        parts.append(" + ".join(f"{k}: {v[0]!r}, {observed_word}; {v[1]!r}, {base_word}" for k, v in f.items()))
    return " | ".join(parts)
