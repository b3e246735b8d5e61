"""Attribution: which knob flips of a profile make the reference match what was observed, and
the two verdicts on one observation attributed to knobs.

A mismatch is explained by the single flips (then the pairs) whose reference output, under the
flipped profile's own tolerance (numerics knobs widen or narrow it), accepts the observation.
The momentum value the adapter passed is held fixed (``passed_as`` = the declared convention),
so a framework that reads it the other way round is attributed to ``momentum_weights``.

An observation has two verdicts (:func:`judge_observation`): *conformance* to the adapter's
declared profile (a mismatch is explained by knob flips away from it), and *divergence* from a
baseline profile (a porting fact: the knobs by which the implementation differs from the
baseline on this case). Where the declared profile is the baseline, the second verdict and its
explanation are the first's: attribution runs once per profile the observation disagrees with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Result, StepResult
from bnspec.errors import BnspecError
from bnspec.judging import Verdict, judge
from bnspec.records import Explanation, Observation
from bnspec.reference import reference
from bnspec.semantics import KNOBS, MomentumWeights, Semantics

__all__ = ["Judgement", "Observation", "alternatives", "explain", "judge_observation", "profile_difference"]


def alternatives(sem: Semantics) -> list[dict[str, Any]]:
    """Every single knob flip away from ``sem`` (the knobs a Case sets are never flipped)."""
    return [{name: v} for name, knob in KNOBS.items() if knob.flippable
            for v in knob.alternatives_of(getattr(sem, name))]


def explain(
    case: Case, base: Semantics, obs: Observation, *, passed_as: MomentumWeights | None = None,
    pairs: bool = True,
) -> Explanation:
    """The knob flips away from ``base`` under which the reference reproduces ``obs``, each
    alternative with the observed value and ``base``'s (empty: unexplained).

    Single flips first; pairs only when no single flip explains."""
    passed_as = passed_as or base.momentum_weights
    singles = alternatives(base)
    found = _explaining(case, base, singles, obs, passed_as)
    if not found and pairs:
        combos = [{**a, **b} for a, b in itertools.combinations(singles, 2) if not set(a) & set(b)]
        found = _explaining(case, base, combos, obs, passed_as)
    return Explanation.of({k: (v, getattr(base, k)) for k, v in f.items()} for f in found)


_PREFIX = 2


def _explaining(case: Case, base: Semantics, flips: list[dict[str, Any]], obs: Observation,
                passed_as: MomentumWeights) -> list[dict[str, Any]]:
    """The flips that explain ``obs``. A flip that explains every step explains the first few,
    so long trajectories are screened on a short prefix first (the reference and the tolerance
    of step i depend on steps 0..i only) and only the survivors are judged on the whole case."""
    if len(case.steps) > _PREFIX and obs.result is not None and len(obs.result.steps) == len(case.steps):
        short = case.replace(steps=case.steps[:_PREFIX])
        short_obs = Observation(result=Result(obs.result.steps[:_PREFIX], obs.result.meta))
        flips = [f for f in flips if _explains(short, base, f, short_obs, passed_as)]
    return [f for f in flips if _explains(case, base, f, obs, passed_as)]


def _explains(case: Case, base: Semantics, flip: dict[str, Any], obs: Observation,
              passed_as: MomentumWeights) -> bool:
    try:
        candidate = base.replace(**flip)
    except Exception:  # an invalid combination is no explanation
        return False
    return judge(case, candidate, obs, passed_as, quick=True).ok


UNEXPLAINED = "unexplained"  # the baseline knob of a divergence no flip explains


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict  # against the declared profile
    explanation: Explanation  # of a mismatch with the declared profile (empty when it conforms)
    baseline_agrees: bool
    baseline_knobs: tuple[str, ...]  # where it diverges from the baseline: the knobs, or (UNEXPLAINED,)


def judge_observation(case: Case, declared: Semantics, baseline: Semantics, obs: Observation) -> Judgement:
    """Both verdicts on a judgeable observation; attribution runs once per profile it disagrees with."""
    verdict = judge(case, declared, obs)
    explanation = explain(case, declared, obs) if not verdict.ok else Explanation()
    if baseline == declared:
        base_verdict, base_explanation = verdict, explanation
    else:
        base_verdict, base_explanation = judge(case, baseline, obs), None
    knobs: tuple[str, ...] = ()
    if not base_verdict.ok:
        if verdict.ok:
            knobs = profile_difference(case, declared, baseline, obs)
        if not knobs:
            if base_explanation is None:
                base_explanation = explain(case, baseline, obs, pairs=True)
            knobs = base_explanation.knobs or (UNEXPLAINED,)
    return Judgement(verdict, explanation, base_verdict.ok, knobs)


def profile_difference(case: Case, declared: Semantics, baseline: Semantics, obs: Observation) -> tuple[str, ...]:
    """For an implementation that conforms to its declared profile: the knobs where that profile
    differs from the baseline and which matter for this case (setting one back to the baseline's
    value alone makes the declared profile disagree with what was observed)."""
    found = []
    try:
        same_as: Result | None = reference(case, declared)
    except BnspecError:
        same_as = None
    for name in KNOBS:
        if KNOBS[name].set_by_case or getattr(declared, name) == getattr(baseline, name):
            continue
        reverted = declared.replace(**{name: getattr(baseline, name)})
        try:
            if same_as is not None and not KNOBS[name].numerics and _same(reference(case, reverted), same_as):
                continue  # the knob does not change this case's semantics: it cannot matter
        except BnspecError:
            pass
        if not judge(case, reverted, obs, quick=True).ok:
            found.append(name)
    return tuple(found)


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
