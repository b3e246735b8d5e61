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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Result, Step, StepResult
from bnspec.errors import BnspecError
from bnspec.judging import Verdict, judge
from bnspec.records import Explanation, Observation
from bnspec.reference import emulate, reference
from bnspec.semantics import ALL_KNOBS, KNOBS, READINGS, WARMED, MomentumWeights, Semantics

__all__ = ["Judgement", "Observation", "alternatives", "explain", "judge_observation", "profile_difference"]


def alternatives(sem: Semantics, case: Case | None = None) -> list[dict[str, Any]]:
    """Every single knob flip away from ``sem`` (the knobs a Case sets are never flipped); for a
    ``case`` with replicas, the replica knobs' flips too (on one device they change nothing)."""
    knobs = ALL_KNOBS if case is not None and case.replicas is not None else KNOBS
    return [{name: v} for name, knob in knobs.items() if knob.flippable
            for v in knob.alternatives_of(getattr(sem, name))]


_WARMED = WARMED


def _f32(v: float) -> float:
    return float(np.float32(v))


def readings(case: Case) -> list[dict[str, Any]]:
    """The readings worth trying for ``case``: ``[{reading: value held}, ...]``."""
    out: list[dict[str, Any]] = []
    if case.eps and _f32(case.eps) != case.eps:
        out.append({"eps": _f32(case.eps)})
    m = case.momentum
    if m is None:  # the cumulative average replaced by a constant (1/(k+1): the export's own)
        held = [v for x in (1.0 / (case.counter + 1), 1.0 / (case.counter + 2), 0.1)
                for v in (x, _f32(x), 1.0 - _f32(1.0 - x))]
    else:  # rounded in either convention, or a framework default substituted
        held = [_f32(m), 1.0 - _f32(1.0 - m), 0.1, 0.01]
    for v in dict.fromkeys(held):
        if v != m and 0.0 <= v <= 1.0:
            out.append({"momentum": v})
    out.append({"counter": case.counter + 1})
    if case.counter:
        out.append({"counter": 0})
    if case.track_running_stats:
        out.append({"initial_state": _WARMED})
    return out


def _declared(case: Case, base: Semantics, key: str) -> Any:
    if key == "initial_state":
        return "as given"
    if key in ("eps", "momentum", "counter"):
        return getattr(case, key)
    return getattr(base, key)


def candidate(case: Case, base: Semantics, flip: dict[str, Any],
              passed_as: MomentumWeights | None = None) -> tuple[Case, Semantics]:
    """The case and profile an explanation (knob flips and readings) stands for. Raises
    ``BnspecError``/``ValueError`` for a combination that is not one."""
    knobs = {k: v for k, v in flip.items() if k not in READINGS}
    sem = base.replace(**knobs) if knobs else base
    changes = {k: v for k, v in flip.items() if k in ("eps", "momentum", "counter")}
    held = case.replace(**changes) if changes else case
    if flip.get("initial_state") == _WARMED:
        first = held.replace(steps=(Step("train", held.steps[0].x),))
        # the extra step is the source layer's own (a tracing exporter runs the source module):
        # it follows ``base``, whatever the artifact does afterwards
        with np.errstate(all="ignore"):
            after = reference(first, base, passed_as=passed_as or base.momentum_weights).steps[0]
        if after.running_mean is None or after.running_var is None:
            raise BnspecError("no running statistics to warm")
        held = held.replace(running_mean=np.asarray(after.running_mean, np.float64),
                            running_var=np.asarray(after.running_var, np.float64),
                            counter=held.counter + 1)
    return held, sem


def explains_alternative(case: Case, base: Semantics, alternative: dict[str, Any], obs: Observation,
                         passed_as: MomentumWeights | None = None) -> bool:
    """Does the reference under this alternative (knob flips and readings) agree with ``obs``?"""
    return _explains(case, base, alternative, obs, passed_as or base.momentum_weights)


def explain(
    case: Case, base: Semantics, obs: Observation, *, passed_as: MomentumWeights | None = None,
    pairs: bool = True, deep: bool = True,
) -> Explanation:
    """The knob flips and readings away from ``base`` under which the reference reproduces
    ``obs``, each alternative with the observed value and ``base``'s (empty: unexplained).

    Single moves first (a knob flip or a reading), then pairs, then -- where no pair explains
    -- a beam search that adds the move leaving the smallest residual, up to four moves."""
    passed_as = passed_as or base.momentum_weights
    singles = alternatives(base, case) + readings(case)
    steps = _mismatched_steps(case, base, obs, passed_as)
    found = _specific(case, base, _explaining(case, base, singles, obs, passed_as), steps, passed_as, obs)
    if not found and pairs:
        combos = [{**a, **b} for a, b in itertools.combinations(singles, 2) if not set(a) & set(b)]
        found = _specific(case, base, _explaining(case, base, combos, obs, passed_as), steps, passed_as, obs)
    if not found and pairs and deep and obs.result is not None:
        found = _beam(case, base, singles, obs, steps, passed_as)
    return Explanation.of({k: (v, _declared(case, base, k)) for k, v in f.items()} for f in found)


