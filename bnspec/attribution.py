"""Attribution: which knob flips of a profile make the reference match what was observed, and
the two verdicts on one observation attributed to knobs.

A mismatch is explained by the single flips (then the pairs) whose reference output, under the
flipped profile's own tolerance (numerics knobs widen or narrow it), accepts the observation --
and rejects every *placebo*: the flipped profile's own expected result changed in ways no knob
produces (y scaled, shifted or zeroed, the running variance tripled, the running mean moved). A
flip whose tolerance is so wide that it accepts a visibly wrong result explains nothing (a
one-pass variance at a large offset leaves the output unconstrained); no flip left: unexplained.
The momentum value the adapter passed is held fixed (``passed_as`` = the declared convention),
so a framework that reads it the other way round is attributed to ``momentum_weights``.

An observation has two verdicts (:func:`judge_observation`): *conformance* to the adapter's
declared profile (a mismatch is explained by knob flips away from it), and *divergence* from a
baseline profile (a porting fact: the knobs by which the implementation differs from the
baseline on this case). Where the declared profile is the baseline, the second verdict and its
explanation are the first's: attribution runs once per profile the observation disagrees with.
"""

from __future__ import annotations

import dataclasses
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
    steps = _mismatched_steps(case, base, obs, passed_as)
    found = _specific(case, base, _explaining(case, base, singles, obs, passed_as), steps, passed_as)
    if not found and pairs:
        combos = [{**a, **b} for a, b in itertools.combinations(singles, 2) if not set(a) & set(b)]
        found = _specific(case, base, _explaining(case, base, combos, obs, passed_as), steps, passed_as)
    return Explanation.of({k: (v, getattr(base, k)) for k, v in f.items()} for f in found)


def _mismatched_steps(case: Case, base: Semantics, obs: Observation, passed_as: MomentumWeights) -> tuple[int, ...]:
    """The steps an explanation must account for: the first, the worst and the last step where
    ``obs`` disagrees with ``base`` (all of them are too many for a 200-step trajectory)."""
    verdict = judge(case, base, obs, passed_as)
    if verdict.comparison is None or not verdict.comparison.mismatches:
        return ()
    bad = sorted({c.step for c in verdict.comparison.mismatches})
    worst = verdict.comparison.worst()
    return tuple(sorted({bad[0], bad[-1], *([worst.step] if worst is not None else [])}))


def placebos(obs: Observation, steps: tuple[int, ...] | None = None) -> list[Observation]:
    """``obs`` changed in ways no knob produces, one step at a time (each of ``steps``; None:
    every step), each visibly different from it: y scaled by 1.5, shifted by 1 + max|y|, zeroed;
    the running variance tripled; the running mean moved by 1 + |mean|. (None for an observation
    without a result: what raised is what it is.)"""
    if obs.result is None:
        return []
    return [fake for i in (range(len(obs.result.steps)) if steps is None else steps)
            for fake in _placebos_at(obs, i)]


def _placebos_at(obs: Observation, index: int) -> list[Observation]:
    assert obs.result is not None
    if not 0 <= index < len(obs.result.steps):
        return []
    changes = [("y", lambda a: a * 1.5), ("y", lambda a: a + (1.0 + _max_abs(a))), ("y", lambda a: a * 0.0),
               ("running_var", lambda a: a * 3.0), ("running_mean", lambda a: a + (1.0 + np.abs(a)))]
    out = []
    step = obs.result.steps[index]
    for quantity, change in changes:
        value = getattr(step, quantity)
        if value is None:
            continue
        with np.errstate(all="ignore"):
            moved = change(np.asarray(value, dtype=np.float64))
        if not np.array_equal(moved, value, equal_nan=True):
            steps = list(obs.result.steps)
            steps[index] = dataclasses.replace(step, **{quantity: moved})
            out.append(Observation(result=Result(steps, obs.result.meta)))
    return out


def _max_abs(a: np.ndarray) -> float:
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max()) if finite.size else 0.0


def _specific(case: Case, base: Semantics, flips: list[dict[str, Any]], steps: tuple[int, ...],
              passed_as: MomentumWeights) -> list[dict[str, Any]]:
    """The flips whose profile rejects every placebo of its own expected result at each of the
    mismatched ``steps``: one that would also accept a visibly wrong result there explains
    nothing. (What the flipped profile expects to raise needs no placebo.)"""
    specific = []
    for flip in flips:
        try:
            with np.errstate(all="ignore"):
                expected = reference(case, base.replace(**flip), passed_as=passed_as)
        except BnspecError:
            specific.append(flip)
            continue
        fakes = placebos(Observation(result=expected), steps)
        if not any(_explains(case, base, flip, fake, passed_as) for fake in fakes):
            specific.append(flip)
    return specific


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
    # of a mismatch no flip explains: the single flip that comes closest, and by how many times its
    # own bound it still misses (the residual itself is the verdict's worst check)
    closest: Explanation = Explanation()
    closest_ratio: float | None = None


def closest(case: Case, base: Semantics, obs: Observation, *,
            passed_as: MomentumWeights | None = None) -> tuple[Explanation, float | None]:
    """The single flip whose profile misses ``obs`` by the fewest times its own bound (placebo
    checks aside: it is a lead, not an explanation)."""
    passed_as = passed_as or base.momentum_weights
    best: tuple[float, dict[str, Any]] | None = None
    for flip in alternatives(base):
        try:
            candidate = base.replace(**flip)
        except Exception:  # noqa: BLE001 - an invalid combination is no lead
            continue
        verdict = judge(case, candidate, obs, passed_as)
        worst = verdict.comparison.worst() if verdict.comparison is not None else None
        if worst is None:
            continue
        ratio = worst.err_u / worst.allowed_u if worst.allowed_u > 0 else float("inf")
        if best is None or ratio < best[0]:
            best = (ratio, flip)
    if best is None:
        return Explanation(), None
    return Explanation.of([{k: (v, getattr(base, k)) for k, v in best[1].items()}]), best[0]


def judge_observation(case: Case, declared: Semantics, baseline: Semantics, obs: Observation) -> Judgement:
    """Both verdicts on a judgeable observation; attribution runs once per profile it disagrees with."""
    verdict = judge(case, declared, obs)
    explanation = explain(case, declared, obs) if not verdict.ok else Explanation()
    lead, lead_ratio = (closest(case, declared, obs) if not verdict.ok and not explanation.knobs
                        and obs.result is not None else (Explanation(), None))
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
    return Judgement(verdict, explanation, base_verdict.ok, knobs, lead, lead_ratio)


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
