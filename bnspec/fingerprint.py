"""``bnspec fingerprint ADAPTER``: the knob values an adapter exhibits, inferred from designed probes.

The probes and the decisions are data (:mod:`bnspec.probes`). A decision's candidates are the
product of its knobs' values (``bnspec.semantics.KNOBS``), set into the semantics inferred so far
(the declared profile at first). Decisions repeat until the inferred semantics stop changing, so a
wrong knob seen by one decision does not poison another. Each observation is judged against a
candidate by :func:`bnspec.judging.judge`, the same judging every other verdict uses.

Semantic knobs take the value whose reference the observation agrees with. Numerics knobs widen
the tolerance, so a looser setting accepts what a tighter one does: they take the tightest
consistent setting (one-pass clamped or not is then told by the signature of a negative variance).
Each inferred value names the probe that rules its alternatives out (``decided_by``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter
from bnspec.case import Case, Result
from bnspec.dtypes import unit_roundoff
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.judging import Verdict, judge
from bnspec.observe import observe
from bnspec.plan import dtypes_of
from bnspec.probes import DECISIONS, PROBES, Decision, Probe, Use
from bnspec.records import Observation
from bnspec.reference import reference
from bnspec.semantics import ALL_KNOBS, KNOBS, REPLICA_KNOBS, MomentumWeights, Semantics
from bnspec.worker import Worker

__all__ = ["DECISIONS", "NOT_PROBED", "PROBES", "Decision", "Probe", "ProbeObservation", "candidates",
           "fingerprint", "infer", "run_probes"]

NOT_PROBED = {k: v.not_probed for k, v in ALL_KNOBS.items() if v.not_probed is not None}
_DTYPE_CHECKS = ("y_dtype", "running_dtype")  # compare's checks of the reported dtypes


@dataclass
class ProbeObservation:
    """What the adapter did with one probe, in the variant (dtypes, shape) it could run."""

    case: Case
    variant: str
    result: Result | None = None
    raised: str | None = None

    @property
    def observation(self) -> Observation:
        return Observation(result=self.result, raised=self.raised)


def candidates(knob: str, declared: Semantics) -> list[Any]:
    """The declared value first, then the other values worth telling apart."""
    current = getattr(declared, knob)
    return [current, *ALL_KNOBS[knob].alternatives_of(current)]


# -- running the probes --
def _rank(adapter: Adapter) -> int:
    ranks = adapter.capabilities.ranks
    return next((r for r in (2, 4, 3, 5) if r in ranks), ranks[0])


def run_probes(adapter: Adapter, seed: int = 0, *, in_process: bool = False, names: Sequence[str] | None = None,
               ) -> tuple[dict[str, ProbeObservation], dict[str, str]]:
    """Each probe in the first variant the adapter can run; else the reasons it could not."""
    runner: Adapter | Worker = adapter if in_process else Worker(adapter)
    observed: dict[str, ProbeObservation] = {}
    skipped: dict[str, str] = {}
    rank = _rank(adapter)
    try:
        for name in names or PROBES:
            probe, reasons = PROBES[name], []
            for dt, pdt in probe.variants:
                case = probe.build(np.random.default_rng([seed, len(name), sum(map(ord, name))]), dt, pdt, rank)
                obs = observe(runner, case)
                if obs.unsupported is not None or obs.failure is not None:
                    reasons.append(f"{dt}/{pdt}: {obs.unsupported or obs.failure}")
                elif obs.raised is not None and not probe.may_raise:
                    reasons.append(f"{dt}/{pdt}: raised {obs.raised}")
                else:
                    variant = f"{dt}/{pdt}, shape {case.steps[0].x.shape}"
                    observed[name] = ProbeObservation(case, variant, obs.result, obs.raised)
                    break
            else:
                skipped[name] = "; ".join(reasons)
    finally:
        if isinstance(runner, Worker):
            runner.close()
    return observed, skipped


# -- judging --
class _Judge:
    """Verdicts of the probes' observations against candidate semantics, each judged once."""

    def __init__(self, observed: dict[str, ProbeObservation], passed_as: MomentumWeights) -> None:
        self.observed, self.passed_as = observed, passed_as
        self._verdicts: dict[tuple[str, Semantics], Verdict] = {}
        self._expected: dict[tuple[str, Semantics], Result | None] = {}

    def verdict(self, probe: str, sem: Semantics, quantities: tuple[str, ...],
                steps: tuple[int, ...] | None, exact_nonfinite: bool = False) -> tuple[bool, str]:
        """Does ``sem`` account for the quantities ``quantities`` (at ``steps``) of ``probe``?
        Else the worst mismatch among them."""
        verdict = self._judge(probe, sem)
        if verdict.comparison is None:  # an error expected or observed: nothing to pick from
            return verdict.ok, verdict.note
        if exact_nonfinite:
            where = self._nonfinite_mismatch(probe, sem, quantities, steps)
            if where:
                return False, where
        bad = [c for c in verdict.comparison.checks
               if c.quantity in quantities and (steps is None or c.step in steps) and not c.ok]
        if not bad:
            return True, ""
        worst = max(bad, key=lambda c: c.err_u / c.allowed_u if c.allowed_u else math.inf)
        return False, worst.describe()

    def _judge(self, probe: str, sem: Semantics) -> Verdict:
        key = (probe, sem)
        if key not in self._verdicts:
            obs = self.observed[probe]
            self._verdicts[key] = judge(obs.case, sem, obs.observation, self.passed_as)
        return self._verdicts[key]

    def expected(self, probe: str, sem: Semantics) -> Result | None:
        key = (probe, sem)
        if key not in self._expected:
            with np.errstate(all="ignore"):
                try:
                    self._expected[key] = reference(self.observed[probe].case, sem, passed_as=self.passed_as)
                except (SingleValueError, UnsupportedFeature):
                    self._expected[key] = None
        return self._expected[key]

    def _nonfinite_mismatch(self, probe: str, sem: Semantics, quantities: tuple[str, ...],
                            steps: tuple[int, ...] | None) -> str:
        expected, result = self.expected(probe, sem), self.observed[probe].result
        if expected is None or result is None:
            return ""
        for i, (e, o) in enumerate(zip(expected.steps, result.steps, strict=True)):
            for q in quantities:
                qe, qo = getattr(e, q), getattr(o, q)
                if (steps is None or i in steps) and qe is not None and qo is not None and (
                        np.isfinite(qe) != np.isfinite(qo)).any():
                    return (f"step {i} {q}: MISMATCH (non-finite pattern: expected "
                            f"{np.asarray(qe).tolist()}, observed {np.asarray(qo).tolist()})")
        return ""

    def same_reference(self, probe: str, a: Semantics, b: Semantics, quantities: tuple[str, ...],
                       steps: tuple[int, ...] | None) -> bool:
        """Do ``a`` and ``b`` define the same results for these quantities of ``probe``?"""
        ra, rb = self.expected(probe, a), self.expected(probe, b)
        if ra is None or rb is None:
            return ra is rb
        for i, (sa, sb) in enumerate(zip(ra.steps, rb.steps, strict=True)):
            if steps is not None and i not in steps:
                continue
            for q in quantities:
                qa, qb = getattr(sa, q), getattr(sb, q)
                if q in _DTYPE_CHECKS:
                    same = qa == qb
                else:
                    same = qa is None and qb is None or (
                        qa is not None and qb is not None and np.array_equal(qa, qb, equal_nan=True))
                if not same:
                    return False
        return True