_BEAM, _DEPTH = 6, 4


def _beam(case: Case, base: Semantics, singles: list[dict[str, Any]], obs: Observation,
          steps: tuple[int, ...], passed_as: MomentumWeights) -> list[dict[str, Any]]:
    """Explanations of three or four moves: from the ``_BEAM`` moves (then sets) that leave the
    smallest residual, add one move at a time, keeping the best; the first depth at which some
    set explains (and survives its placebos) ends the search."""
    here = residual(case, base, {}, obs, passed_as)
    scored = sorted((r, i) for i, f in enumerate(singles)
                    if (r := residual(case, base, f, obs, passed_as)) is not None and r != here)
    singles = [singles[i] for _, i in scored]  # a move that changes nothing here is no step
    beam = singles[:_BEAM]
    for _depth in range(2, _DEPTH + 1):
        grown: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, Any]]] = {}
        for partial in beam:
            for move in singles:
                if set(move) & set(partial):
                    continue
                combo = {**partial, **move}
                key = tuple(sorted((k, repr(v)) for k, v in combo.items()))
                if key in grown:
                    continue
                distance = residual(case, base, combo, obs, passed_as)
                if distance is not None:
                    grown[key] = (distance, combo)
        if not grown:
            return []
        ranked = sorted(grown.values(), key=lambda t: t[0])
        if _depth > 2:  # pairs were judged whole already
            near = [c for _, c in ranked[:4 * _BEAM]]
            found = _specific(case, base, [c for c in near if _explains(case, base, c, obs, passed_as)],
                              steps, passed_as, obs)
            if found:
                return found
        beam = [c for _, c in ranked[:_BEAM]]
    return []


def residual(case: Case, base: Semantics, flip: dict[str, Any], obs: Observation,
             passed_as: MomentumWeights | None = None) -> float | None:
    """How far ``obs`` lies from the exact result under ``flip``: the largest relative difference
    over every quantity and step, bounds aside (a flip that only widens a bound does not come
    nearer). None where the flipped profile gives no result."""
    if obs.result is None:
        return None
    try:
        held, sem = candidate(case, base, flip, passed_as)
        with np.errstate(all="ignore"):
            return _soft_distance(obs.result, reference(held, sem, passed_as=passed_as or base.momentum_weights))
    except (BnspecError, ValueError, TypeError):
        return None


def _soft_distance(observed: Result, expected: Result) -> float:
    """A search guide, not a verdict: the mean over every value of every quantity and step of
    log10(1 + relative error / 1e-7), a soft count of the values that disagree (a move that makes
    more of them agree comes nearer, even where another value still disagrees by more)."""
    total, count = 0.0, 0
    for so, se in zip(observed.steps, expected.steps, strict=False):
        for q in StepResult.QUANTITIES:
            a, b = getattr(so, q), getattr(se, q)
            if a is None or b is None:
                continue
            a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
            if a.shape != b.shape:
                return math.inf
            with np.errstate(all="ignore"):
                rel = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            rel = np.where(same, 0.0, np.where(np.isfinite(rel), rel, 1.0))
            total += float(np.log10(1.0 + rel / 1e-7).sum())
            count += rel.size
    return total / count if count else 0.0


def miss_ratio(case: Case, base: Semantics, flip: dict[str, Any], obs: Observation,
               passed_as: MomentumWeights | None = None) -> float | None:
    """How many times its own bound the profile under ``flip`` misses ``obs`` by at its worst
    check (at most 1: it agrees); None where it cannot be judged quantity by quantity."""
    try:
        held, sem = candidate(case, base, flip, passed_as)
    except (BnspecError, ValueError, TypeError):
        return None
    verdict = judge(held, sem, obs, passed_as or base.momentum_weights)
    if verdict.comparison is None:
        return 0.0 if verdict.ok else None
    worst = verdict.comparison.worst()
    if worst is None:
        return 0.0
    return worst.err_u / worst.allowed_u if worst.allowed_u > 0 else (0.0 if worst.err_u == 0 else math.inf)


