"""The tolerance model: how far an implementation may be from the exact semantics.

Every bound is (unit roundoff of the dtype a profile's numerics knobs say the work is done in)
× (the case's conditioning) × (a per-quantity constant K, below). Nothing is a bare ``atol``.

Per channel, with mean mu, biased variance v, mean|x| = a, n values, g = 1 + log2(n) (the growth
of a tree/blocked reduction):

- batch mean:       B_mu = u_c g a
- batch variance:   two_pass  B_v = u_c g v + B_mu^2
                    one_pass  B_v = u_c g (v + mu^2)        conditioning 1 + mu^2/v
- running stats:    B_t = (1-w) B_{t-1} + w B_batch + u_s (2 |r_t| + |b_t - r_{t-1}|)
                    (the blend's rounding, and the rounding of the weight a framework derives
                    as 1 - m in its state dtype: absolute, at most u_s + eta_s; none for w = 0
                    or 1),
                    divided by the debias factor where debiased
- output y = gamma (x - mu) r + beta with r = 1/sqrt(v + eps):
                    B_y = |gamma| r (B_mu + u_n |mu|) + |gamma xhat| (|r'/r| B'_v + 2 u_n)
                          + u_n |beta| + u_o |y|
  (u_n: the precision the normalisation runs in; u_o: the output dtype's; B'_v = B_v + u_c eps:
  eps is added in the compute dtype; folded: + u_n |gamma| r (|x| + 2 |mu|))
- gradients, with the statistics as they are used (rounded into the normalize dtype):
  B'_mu = B_mu + u_n |mu| and e_r = |r'/r| B'_v + u_n,
                    B_dx = u_c g |gamma| r (|dy| + mean|dy| + |xhat| mean|dy xhat|) + u_in |dx|
                           + (|dx| + 2 |gamma| r |xhat| mean|dy xhat|) e_r
                           + |gamma| r^2 B'_mu (mean|dy xhat| + |xhat| mean|dy| + mean|dy|)
                    B_dgamma = u_c g sum|dy xhat| + sum|dy| r B'_mu + sum|dy xhat| e_r + u_p |dgamma|
                    B_dbeta = u_c g sum|dy| + u_p sum|dy|

Each rounding that may underflow adds, besides u relative, at most the smallest subnormal eta
of its dtype absolutely (gradual underflow; Higham 2.1): the bounds carry eta terms for the
division of the mean, the squares, eps and the variance added in the compute dtype (eps below
its range is 0 there), the products of the normalisation (eta_n, times |x - mean| for r and
gamma r), the state's blend, the gradients' sums (times r and r^2 |x - mean| where they come
back) and every final rounding (eta_o, eta_in, eta_p).

Ranges, where the standard model's "no overflow" does not hold (bnspec.bounds):

- the result of a quantity is the exact value rounded into the dtype it is returned in: from
  that dtype's overflow threshold (max + ulp(max)/2) on it is ±inf (IEEE 754), and an observed
  ±inf of the exact value's sign conforms where the exact value, within its bound, reaches it;
- where an intermediate that the profile's numerics put in a dtype may overflow that dtype in
  some order of operations (a sum or sum of squares of the batch, the state blended, 1/sqrt(var
  + eps), x - mean and the products of the normalisation), IEEE arithmetic gives ±inf, NaN, or
  (an infinite variance, r = 0) y = beta in one implementation and the exact value in another
  (a running average does not overflow where a sum does): there any of those conforms;
- where the exact reference's own float64 arithmetic may overflow, or divides by zero (eps = 0
  on a constant channel: 1/0), nothing is defined: the quantity is unconstrained.

Errors are reported in units of u relative to the quantity's own scale, or of eta below it
(``err_u``), beside the allowed value in the same units (``allowed_u``), so "3 u" and "40,000 u"
read differently. Other non-finite expectations (NaN, ±Inf from NaN or Inf inputs, which
propagate as IEEE says) must be matched exactly in kind and sign.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnspec.bounds import Bound, Bounds, K, overflow_threshold, underflow
from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import unit_roundoff
from bnspec.plan import make_plan
from bnspec.reference import reference
from bnspec.semantics import MomentumWeights, Semantics


@dataclass
class Check:
    step: int
    quantity: str
    ok: bool
    err_u: float  # max error in units of the roundoff, relative to the quantity's scale
    allowed_u: float  # the bound at the worst element, same units
    unit: str  # the dtype whose roundoff is the unit
    index: list[int] = field(default_factory=list)  # the worst element
    expected: float | str | None = None
    observed: float | str | None = None
    note: str = ""

    def describe(self) -> str:
        status = "ok" if self.ok else "MISMATCH"
        where = f"step {self.step} {self.quantity}"
        if self.note:
            return f"{where}: {status} ({self.note})"
        return (
            f"{where}: {status} err={_fmt(self.err_u)} u({self.unit}) allowed={_fmt(self.allowed_u)} u "
            f"at {self.index}: expected {self.expected}, observed {self.observed}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("err_u", "allowed_u"):
            d[k] = d[k] if math.isfinite(d[k]) else repr(d[k])
        return d


@dataclass
class Comparison:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def worst(self) -> Check | None:
        bad = self.mismatches or self.checks
        return max(bad, key=lambda c: (not c.ok, _ratio(c)), default=None)

    def describe(self) -> str:
        lines = [c.describe() for c in (self.mismatches or self.checks)]
        return "\n".join(lines) if lines else "nothing to compare"


def _ratio(c: Check) -> float:
    return c.err_u / c.allowed_u if c.allowed_u > 0 else (0.0 if c.err_u == 0 else math.inf)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return repr(v)
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def compare(
    case: Case, semantics: Semantics, observed: Result, expected: Result | None = None,
    *, stop_at_mismatch: bool = False, passed_as: MomentumWeights | None = None,
) -> Comparison:
    """Check ``observed`` against the exact semantics under the tolerance the profile's numerics
    knobs imply. ``expected`` defaults to ``reference(case, semantics, passed_as=passed_as)``
    (``passed_as``: the momentum convention the case was passed in, as for the reference). With
    ``stop_at_mismatch`` the comparison ends at the first mismatch (for callers that only need
    to know whether it agrees: attribution tries many profiles)."""
    expected = expected if expected is not None else reference(case, semantics, passed_as=passed_as)
    bounds = Bounds(case, make_plan(case, semantics, passed_as=passed_as), expected)
    checks: list[Check] = []
    if len(observed.steps) != len(expected.steps):
        return Comparison(
            [Check(0, "steps", False, math.inf, 0.0, case.dtype,
                   note=f"{len(observed.steps)} step results for {len(expected.steps)} steps")]
        )
    for i, (exp, obs) in enumerate(zip(expected.steps, observed.steps, strict=True)):
        for q in (*StepResult.QUANTITIES, *StepResult.REPLICA_QUANTITIES):
            e, o = getattr(exp, q), getattr(obs, q)
            if e is None or o is None:
                continue
            checks.append(_check(i, q, np.asarray(e), np.asarray(o, dtype=np.float64), bounds.get(i, q, e)))
            if stop_at_mismatch and not checks[-1].ok:
                return Comparison(checks)
        if obs.y_dtype is not None and exp.y_dtype is not None and obs.y_dtype != exp.y_dtype:
            checks.append(Check(i, "y_dtype", False, math.inf, 0.0, "-", expected=exp.y_dtype,
                                observed=obs.y_dtype, note=f"output dtype {obs.y_dtype}, expected {exp.y_dtype}"))
        if (obs.running_dtype is not None and exp.running_dtype is not None
                and obs.running_mean is not None and obs.running_dtype != exp.running_dtype):
            checks.append(Check(i, "running_dtype", False, math.inf, 0.0, "-", expected=exp.running_dtype,
                                observed=obs.running_dtype,
                                note=f"running statistics in {obs.running_dtype}, expected {exp.running_dtype}"))
    return Comparison(checks)


def _check(step: int, q: str, expected: np.ndarray, observed: np.ndarray, bound: Bound) -> Check:
    u = unit_roundoff(bound.unit)
    if expected.shape != observed.shape:
        return Check(step, q, False, math.inf, 0.0, bound.unit,
                     note=f"shape {observed.shape}, expected {expected.shape}")
    e_fin, o_fin = np.isfinite(expected), np.isfinite(observed)
    absolute = np.asarray(bound.absolute, dtype=np.float64)
    allowed = K[q] * np.where(np.isnan(absolute), np.inf, absolute)
    # +inf marks an element the model deliberately leaves free (the exact reference's own float64
    # arithmetic may overflow there; the output where the one-pass variance error reaches the
    # variance): any value, NaN included. A NaN bound only means NaN inputs reached it, and an
    # expected NaN must still be matched in kind.
    unconstrained = np.broadcast_to(absolute == np.inf, expected.shape)
    kind_bad = np.zeros(expected.shape, bool)
    if not (e_fin.all() and o_fin.all()):
        # Where an intermediate of the profile's arithmetic may overflow its dtype in some order
        # of operations, an observed NaN or +-inf conforms as well as the exact value does.
        nonfinite_ok = np.broadcast_to(np.asarray(bound.nonfinite, bool), expected.shape) & ~o_fin
        # The exact value rounded into the dtype the quantity is returned in is +-inf from the
        # overflow threshold on (IEEE 754, round to nearest): an observed +-inf of the expected
        # sign conforms where the exact value, within its bound, reaches it.
        with np.errstate(invalid="ignore", over="ignore"):
            overflows = (e_fin & np.isinf(observed) & (np.sign(observed) == np.sign(expected))
                         & (np.abs(expected) + allowed >= overflow_threshold(bound.dtype or bound.unit)))
        excused = unconstrained | nonfinite_ok | overflows
        kind_bad = ~excused & ((e_fin != o_fin) | (~e_fin & ~o_fin & ~(
            (np.isnan(expected) & np.isnan(observed)) | (expected == observed))))
    if kind_bad.any():
        idx = np.unravel_index(int(np.argmax(kind_bad)), expected.shape)
        return Check(step, q, False, math.inf, 0.0, bound.unit, [int(i) for i in idx],
                     _num(expected[idx]), _num(observed[idx]), note=(
                         f"non-finite mismatch in {int(kind_bad.sum())} element(s) at {list(map(int, idx))}: "
                         f"expected {_num(expected[idx])}, observed {_num(observed[idx])}"))
    compared = e_fin & o_fin & ~unconstrained
    if not compared.any():
        return Check(step, q, True, 0.0, 0.0, bound.unit)
    err = np.where(compared, np.abs(observed - expected), 0.0)
    if bound.alt is not None:  # the other value that conforms there (y = beta where r may be 0)
        with np.errstate(invalid="ignore"):
            near_alt = compared & (np.abs(observed - bound.alt) <= allowed + K[q] * u * np.abs(bound.alt))
        err = np.where(near_alt, 0.0, err)
    scale = np.where(np.isfinite(bound.scale) & (bound.scale > 0), bound.scale, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, 0.0))
    ratio = np.where(compared, np.nan_to_num(ratio, nan=math.inf), 0.0)
    idx = np.unravel_index(int(np.argmax(ratio)), expected.shape)
    # one unit: u relative to the quantity's scale, or the dtype's smallest subnormal below it
    tiny = underflow(bound.unit)
    unit = np.where(np.isfinite(scale), np.maximum(scale * u, tiny), np.inf)
    su = float(unit[idx])
    err_u = float(err[idx] / su) if math.isfinite(su) else float(err[idx] > 0) * math.inf
    allowed_u = float(allowed[idx] / su) if math.isfinite(su) else 0.0
    ok = bool((err <= allowed).all())
    if ok:  # report the largest error even when every element passes
        err_units = np.where(compared & np.isfinite(unit), err / unit, 0.0)
        j = np.unravel_index(int(np.argmax(err_units)), expected.shape)
        err_u = float(err_units[j])
        allowed_u = float(allowed[j] / unit[j]) if math.isfinite(unit[j]) else 0.0
        idx = j
    return Check(step, q, ok, err_u, allowed_u, bound.unit, [int(i) for i in idx],
                 _num(expected[idx]), _num(observed[idx]))


def _num(v: Any) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else repr(v)