def _looseness(sem: Semantics, cases: list[Case]) -> tuple[float, ...]:
    key: list[float] = []
    for case in cases:
        ar = dtypes_of(sem, case)
        key += [unit_roundoff(ar.compute), unit_roundoff(ar.normalize),
                float(ar.algorithm != "two_pass")]
    return tuple(key)


@dataclass
class _Outcome:
    combos: list[dict[str, Any]] = field(default_factory=list)  # consistent (or tightest) ones
    equivalent: bool = False  # every combo gives the same reference on every probe used


def _uses(decision: Decision, observed: dict[str, ProbeObservation]) -> list[Use]:
    return [u for u in decision.uses if u[0] in observed]


def consistent(decision: Decision, sem: Semantics, judge: _Judge) -> tuple[bool, str]:
    """Does every probe of ``decision`` accept ``sem``? Else the first rejection."""
    for probe, quantities, steps in _uses(decision, judge.observed):
        ok, why = judge.verdict(probe, sem, quantities, steps, decision.exact_nonfinite)
        if not ok:
            return False, f"{probe}: {why}"
    return True, ""


def _decide(decision: Decision, state: Semantics, judge: _Judge, declared: Semantics) -> _Outcome:
    uses = _uses(decision, judge.observed)
    values = [candidates(k, declared) for k in decision.knobs]
    found = []
    for combo in itertools.product(*values):
        flip = dict(zip(decision.knobs, combo, strict=True))
        try:
            sem = state.replace(**flip)
        except Exception:  # noqa: BLE001 - an invalid combination is no candidate
            continue
        if consistent(decision, sem, judge)[0]:
            found.append(flip)
    if decision.numerics and found:
        cases = [judge.observed[p].case for p, _, _ in uses]
        keys = [_looseness(state.replace(**f), cases) for f in found]
        found = [f for f, k in zip(found, keys, strict=True) if not any(
            o != k and all(a <= b for a, b in zip(o, k, strict=True)) for o in keys)]
        if decision.tie_break is not None and len(found) > 1:
            chosen = decision.tie_break({p: o.result for p, o in judge.observed.items() if o.result is not None})
            found = [f for f in found if chosen in f.values()] or found
        return _Outcome(found)
    same = len(found) > 1 and all(
        judge.same_reference(p, state.replace(**found[0]), state.replace(**f), q, st)
        for f in found[1:] for p, q, st in uses)
    return _Outcome(found, same)