def margin(case: Case, base: Semantics, flip: dict[str, Any], obs: Observation,
           passed_as: MomentumWeights | None = None) -> tuple[float | None, float | None]:
    """An explanation's margin: how much of its bound the observation uses under it (<= 1), and
    by how many times its bound the nearest placebo misses (> 1: the larger, the more specific)."""
    passed_as = passed_as or base.momentum_weights
    fit = miss_ratio(case, base, flip, obs, passed_as)
    try:
        held, sem = candidate(case, base, flip, passed_as)
        with np.errstate(all="ignore"):
            expected = reference(held, sem, passed_as=passed_as)
    except (BnspecError, ValueError, TypeError):
        return fit, None
    steps = _mismatched_steps(case, base, obs, passed_as)
    ratios = [r for fake in placebos(Observation(result=expected), steps)
              if (r := miss_ratio(case, base, flip, fake, passed_as)) is not None]
    return fit, (min(ratios) if ratios else None)


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
              passed_as: MomentumWeights, obs: Observation) -> list[dict[str, Any]]:
    """The flips whose profile rejects every placebo of its own expected result at each of the
    mismatched ``steps``: one that would also accept a visibly wrong result there explains
    nothing. (What the flipped profile expects to raise needs no placebo.)"""
    specific = []
    for flip in flips:
        try:
            held, sem = candidate(case, base, flip, passed_as)
            with np.errstate(all="ignore"):
                expected = reference(held, sem, passed_as=passed_as)
        except BnspecError:
            specific.append(flip)
            continue
        except (ValueError, TypeError):
            continue
        fakes = placebos(Observation(result=expected), steps)
        if any(_explains(case, base, flip, fake, passed_as) for fake in fakes):
            continue
        if _rounding_unseen(held, base, sem, flip, obs, passed_as):
            continue
        specific.append(flip)
    return specific


def _rounding_unseen(held: Case, base: Semantics, sem: Semantics, flip: dict[str, Any], obs: Observation,
                     passed_as: MomentumWeights) -> bool:
    """A numerics flip explains through the rounding it emulates, not through the wider bound it
    brings: the observation must lie nearer the flipped profile's emulation than the same
    profile's with the numerics knobs left as ``base`` has them. (A float64 case whose eps was
    held as a float32 attribute is not explained by float32 reductions: it sits hundreds of
    float64 roundoffs from the exact result, and 1e8 from a float32 one.)"""
    numerics = [k for k in flip if k in ALL_KNOBS and ALL_KNOBS[k].numerics]
    if not numerics or obs.result is None:
        return False
    plain = sem.replace(**{k: getattr(base, k) for k in numerics})
    try:
        with np.errstate(all="ignore"):
            flipped_d = _distance(obs.result, emulate(held, sem, passed_as=passed_as))
            plain_d = _distance(obs.result, emulate(held, plain, passed_as=passed_as))
    except (BnspecError, ValueError, TypeError):
        return False
    return not flipped_d < plain_d


def _distance(observed: Result, emulated: Result) -> float:
    """The largest relative difference over every quantity and step (a NaN/Inf pattern that
    differs counts as infinitely far); 0 for identical results."""
    worst = 0.0
    for so, se in zip(observed.steps, emulated.steps, strict=False):
        for q in StepResult.QUANTITIES:
            a, b = getattr(so, q), getattr(se, q)
            if a is None or b is None:
                continue
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape:
                return math.inf
            fa, fb = np.isfinite(a), np.isfinite(b)
            if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
                return math.inf
            if fa.any():
                scale = max(float(np.abs(b[fb]).max()), 1e-300)
                worst = max(worst, float(np.abs(a[fa] - b[fb]).max()) / scale)
    return worst


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
        held, sem = candidate(case, base, flip, passed_as)
    except Exception:  # noqa: BLE001 - an invalid combination is no explanation
        return False
    return judge(held, sem, obs, passed_as, quick=True).ok


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
    # per alternative of ``explanation`` (the first few): how much of its bound the observation
    # uses under it, and how many times its bound the nearest placebo misses by
    margins: tuple[tuple[float | None, float | None], ...] = ()


def closest(case: Case, base: Semantics, obs: Observation, *,
            passed_as: MomentumWeights | None = None) -> tuple[Explanation, float | None]:
    """The single move (knob flip or reading) whose exact result lies nearest ``obs``, and by
    how many times its own bound it still misses (placebo checks aside: a lead, not an
    explanation)."""
    passed_as = passed_as or base.momentum_weights
    best: tuple[float, dict[str, Any]] | None = None
    for flip in alternatives(base, case) + readings(case):
        distance = residual(case, base, flip, obs, passed_as)
        if distance is not None and (best is None or distance < best[0]):
            best = (distance, flip)
    if best is None:
        return Explanation(), None
    ratio = miss_ratio(case, base, best[1], obs, passed_as)
    return Explanation.of([{k: (v, _declared(case, base, k)) for k, v in best[1].items()}]), ratio


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
    margins = tuple(margin(case, declared, {f.knob: f.observed for f in alt}, obs)
                    for alt in explanation.alternatives[:_MARGINS])
    return Judgement(verdict, explanation, base_verdict.ok, knobs, lead, lead_ratio, margins)


_MARGINS = 3  # alternatives whose margin a judgement reports


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
