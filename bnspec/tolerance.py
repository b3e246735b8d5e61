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
                    as 1 - m in its state dtype: absolute, at most u_s; none for w = 0 or 1),
                    divided by the debias factor where debiased
- output y = gamma (x - mu) r + beta with r = 1/sqrt(v + eps):
                    B_y = |gamma| r (B_mu + u_n |mu|) + |gamma xhat| (|r'/r| B_v + 2 u_n)
                          + u_n |beta| + u_o |y|
  (u_n: the precision the normalisation runs in; u_o: the output dtype's)
- gradients:        B_dx = u_c g |gamma| r (|dy| + mean|dy| + |xhat| mean|dy xhat|) + u_in |dx|
                           + |dx| |r'/r| B_v + |gamma| r^2 B_mu mean|dy|
                    B_dgamma = u_c g sum|dy xhat| + sum|dy| r B_mu + sum|dy xhat| |r'/r| B_v
                    B_dbeta = u_c g sum|dy|

Errors are reported in units of u relative to the quantity's own scale (``err_u``), beside the
allowed value in the same units (``allowed_u``), so "3 u" and "40,000 u" read differently.
Non-finite expectations (NaN, ±Inf) must be matched exactly in kind and sign.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import unit_roundoff
from bnspec.reference import _batch_weight, arithmetic_of, reference
from bnspec.semantics import Semantics

# The constants K, one per quantity. Measured on implementations that conform (the adapter
# tests over every framework) and kept at a small multiple of the largest error seen there;
# benchmarks/RESULTS.md records the measured maxima.
K: dict[str, float] = {
    "batch_mean": 4.0,
    "batch_var": 8.0,
    "running_mean": 8.0,
    "running_var": 8.0,
    "y": 8.0,
    "dx": 8.0,
    "dgamma": 8.0,
    "dbeta": 8.0,
}


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
    *, stop_at_mismatch: bool = False,
) -> Comparison:
    """Check ``observed`` against the exact semantics under the tolerance the profile's numerics
    knobs imply. ``expected`` defaults to ``reference(case, semantics)``. With
    ``stop_at_mismatch`` the comparison ends at the first mismatch (for callers that only need
    to know whether it agrees: attribution tries many profiles)."""
    expected = expected if expected is not None else reference(case, semantics)
    bounds = _Bounds(case, semantics, expected)
    checks: list[Check] = []
    if len(observed.steps) != len(expected.steps):
        return Comparison(
            [Check(0, "steps", False, math.inf, 0.0, case.dtype,
                   note=f"{len(observed.steps)} step results for {len(expected.steps)} steps")]
        )
    for i, (exp, obs) in enumerate(zip(expected.steps, observed.steps, strict=True)):
        for q in StepResult.QUANTITIES:
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


@dataclass
class _Bound:
    absolute: np.ndarray  # allowed |observed - expected| elementwise, before K
    scale: np.ndarray  # the quantity's magnitude for reporting in units
    unit: str


def _check(step: int, q: str, expected: np.ndarray, observed: np.ndarray, bound: _Bound) -> Check:
    u = unit_roundoff(bound.unit)
    if expected.shape != observed.shape:
        return Check(step, q, False, math.inf, 0.0, bound.unit,
                     note=f"shape {observed.shape}, expected {expected.shape}")
    e_fin, o_fin = np.isfinite(expected), np.isfinite(observed)
    # +inf marks an element the model deliberately leaves free (the output where the one-pass
    # variance error reaches the variance); a NaN bound only means NaN inputs reached it, and an
    # expected NaN must still be matched in kind.
    unconstrained = np.broadcast_to(np.isposinf(bound.absolute), expected.shape)
    kind_bad = ~unconstrained & (e_fin != o_fin) | (~e_fin & ~o_fin & ~(
        (np.isnan(expected) & np.isnan(observed)) | (expected == observed)))
    if kind_bad.any():
        idx = np.unravel_index(int(np.argmax(kind_bad)), expected.shape)
        return Check(step, q, False, math.inf, 0.0, bound.unit, [int(i) for i in idx],
                     _num(expected[idx]), _num(observed[idx]), note=(
                         f"non-finite mismatch in {int(kind_bad.sum())} element(s) at {list(map(int, idx))}: "
                         f"expected {_num(expected[idx])}, observed {_num(observed[idx])}"))
    if not e_fin.any():
        return Check(step, q, True, 0.0, 0.0, bound.unit)
    err = np.where(e_fin & o_fin, np.abs(observed - expected), 0.0)
    allowed = K[q] * np.nan_to_num(bound.absolute, nan=np.inf, posinf=np.inf)
    scale = np.where(np.isfinite(bound.scale) & (bound.scale > 0), bound.scale, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, 0.0))
    ratio = np.where(e_fin, np.nan_to_num(ratio, nan=math.inf), 0.0)
    idx = np.unravel_index(int(np.argmax(ratio)), expected.shape)
    su = scale[idx] * u
    err_u = float(err[idx] / su) if su > 0 and math.isfinite(su) else float(err[idx] > 0) * math.inf
    allowed_u = float(allowed[idx] / su) if su > 0 and math.isfinite(su) else 0.0
    ok = bool((err <= allowed).all())
    if ok:  # report the largest error even when every element passes
        err_units = np.where(np.isfinite(scale) & (scale > 0), err / (scale * u), 0.0)
        j = np.unravel_index(int(np.argmax(err_units)), expected.shape)
        err_u = float(err_units[j])
        allowed_u = float(allowed[j] / (scale[j] * u)) if math.isfinite(scale[j] * u) and scale[j] > 0 else 0.0
        idx = j
    return Check(step, q, ok, err_u, allowed_u, bound.unit, [int(i) for i in idx],
                 _num(expected[idx]), _num(observed[idx]))