def infer(observed: dict[str, ProbeObservation], declared: Semantics,
          decisions: Sequence[Decision] = DECISIONS, max_rounds: int = 5, judge: _Judge | None = None,
          ) -> tuple[Semantics, dict[Decision, _Outcome]]:
    """The semantics the observations imply, by deciding each group until nothing changes
    (``judge``: one whose verdicts the caller reuses)."""
    judge = judge or _Judge(observed, declared.momentum_weights)
    state, outcomes = declared, {}
    for _ in range(max_rounds):
        before = state
        for decision in decisions:
            if not _uses(decision, observed):
                continue
            outcome = outcomes[decision] = _decide(decision, state, judge, declared)
            if outcome.combos and not any(
                    all(getattr(state, k) == v for k, v in f.items()) for f in outcome.combos):
                state = state.replace(**outcome.combos[0])
        if state == before:
            break
    return state, outcomes


def _deciding_probe(decision: Decision, knob: str, state: Semantics, judge: _Judge,
                    declared: Semantics) -> str:
    """The first probe that rejects an alternative value of ``knob`` (the others held)."""
    uses = _uses(decision, judge.observed)
    for value in candidates(knob, declared):
        if value == getattr(state, knob):
            continue
        for probe, quantities, steps in uses:
            if not judge.verdict(probe, state.replace(**{knob: value}), quantities, steps,
                                 decision.exact_nonfinite)[0]:
                return probe
    return uses[0][0] if uses else ""


def _row(name: str, declared: Semantics, state: Semantics, decision: Decision, outcome: _Outcome,
         judge: _Judge) -> dict[str, Any]:
    current = getattr(declared, name)
    row: dict[str, Any] = {"declared": current}
    seen = list(dict.fromkeys(f[name] for f in outcome.combos))
    # Numerics knobs are judged as the declared setting of the whole group (they trade off:
    # a mean rounded by the reduction or by the normalization looks the same).
    back = {k: getattr(declared, k) for k in decision.knobs} if decision.numerics else {name: current}
    declared_ok, why = consistent(decision, state.replace(**back), judge)
    probes = ", ".join(p for p, _, _ in _uses(decision, judge.observed))
    if not seen:
        row.update(observed="none of " + ", ".join(map(repr, candidates(name, declared))),
                   agrees=False, status="inconsistent", decided_by=probes)
    elif len(seen) == 1 or outcome.equivalent:
        value = current if current in seen else seen[0]
        row.update(observed=repr(value), agrees=value == current, status="decided",
                   decided_by=_deciding_probe(decision, name, state, judge, declared))
        if len(seen) > 1:
            row["status"] = "equivalent"
            row["same_results_as"] = [repr(v) for v in seen if v != value]
    else:
        row.update(observed="undetermined: " + " | ".join(map(repr, seen)),
                   agrees=current in seen, status="undetermined", decided_by=probes)
    if decision.numerics and not row["agrees"] and declared_ok:
        # A numerics setting widens the tolerance: an implementation more precise than its
        # declared numerics conforms to them.
        row.update(agrees=True, note="more precise than declared; the declared setting also "
                   "accepts every probe")
    if not declared_ok:
        row["evidence"] = why
    return row


def fingerprint(adapter: Adapter, seed: int = 0, *, in_process: bool = False) -> dict[str, Any]:
    """Run the probes through ``adapter`` (in its worker process unless ``in_process``) and
    infer every probed knob; the dict is what ``bnspec fingerprint --json`` prints."""
    profile = adapter.declared_profile()
    declared = profile.semantics
    observed, skipped = run_probes(adapter, seed, in_process=in_process)
    judge = _Judge(observed, declared.momentum_weights)
    state, outcomes = infer(observed, declared, judge=judge)
    knobs: dict[str, Any] = {}
    # the replica knobs for an adapter that runs replicas (the probes of one device decide nothing
    # there: it runs no case without replicas)
    for name in [*KNOBS, *(REPLICA_KNOBS if adapter.capabilities.replicas else ())]:
        decision = next((d for d in DECISIONS if name in d.knobs), None)
        if decision is None and name not in NOT_PROBED:
            knobs[name] = {"declared": getattr(declared, name), "agrees": True, "decided_by": "",
                           "observed": "not probed (no probe is designed for this knob yet)",
                           "status": "not probed"}
            continue
        if decision is None or decision not in outcomes:
            reason = NOT_PROBED.get(name) if decision is None else "; ".join(
                f"{p}: {skipped.get(p, 'not run')}" for p, _, _ in (decision.uses if decision else ()))
            knobs[name] = {"declared": getattr(declared, name), "observed": f"not probed ({reason})",
                           "agrees": True, "decided_by": "", "status": "not probed"}
            continue
        knobs[name] = _row(name, declared, state, decision, outcomes[decision], judge)
    return {
        "adapter": adapter.name,
        "declared_profile": profile.name,
        "probes_run": len(observed),
        "probes": {p: observed[p].variant if p in observed else f"not run: {skipped.get(p, '')}"
                   for p in PROBES},
        "knobs": knobs,
    }
