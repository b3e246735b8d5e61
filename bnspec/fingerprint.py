"""``bnspec fingerprint ADAPTER``: the knob values an adapter exhibits, inferred from designed probes.

Each probe is one small case built so that the candidate values of a few knobs give results that
differ by orders of magnitude more than the tolerance model allows (``tests/test_fingerprint.py``
checks that separation on the reference). A *decision* names the knobs it settles jointly, the
probes and the quantities it reads; its candidates are the product of those knobs' values, set
into the semantics inferred so far (the declared profile at first). Decisions repeat until the
inferred semantics stop changing, so a wrong knob seen by one decision does not poison another.

Semantic knobs take the value whose reference the observation agrees with. Numerics knobs widen
the tolerance, so a looser setting accepts what a tighter one does: they take the tightest
consistent setting (one-pass clamped or not is then told by the signature of a negative variance).
Each inferred value names the probe that rules its alternatives out (``decided_by``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter
from bnspec.case import Case, Result, make_case
from bnspec.dtypes import unit_roundoff
from bnspec.errors import AdapterFailure, FrameworkError, SingleValueError, UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.reference import arithmetic_of, reference
from bnspec.semantics import KNOBS, Semantics
from bnspec.tolerance import Check, compare

# eps 2^-10, 2^-20 and momentum 1/8 are exact in float32, so ONNX's float32 attributes carry
# them in a float64 graph and 1 - m is exact for the frameworks that weight the running value.
_EPS = 2.0**-10
_MOMENTUM = 0.125

NOT_PROBED = {k: v.not_probed for k, v in KNOBS.items() if v.not_probed is not None}
_RUNNING = ("running_mean", "running_var")
_DTYPE_CHECKS = ("y_dtype", "running_dtype")  # compare's checks of the reported dtypes


@dataclass(frozen=True)
class Probe:
    name: str
    doc: str
    build: Callable[[np.random.Generator, str, str, int], Case]  # rng, dtype, param dtype, rank
    variants: tuple[tuple[str, str], ...] = (("float64", "float64"), ("float32", "float32"))
    may_raise: bool = False  # the framework raising is itself the observation


@dataclass(frozen=True)
class Decision:
    knobs: tuple[str, ...]
    uses: tuple[tuple[str, tuple[str, ...], tuple[int, ...] | None], ...]  # probe, quantities, steps
    numerics: bool = False  # the tightest consistent setting wins
    # Non-finite values must match in place: the tolerance model treats a bound that is itself
    # NaN (an expected NaN running variance) as unconstrained, which would accept any value.
    exact_nonfinite: bool = False
    tie_break: Callable[[dict[str, Observation]], Any] | None = None


@dataclass
class Observation:
    case: Case
    variant: str
    result: Result | None = None
    raised: str | None = None


# -- the probes: data with a known batch mean and biased variance per channel --
def _batch(rng: np.random.Generator, n: int, c: int, loc: float, spread: float) -> np.ndarray:
    """n values per channel with mean ~loc*(1 + k/8) and biased std ~spread*(1 + k/4)."""
    z = rng.normal(0.0, 1.0, (n, c))
    if n > 1:
        z = (z - z.mean(axis=0)) / z.std(axis=0)
    else:
        z[:] = 0.0
    k = np.arange(c)
    return (loc * (1 + k / 8) + 0.25 * rng.normal(0, 1, c) * (n == 1)) + z * spread * (1 + k / 4)


def _ranked(x: np.ndarray, rank: int) -> np.ndarray:
    return x.reshape(x.shape + (1,) * (rank - 2))


def _case(xs: Sequence[np.ndarray], rank: int, dtype: str, param_dtype: str, label: str,
          **kw: Any) -> Case:
    kw.setdefault("eps", _EPS)
    kw.setdefault("momentum", _MOMENTUM)
    return make_case([_ranked(x, rank) for x in xs], dtype=dtype, param_dtype=param_dtype,
                     label=label, **kw)


def _ema_trajectory(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 2, 4, 5.0, 1.0), _batch(rng, 2, 4, -3.0, 2.0), _batch(rng, 2, 4, 0.5, 1.0)]
    return _case(xs, rank, dt, pdt, "ema_trajectory", modes=["train", "train", "eval"],
                 running_mean=np.array([1.0, -1.0, 0.5, 2.0]),
                 running_var=np.array([2.0, 0.5, 1.0, 3.0]))


def _eps_placement(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # Running statistics near the batch's, so the gap shows whichever statistics normalize.
    return _case([_batch(rng, 8, 4, 1.0, 0.1)], rank, dt, pdt, "eps_placement", eps=0.5,
                 running_mean=np.ones(4), running_var=np.full(4, 0.01))


def _normalize_var(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 2, 4, 2.0, 1.0)], rank, dt, pdt, "normalize_var")


def _eps_floor(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 0.0, 3e-3)], rank, dt, pdt, "eps_floor", eps=2.0**-20,
                 running_var=np.full(4, 1e-5))


def _train_stats(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 8, 4, 4.0, 2.0), _batch(rng, 8, 4, -2.0, 0.5)]
    return _case(xs, rank, dt, pdt, "train_stats", modes=["train", "train"])


def _frozen(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 8, 4, 3.0, 2.0), _batch(rng, 8, 4, -1.0, 0.5), _batch(rng, 8, 4, 0.0, 1.0)]
    return _case(xs, rank, dt, pdt, "frozen", modes=["train", "train", "eval"],
                 frozen=[False, True, False])


def _single_value(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 1, 4, 1.0, 0.0), _batch(rng, 1, 4, 0.0, 0.0)]
    return _case(xs, rank, dt, pdt, "single_value", modes=["train", "eval"],
                 running_var=np.full(4, 2.0))


def _large_offset(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # mean/std 1e4 in float32 (1e8 in float64): E[x^2] - E[x]^2 loses every digit, and over 32
    # channels about half come out negative unless clamped.
    offset = 1e4 if dt == "float32" else 1e8
    x = offset + rng.normal(0.0, 1.0, (8, 32))
    return _case([x, offset + rng.normal(0.0, 1.0, (8, 32))], rank, dt, pdt, "large_offset",
                 modes=["train", "eval"], running_mean=np.full(32, offset))


def _half_precision(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # Values on the input dtype's grid near 64 (a float16 sum of their squares stays finite)
    # whose exact batch mean sits 3/8 of a grid step off it: a mean rounded to the input dtype
    # is off by ~0.1 std, while reductions and normalization in float32 are exact to 1e-7.
    loc, grid = 64.0, (2.0**-4 if dt == "float16" else 0.5)
    x = loc + np.round(_batch(rng, 8, 4, 0.0, 4 * grid) / grid) * grid
    residual = (x.sum(axis=0) / 8 - 3 * grid / 8) % grid
    x[-1] -= residual * 8  # a multiple of grid/8 times 8: stays on the grid
    return _case([x], rank, dt, pdt, "half_precision", momentum=0.5,
                 running_mean=np.full(4, loc), running_var=np.full(4, 4.0))


def _float64_compute(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 10.0, 1.0), _batch(rng, 8, 4, 10.0, 1.0)], rank, dt, pdt,
                 "float64_compute", modes=["train", "eval"])


def _mixed_params(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 1.0, 1.0), _batch(rng, 8, 4, 1.0, 1.0)], rank, dt, pdt,
                 "mixed_params", modes=["train", "eval"])


_HALF = (("float16", "float32"), ("float16", "float16"), ("bfloat16", "float32"),
         ("bfloat16", "bfloat16"))
PROBES: dict[str, Probe] = {p.name: p for p in [
    Probe("ema_trajectory", "two training steps on batches of 2 from loaded running statistics, "
          "then eval: whether they update, momentum convention, first update, debias, "
          "running-variance estimator "
          "(n/(n-1) = 2), eval statistics", _ema_trajectory),
    Probe("eps_placement", "eps 0.5 on a variance of 0.01: sqrt(v+eps) 0.71 vs sqrt(v)+eps 0.6",
          _eps_placement),
    Probe("normalize_var", "one training step on batches of 2: the unbiased variance is twice "
          "the biased one", _normalize_var),
    Probe("eps_floor", "eps 2^-20 on a variance near 1e-5: a 1.001e-5 floor doubles v+eps",
          _eps_floor),
    Probe("train_stats", "two training steps with different batches: the second is normalized "
          "by its own statistics or by the blended running ones", _train_stats),
    Probe("frozen", "train, frozen train, eval: what a frozen layer normalizes with",
          _frozen),
    Probe("single_value", "one value per channel in training: error or a defined result",
          _single_value, may_raise=True),
    Probe("large_offset", "mean/std 1e4 in float32 over 32 channels: two-pass exact, one-pass "
          "cancels (negative variances unless clamped)", _large_offset,
          variants=(("float32", "float32"), ("float64", "float64"))),
    Probe("half_precision", "float16 batch whose mean is off the float16 grid: reductions and "
          "normalization in float16 or float32", _half_precision, variants=_HALF),
    Probe("float64_compute", "float64 batch: reductions in float64 or in float32",
          _float64_compute, variants=(("float64", "float64"),)),
    Probe("mixed_params", "input and parameters in different dtypes: output and state dtypes",
          _mixed_params, variants=(("float32", "float64"), ("float16", "float64"),
                                   ("bfloat16", "float64"), *_HALF)),
]}


def _negative_variance(obs: dict[str, Observation]) -> str:
    """one_pass if a batch variance came out negative (NaN output, negative running variance)."""
    o = obs.get("large_offset")
    if o is None or o.result is None:
        return "one_pass_clamped"
    for s in o.result.steps:
        if np.isnan(s.y).any() or any(v is not None and bool((v < 0).any())
                                      for v in (s.running_var, s.batch_var)):
            return "one_pass"
    return "one_pass_clamped"


_Y = ("y",)
_DTYPE_PROBES = ("mixed_params", "half_precision", "float64_compute")
DECISIONS: tuple[Decision, ...] = (
    Decision(("running_update", "momentum_weights", "first_update", "ema_debias",
              "running_var_update"),
             (("ema_trajectory", _RUNNING, None),)),
    Decision(("train_stats", "normalize_var", "eps_placement", "eps_floor"),
             (("eps_placement", _Y, None), ("normalize_var", _Y, None), ("eps_floor", _Y, None),
              ("train_stats", _Y, None))),
    Decision(("eval_stats",), (("ema_trajectory", _Y, (2,)),)),
    Decision(("frozen_train_stats",), (("frozen", _Y + _RUNNING, (1,)),)),
    Decision(("single_value",), (("single_value", _Y + _RUNNING, None),), exact_nonfinite=True),
    Decision(("variance_algorithm",), (("large_offset", _Y + _RUNNING + ("batch_var",), (0,)),),
             numerics=True, tie_break=_negative_variance),
    Decision(("compute_dtype", "normalize_dtype"),
             (("half_precision", _Y + _RUNNING, None),
              ("float64_compute", _Y + _RUNNING, None)), numerics=True),
    Decision(("output_dtype",), tuple((p, ("y_dtype",), None) for p in _DTYPE_PROBES)),
    Decision(("state_dtype",), tuple((p, ("running_dtype",), None) for p in _DTYPE_PROBES)),
)


def candidates(knob: str, declared: Semantics) -> list[Any]:
    """The declared value first, then the other values worth telling apart."""
    current = getattr(declared, knob)
    return [current, *KNOBS[knob].alternatives_of(current)]


# -- running the probes --
class _Runner:
    def __init__(self, adapter: Adapter, in_process: bool) -> None:
        self.adapter, self.in_process = adapter, in_process
        self.worker: Any = None
        self.ready = False

    def run(self, case: Case) -> Result:
        if not self.in_process:
            from bnspec.worker import Worker

            if self.worker is None:
                self.worker = Worker(self.adapter)
            return self.worker.run(case)
        if not self.ready:
            self.adapter.setup()
            self.ready = True
        try:
            with np.errstate(all="ignore"):  # NaN from a negative variance is an observation
                return self.adapter.run(case)
        except (UnsupportedFeature, SingleValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - the framework's own error is data
            raise FrameworkError(type(exc).__name__, str(exc)) from exc

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _rank(adapter: Adapter) -> int:
    ranks = adapter.capabilities.ranks
    return next((r for r in (2, 4, 3, 5) if r in ranks), ranks[0])


def run_probes(adapter: Adapter, seed: int = 0, *, in_process: bool = False,
               names: Sequence[str] | None = None) -> tuple[dict[str, Observation], dict[str, str]]:
    """Each probe in the first variant the adapter can run; else the reasons it could not."""
    runner = _Runner(adapter, in_process)
    observed: dict[str, Observation] = {}
    skipped: dict[str, str] = {}
    rank = _rank(adapter)
    try:
        for name in names or PROBES:
            probe, reasons = PROBES[name], []
            for dt, pdt in probe.variants:
                case = probe.build(np.random.default_rng([seed, len(name), sum(map(ord, name))]),
                                   dt, pdt, rank)
                variant = f"{dt}/{pdt}, shape {case.steps[0].x.shape}"
                try:
                    adapter.check_supported(case)
                    observed[name] = Observation(case, variant, result=runner.run(case))
                except UnsupportedFeature as exc:
                    reasons.append(f"{dt}/{pdt}: {exc}")
                    continue
                except (FrameworkError, SingleValueError) as exc:
                    if not probe.may_raise:
                        reasons.append(f"{dt}/{pdt}: raised {exc}")
                        continue
                    observed[name] = Observation(case, variant, raised=str(exc))
                except AdapterFailure as exc:
                    reasons.append(f"{dt}/{pdt}: {exc}")
                    continue
                break
            else:
                skipped[name] = "; ".join(reasons)
    finally:
        runner.close()
    return observed, skipped


# -- judging --
class _Judge:
    def __init__(self, observed: dict[str, Observation], passed_as: str) -> None:
        self.observed, self.passed_as = observed, passed_as
        self._cache: dict[tuple[str, Semantics], tuple[bool, list[Check], str]] = {}
        self._expected: dict[tuple[str, Semantics], Result | None] = {}

    def verdict(self, probe: str, sem: Semantics, quantities: tuple[str, ...],
                steps: tuple[int, ...] | None, exact_nonfinite: bool = False) -> tuple[bool, str]:
        ok, checks, note = self._judge(probe, sem)
        if note:
            return ok, note
        if exact_nonfinite:
            where = self._nonfinite_mismatch(probe, sem, quantities, steps)
            if where:
                return False, where
        picked = [c for c in checks if (c.quantity in quantities
                                        and (steps is None or c.step in steps))]
        bad = [c for c in picked if not c.ok]
        if not bad:
            return True, ""
        worst = max(bad, key=lambda c: c.err_u / c.allowed_u if c.allowed_u else math.inf)
        return False, worst.describe()

    def expected(self, probe: str, sem: Semantics) -> Result | None:
        key = (probe, sem)
        if key not in self._expected:
            with np.errstate(all="ignore"):
                try:
                    self._expected[key] = reference(self.observed[probe].case, sem,
                                                    passed_as=self.passed_as)  # type: ignore[arg-type]
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

    def _judge(self, probe: str, sem: Semantics) -> tuple[bool, list[Check], str]:
        key = (probe, sem)
        if key not in self._cache:
            self._cache[key] = self._compute(self.observed[probe], sem)
        return self._cache[key]

    def _compute(self, obs: Observation, sem: Semantics) -> tuple[bool, list[Check], str]:
        with np.errstate(all="ignore"):
            try:
                expected = reference(obs.case, sem, passed_as=self.passed_as)  # type: ignore[arg-type]
            except SingleValueError as exc:
                if obs.raised is not None:
                    return True, [], f"raised as expected ({obs.raised})"
                return False, [], f"expected an error ({exc}); a result came back"
            except UnsupportedFeature as exc:
                return False, [], f"the semantics cannot express the case: {exc}"
            if obs.raised is not None:
                return False, [], f"raised {obs.raised}; the semantics define a result"
            assert obs.result is not None
            return True, compare(obs.case, sem, obs.result, expected).checks, ""


def _looseness(sem: Semantics, cases: list[Case]) -> tuple[float, ...]:
    key: list[float] = []
    for case in cases:
        ar = arithmetic_of(sem, case)
        key += [unit_roundoff(ar.compute), unit_roundoff(ar.normalize),
                float(ar.algorithm != "two_pass")]
    return tuple(key)


@dataclass
class _Outcome:
    combos: list[dict[str, Any]] = field(default_factory=list)  # consistent (or tightest) ones
    equivalent: bool = False  # every combo gives the same reference on every probe used


def _uses(decision: Decision, observed: dict[str, Observation]) -> list[tuple[str, tuple[str, ...],
                                                                          tuple[int, ...] | None]]:
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
            chosen = decision.tie_break(judge.observed)
            found = [f for f in found if chosen in f.values()] or found
        return _Outcome(found)
    same = len(found) > 1 and all(
        judge.same_reference(p, state.replace(**found[0]), state.replace(**f), q, st)
        for f in found[1:] for p, q, st in uses)
    return _Outcome(found, same)


def infer(observed: dict[str, Observation], declared: Semantics,
          decisions: Sequence[Decision] = DECISIONS, max_rounds: int = 5,
          ) -> tuple[Semantics, dict[Decision, _Outcome]]:
    """The semantics the observations imply, by deciding each group until nothing changes."""
    judge = _Judge(observed, declared.momentum_weights)
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
    declared = get_semantics(adapter.profile)
    observed, skipped = run_probes(adapter, seed, in_process=in_process)
    state, outcomes = infer(observed, declared)
    judge = _Judge(observed, declared.momentum_weights)
    knobs: dict[str, Any] = {}
    for name in KNOBS:
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
        "declared_profile": adapter.profile,
        "probes_run": len(observed),
        "probes": {p: observed[p].variant if p in observed else f"not run: {skipped.get(p, '')}"
                   for p in PROBES},
        "knobs": knobs,
    }