def _num(v: Any) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else repr(v)


class _Bounds:
    """The absolute error bounds of every quantity of every step (before K)."""

    def __init__(self, case: Case, sem: Semantics, expected: Result) -> None:
        ar = arithmetic_of(sem, case)
        self.u_c = unit_roundoff(ar.compute)
        self.u_n = unit_roundoff(ar.normalize)
        self.u_o = unit_roundoff(ar.output)
        # promote_float32 state starts as float32 (its creation dtype) even when a wider batch
        # promotes it: the loaded statistics carry float32 rounding.
        state = "float32" if sem.state_dtype == "promote_float32" else ar.state
        self.u_s = unit_roundoff(state)
        self.u_in = unit_roundoff(case.dtype)
        self.units = {"compute": ar.compute, "output": ar.output, "state": state}
        self.one_pass = sem.variance_algorithm != "two_pass"
        self.case, self.sem = case, sem
        self.eps = max(case.eps, sem.effective_eps_floor)
        self.per_step: list[dict[str, _Bound]] = []
        self._build(expected)

    def get(self, step: int, q: str, expected: np.ndarray) -> _Bound:
        return self.per_step[step].get(q) or _Bound(
            np.abs(expected) * self.u_c, np.abs(expected), self.units["compute"]
        )

    def _build(self, expected: Result) -> None:
        case, sem = self.case, self.sem
        c = case.num_features
        run_mean_b = np.zeros(c)  # error bounds carried by the running statistics
        run_var_b = np.zeros(c)
        prev_mean = case.running_mean.copy()
        prev_var = case.running_var.copy()
        updates = 0
        for step, res in zip(case.steps, expected.steps, strict=True):
            x = step.x
            axes = (0, *range(2, x.ndim))
            n = x.size // c
            g = 1.0 + math.log2(n)
            with np.errstate(invalid="ignore", over="ignore"):
                a = np.abs(x).mean(axis=axes)
                mu = x.mean(axis=axes)
                v = ((x - mu.reshape(_bs(x))) ** 2).mean(axis=axes)
            b_mu = self.u_c * g * a
            if self.one_pass:
                b_v = self.u_c * g * (v + mu**2) * 2
            else:
                b_v = self.u_c * g * v + b_mu**2
            bounds: dict[str, _Bound] = {}
            if res.batch_mean is not None:
                bounds["batch_mean"] = _Bound(b_mu, np.maximum(a, 0), self.units["compute"])
                bounds["batch_var"] = _Bound(b_v, v + mu**2 if self.one_pass else v,
                                             self.units["compute"])
            if (step.updates_running and case.track_running_stats and sem.running_update == "ema"
                    and res.running_mean is not None):
                updates += 1
                w = _batch_weight(case.momentum, sem, sem.momentum_weights, updates)
                factor = n / (n - 1) if (n > 1 and sem.running_var_update == "unbiased") else 1.0
                hid_mean = res.running_mean
                hid_var = res.running_var
                # A weight derived in the state dtype (w = 1 - m) is off by at most u_s absolutely;
                # 0 and 1 are exact.
                exact_w = w in (0.0, 1.0)
                momentum_err_mean = 0.0 if exact_w else self.u_s * np.abs(mu - prev_mean)
                momentum_err_var = 0.0 if exact_w else self.u_s * np.abs(v * factor - prev_var)
                run_mean_b = (1 - w) * run_mean_b + w * b_mu + self.u_s * np.abs(hid_mean) * 2 + momentum_err_mean
                run_var_b = (1 - w) * run_var_b + w * b_v * factor + self.u_s * np.abs(hid_var) * 2 + momentum_err_var
                prev_mean, prev_var = hid_mean, hid_var
            if res.running_mean is not None and res.running_var is not None:
                bounds["running_mean"] = _Bound(run_mean_b + self.u_s * np.abs(res.running_mean),
                                                np.abs(res.running_mean) + np.sqrt(np.abs(res.running_var)),
                                                self.units["state"])
                bounds["running_var"] = _Bound(run_var_b + self.u_s * np.abs(res.running_var),
                                               np.abs(res.running_var), self.units["state"])
            # the statistics that normalized this step, and their error bounds
            if res.norm_mean is not None and res.norm_var is not None:
                m_s, v_s = res.norm_mean, res.norm_var
                used_batch = bool(np.array_equal(m_s, res.batch_mean)) if res.batch_mean is not None else False
                bm_s, bv_s = (b_mu, b_v) if used_batch else (run_mean_b, run_var_b)
                self._output_bounds(bounds, step, res, m_s, v_s, bm_s, bv_s, g)
            self.per_step.append(bounds)

    def _output_bounds(self, bounds: dict[str, _Bound], step: Any, res: StepResult, m_s: np.ndarray,
                       v_s: np.ndarray, bm: np.ndarray, bv: np.ndarray, g: float) -> None:
        case, x = self.case, step.x
        shape = _bs(x)
        eps = self.eps
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.sem.eps_placement == "inside_sqrt":
                r = 1 / np.sqrt(v_s + eps)
                dlog_r = 0.5 / (v_s + eps)  # |r'/r|
            else:
                root = np.sqrt(v_s)
                r = 1 / (root + eps)
                dlog_r = 1 / ((root + eps) * 2 * root)
            r, dlog_r = r.reshape(shape), np.nan_to_num(dlog_r, posinf=1e300).reshape(shape)
            gamma = np.abs(case.gamma).reshape(shape) if case.gamma is not None else 1.0
            beta = np.abs(case.beta).reshape(shape) if case.beta is not None else 0.0
            bm, bv = bm.reshape(shape), bv.reshape(shape)
            xhat = np.abs(x - m_s.reshape(shape)) * r
            y = res.y
            b_y = (gamma * r * (bm + self.u_n * np.abs(m_s.reshape(shape)))
                   + gamma * xhat * (dlog_r * bv + 2 * self.u_n) + self.u_n * beta + self.u_o * np.abs(y))
            # Where the variance's own error bound reaches the variance (one-pass cancellation
            # with |mean| >> std), the output is unconstrained: even NaN is within the model.
            b_y = np.where(dlog_r * bv * K["batch_var"] >= 1, np.inf, b_y)
            bounds["y"] = _Bound(b_y, gamma * xhat + beta + np.abs(y), self.units["output"])
            if step.grad_output is not None and res.dx is not None:
                axes = (0, *range(2, x.ndim))
                dy = np.abs(step.grad_output)
                mean_dy = dy.mean(axis=axes, keepdims=True)
                mean_dyx = (dy * xhat).mean(axis=axes, keepdims=True)
                scale_dx = gamma * r * (dy + mean_dy + xhat * mean_dyx)
                # dx is returned in the input's dtype: its final rounding is u_in |dx|.
                b_dx = (self.u_c * g * scale_dx + np.abs(res.dx) * dlog_r * bv + gamma * r * r * bm * mean_dy
                        + self.u_in * np.abs(res.dx))
                bounds["dx"] = _Bound(b_dx, scale_dx, self.units["compute"])
                s_dy = dy.sum(axis=axes)
                s_dyx = (dy * xhat).sum(axis=axes)
                rr, dl = r.reshape(-1), dlog_r.reshape(-1)
                # dgamma and dbeta are returned in the parameters' dtype: one more rounding.
                u_p = unit_roundoff(case.param_dtype)
                bounds["dgamma"] = _Bound(self.u_c * g * s_dyx + s_dy * rr * bm.reshape(-1)
                                          + s_dyx * dl * bv.reshape(-1) + u_p * np.abs(res.dgamma if res.dgamma is not None else 0),
                                          s_dyx + s_dy * 0, self.units["compute"])
                bounds["dbeta"] = _Bound(self.u_c * g * s_dy + u_p * s_dy, s_dy, self.units["compute"])


def _bs(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)
