"""The tolerance model's bounds: how far each quantity of each step may be from the exact value.

See :mod:`bnspec.tolerance` for the model (unit roundoff of the dtype the plan's numerics put the
work in, times the case's conditioning, times a per-quantity constant K). The bounds walk the
step plan (:mod:`bnspec.plan`) like the reference and the oracle do, and only do arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import unit_roundoff
from bnspec.plan import Plan

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
    "replica_running_mean": 8.0,  # a case with replicas: every replica's copy
    "replica_running_var": 8.0,
}


# Each dtype's range: its largest finite value; its smallest subnormal, which bounds the absolute
# error one rounding that underflows may add to the relative error u (gradual underflow adds at
# most half of it: Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 2.1; the
# whole of it is used, as half of float64's is below float64's range); and the overflow
# threshold: the magnitude from which round-to-nearest gives +-inf, max + ulp(max) / 2.
_RANGE: dict[str, tuple[float, float, float]] = {
    "float64": (float(np.finfo(np.float64).max), 2.0**-1074, math.inf),  # max + 2^970 is past float64
    "float32": (float(np.finfo(np.float32).max), 2.0**-149, 2.0**127 * (2 - 2.0**-24)),
    "float16": (65504.0, 2.0**-24, 65520.0),
    "bfloat16": (2.0**127 * (2 - 2.0**-7), 2.0**-133, 2.0**127 * (2 - 2.0**-8)),
}


def largest(dtype: str) -> float:
    return _RANGE[dtype][0]


def underflow(dtype: str) -> float:
    """eta: the absolute error one rounding into ``dtype`` may add where it underflows (its
    smallest subnormal)."""
    return _RANGE[dtype][1]


def smallest_normal(dtype: str) -> float:
    return underflow(dtype) / (2 * unit_roundoff(dtype))


def overflow_threshold(dtype: str) -> float:
    """The smallest magnitude that rounds to +-inf in ``dtype`` (round to nearest)."""
    return _RANGE[dtype][2]


def reaches(value: np.ndarray | float, dtype: str, growth: float = 0.0) -> np.ndarray:
    """For a magnitude computed (in float64) from the case's finite values: a computation in
    ``dtype`` may give +-inf for it. Grown by the relative rounding error ``growth`` the model
    allows on its way there, it reaches the dtype's overflow threshold (float64's largest value
    for float64), or it overflowed float64 on its way here."""
    v = np.abs(np.asarray(value, dtype=np.float64))
    limit = overflow_threshold(dtype) if dtype != "float64" else largest(dtype)
    # v >= limit / (1 + growth), or not finite (NaN compares False: the negation catches it)
    return ~(v < limit / (1 + growth))


def _finite(a: np.ndarray | float) -> np.ndarray:
    """``a`` with its NaN and +-inf set to 0: they propagate as IEEE says (the expected value's
    business), so only finite values are looked at for overflow."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), a, 0.0)


@dataclass
class Bound:
    """How far a quantity may be from the exact value, elementwise.

    ``absolute`` (before K) is the bound; +inf leaves an element unconstrained (the exact
    reference's own float64 arithmetic may overflow there, or 1/0). ``nonfinite`` marks the
    elements where an intermediate of the profile's arithmetic may overflow its dtype, in some
    order of operations and not in others: there an observed NaN or +-inf conforms too (the
    exact value within the bound still does). ``alt``: a second value that conforms, within the
    same bound, where it is not NaN (y = beta where the variance may overflow to inf: r = 0)."""

    absolute: np.ndarray
    scale: np.ndarray  # the quantity's magnitude for reporting in units
    unit: str
    dtype: str = ""  # the dtype the quantity is returned in (its range: overflow is +-inf); "": unit
    nonfinite: np.ndarray | bool = False
    alt: np.ndarray | None = None


def _free(bound: np.ndarray | float, free: np.ndarray | bool = False) -> np.ndarray:
    """``bound`` with the elements outside the model (``free``) unconstrained (+inf). A bound that
    is not finite by its own arithmetic (an expected NaN or +-inf, from NaN or Inf inputs) is NaN:
    any error is allowed there, but the expected value's kind must be matched."""
    return np.where(free, np.inf, np.where(np.isfinite(bound), bound, np.nan))


@dataclass
class _Range:
    """Per channel, where a step's statistics stand against the range of their dtypes."""

    free: np.ndarray  # the exact reference's own float64 sums may overflow: unconstrained
    nonfinite: np.ndarray  # the profile's sums may overflow its compute dtype: NaN/Inf conform
    var_inf: np.ndarray  # its sum of squares may overflow to inf (r = 0: y = beta)


class Bounds:
    """The absolute error bounds of every quantity of every step (before K).

    The model's rounding errors hold where every intermediate stays in its dtype's range. Where
    one the profile's numerics put in a dtype may overflow it (:func:`reaches`: a sum of the
    batch, a sum of squares, the state blended, 1/sqrt(var + eps), x - mean and the products of
    the normalisation), IEEE arithmetic gives +-inf in one order of operations and not in
    another (a running average does not overflow where a sum does), so the quantities computed
    from it may be non-finite as well (``Bound.nonfinite``); where the exact reference's own
    float64 arithmetic may overflow, or divides by zero (eps = 0 on a constant channel), they are
    unconstrained. A running statistic that leaves the model stays out of it."""

    def __init__(self, case: Case, plan: Plan, expected: Result) -> None:
        ar = plan.dtypes
        self.u_c = unit_roundoff(ar.compute)
        self.u_n = unit_roundoff(ar.normalize)
        self.u_o = unit_roundoff(ar.output)
        # promote_float32 state starts as float32 (its creation dtype) even when a wider batch
        # promotes it: the loaded statistics carry float32 rounding.
        state = ar.created
        self.u_s = unit_roundoff(state)
        self.u_in = unit_roundoff(case.dtype)
        # eta per dtype: the absolute error of a rounding that underflows
        self.e_c, self.e_n, self.e_o = underflow(ar.compute), underflow(ar.normalize), underflow(ar.output)
        self.e_s, self.e_in, self.e_p = underflow(state), underflow(case.dtype), underflow(case.param_dtype)
        self.units = {"compute": ar.compute, "output": ar.output, "state": state}
        self.dtypes = ar
        self.one_pass = ar.algorithm != "two_pass"
        self.folded = ar.affine_form == "folded"
        self.case, self.plan = case, plan
        self.eps = plan.eps_float
        self.per_step: list[dict[str, Bound]] = []
        with np.errstate(all="ignore"):  # NaN and Inf inputs reach the bounds too: IEEE's business
            if plan.replica is not None:
                from bnspec.replicas import build_replica_bounds  # the same model, shard by shard

                build_replica_bounds(self, expected)
            else:
                self._build(expected)

    def get(self, step: int, q: str, expected: np.ndarray) -> Bound:
        return self.per_step[step].get(q) or Bound(
            np.abs(expected) * self.u_c, np.abs(expected), self.units["compute"]
        )

    def _range(self, x: np.ndarray, n: int, g: float, a: np.ndarray, mu: np.ndarray,
               v: np.ndarray) -> tuple[_Range, np.ndarray, np.ndarray]:
        """The step's sums against their dtypes' range, and the exact mean and sum of squares of
        its finite values (``a``, ``mu``, ``v``: mean |x|, mean and variance of all values)."""
        axes = (0, *range(2, x.ndim))
        compute = self.dtypes.compute
        growth = K["batch_var"] * g * self.u_c
        if np.isfinite(x).all():
            mean, squares = mu, (x**2).sum(axis=axes) if self.one_pass else v * n
            # partial sums, in any order, lie within +-sum|x| (and between -neg and pos)
            biggest = a * n
            if not reaches(biggest, compute, growth).any():
                pos = neg = biggest
            else:
                pos, neg = np.maximum(x, 0).sum(axis=axes), np.maximum(-x, 0).sum(axis=axes)
        else:
            xf = _finite(x)
            pos, neg = np.maximum(xf, 0).sum(axis=axes), np.maximum(-xf, 0).sum(axis=axes)
            mean = (pos - neg) / n
            squares = ((xf if self.one_pass else xf - mean.reshape(_bs(x))) ** 2).sum(axis=axes)
        # rounding grows the partial sums by the model's u g (times K) at most
        biggest = np.maximum(pos, neg)
        growth64 = K["batch_var"] * g * 2.0**-53
        free = reaches(biggest, "float64", growth64) | reaches(squares, "float64", growth64)
        var_inf = reaches(squares, compute, growth)
        nonfinite = reaches(biggest, compute, growth) | var_inf
        if compute == "float64":  # the profile's sums are the reference's own
            free = free | nonfinite
        return _Range(free, nonfinite & ~free, var_inf & ~free), mean, squares

    def _build(self, expected: Result) -> None:
        case, plan, ar = self.case, self.plan, self.dtypes
        c = case.num_features
        run_mean_b = np.zeros(c)  # error bounds carried by the running statistics
        run_var_b = np.zeros(c)
        # the running statistics outside the model, for the rest of the case: unconstrained, or
        # possibly non-finite (and the variance possibly inf)
        free_mean, free_var = np.zeros(c, bool), np.zeros(c, bool)
        nf_mean, nf_var = np.zeros(c, bool), np.zeros(c, bool)
        inf_var = np.zeros(c, bool)  # the variance may be inf with its mean finite (r = 0: y = beta)
        prev_mean = case.running_mean.copy()
        prev_var = case.running_var.copy()
        for step, sp, res in zip(case.steps, plan.steps, expected.steps, strict=True):
            x = step.x
            axes = (0, *range(2, x.ndim))
            n = x.size // c
            g = 1.0 + math.log2(n)
            a = np.abs(x).mean(axis=axes)
            mu = x.mean(axis=axes)
            v = ((x - mu.reshape(_bs(x))) ** 2).mean(axis=axes)
            rng, mu_f, squares = self._range(x, n, g, a, mu, v)
            b_mu = self.u_c * g * a + self.e_c  # the division by n may underflow
            if self.one_pass:
                b_v = self.u_c * g * (v + mu**2) * 2 + 2 * self.e_c
            else:
                b_v = self.u_c * g * v + b_mu**2 + 2 * self.e_c  # the squares and the division
            bounds: dict[str, Bound] = {}
            if res.batch_mean is not None:
                bounds["batch_mean"] = Bound(_free(b_mu, rng.free), np.maximum(a, 0), ar.compute,
                                             nonfinite=rng.nonfinite)
                bounds["batch_var"] = Bound(_free(b_v, rng.free), v + mu**2 if self.one_pass else v,
                                             ar.compute, nonfinite=rng.nonfinite)
            if sp.updating:
                w = float(sp.weight)
                # one value per channel: the factor's inf (or 1) is the expected value's business
                factor = float(sp.running_var_factor) if n > 1 else 1.0
                hid_mean, hid_var = res.running_mean, res.running_var
                assert hid_mean is not None and hid_var is not None  # updating: the layer tracks
                # A weight derived in the state dtype (w = 1 - m) is off by at most u_s absolutely;
                # 0 and 1 are exact.
                # Below the state dtype's normal range it is off by e_s, and may be 0 there: an
                # infinite statistic then blends to NaN (0 * inf) where the exact blend is +-inf.
                exact_w = w in (0.0, 1.0)
                momentum_err_mean = 0.0 if exact_w else (self.u_s + self.e_s) * np.abs(mu - prev_mean)
                momentum_err_var = 0.0 if exact_w else (self.u_s + self.e_s) * np.abs(v * factor - prev_var)
                vanishes = not exact_w and min(w, 1 - w) < self.e_s / (2 * self.u_s)  # smallest normal

                # the blend's two products and the batch statistic's cast may underflow
                run_mean_b = ((1 - w) * run_mean_b + w * b_mu + self.u_s * np.abs(hid_mean) * 2 + momentum_err_mean
                              + 3 * self.e_s)
                run_var_b = ((1 - w) * run_var_b + w * b_v * factor + self.u_s * np.abs(hid_var) * 2
                             + momentum_err_var + 3 * self.e_s)
                # What is blended, in the state dtype. Once outside the model a statistic stays
                # there, even at weight 0 or 1 (IEEE's 0 * inf is NaN).
                into_var = squares / n * factor
                growth = 4 * K["running_var"] * self.u_s
                free_mean |= rng.free
                free_var |= rng.free
                nf_mean |= (rng.nonfinite | reaches(mu_f, ar.state, growth)
                            | reaches(_finite(prev_mean), ar.state, growth)
                            | (vanishes & ~(np.isfinite(mu) & np.isfinite(prev_mean))))
                var_reaches = reaches(into_var, ar.state, growth) | reaches(_finite(prev_var), ar.state, growth)
                nf_var |= rng.nonfinite | var_reaches | (vanishes & ~(np.isfinite(v) & np.isfinite(prev_var)))
                inf_var |= rng.var_inf | var_reaches
                prev_mean, prev_var = hid_mean, hid_var
            if res.running_mean is not None and res.running_var is not None:
                bounds["running_mean"] = Bound(
                    _free(run_mean_b + self.u_s * np.abs(res.running_mean) + self.e_s, free_mean),
                    np.abs(res.running_mean) + np.sqrt(np.abs(res.running_var)), self.units["state"], ar.state,
                    nonfinite=nf_mean.copy())
                bounds["running_var"] = Bound(
                    _free(run_var_b + self.u_s * np.abs(res.running_var) + self.e_s, free_var),
                    np.abs(res.running_var), self.units["state"], ar.state, nonfinite=nf_var.copy())
            # the statistics that normalized this step, and their error bounds and range
            if res.norm_mean is not None and res.norm_var is not None:
                m_s, v_s = res.norm_mean, res.norm_var
                if sp.source == "batch":
                    bm_s, bv_s = b_mu, b_v
                    out = _Range(rng.free, rng.nonfinite, rng.var_inf)
                else:
                    bm_s, bv_s = run_mean_b, run_var_b
                    out = _Range(free_mean | free_var, nf_mean | nf_var, inf_var.copy())
                self._output_bounds(bounds, step, res, m_s, v_s, bm_s, bv_s, g, out)
            self.per_step.append(bounds)

    def _output_bounds(self, bounds: dict[str, Bound], step: Any, res: StepResult, m_s: np.ndarray,
                       v_s: np.ndarray, bm: np.ndarray, bv: np.ndarray, g: float, stats: _Range) -> None:
        case, x, ar = self.case, step.x, self.dtypes
        shape = _bs(x)
        eps = self.eps
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # v_s + eps as the profile forms it: eps rounded into the compute dtype (to 0 below
            # its smallest subnormal), the sum rounded
            bv = bv + self.u_c * eps + self.e_c
            if self.plan.eps_placement == "inside_sqrt":
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
            m = np.abs(m_s.reshape(shape))
            dev = np.abs(x - m_s.reshape(shape))
            xhat = dev * r
            y = res.y
            # The normalisation in the normalize dtype: the mean and r rounded into it, x - mean,
            # the products; each rounding relative u_n and, where it underflows, absolute e_n.
            # (r's underflow, or that of gamma r where a kernel forms it, comes back times x - mean)
            b_y = (gamma * r * (bm + self.u_n * m + self.e_n) + gamma * xhat * (dlog_r * bv + 2 * self.u_n)
                   + (gamma + 1) * dev * self.e_n + (gamma + 2) * self.e_n
                   + self.u_n * beta + self.u_o * np.abs(y) + self.e_o)
            if self.folded:  # x s and mean s, each rounded, cancel to y: their roundings stay
                b_y = b_y + self.u_n * gamma * r * (np.abs(x) + 2 * m) + self.e_n * (np.abs(x) + m + 3)
            # Where the variance's own error bound reaches the variance (one-pass cancellation
            # with |mean| >> std; eps and the variance lost to underflow), the output is
            # unconstrained: even NaN is within the model.
            unconstrained = dlog_r * bv * K["batch_var"] >= 1
            # The range: r is inf where var + eps is 0 (eps = 0 on a constant channel), 1/0,
            # outside the model; the normalisation's intermediates, over the finite values, in
            # the normalize dtype (and y itself where that is narrower than the output's).
            nd, growth = ar.normalize, 4 * K["y"] * self.u_n
            free = stats.free.reshape(shape) | np.isposinf(r) | unconstrained
            r_f, m_f = _finite(r), _finite(m)
            g_f = np.maximum(gamma, 1.0)  # a product times gamma, or the product itself
            x_f = _finite(x)
            dev_f = np.abs(x_f - m_f)
            # each intermediate's magnitude: r, the mean, x - mean, (x - mean) r (gamma); folded:
            # x (gamma r) and mean (gamma r); y where the normalize dtype is narrower
            biggest = np.maximum(np.maximum(r_f, m_f), np.maximum(dev_f, g_f * dev_f * r_f))
            if self.folded:
                biggest = np.maximum(biggest, g_f * r_f * np.maximum(np.abs(x_f), m_f))
            if largest(nd) < largest(ar.output):
                biggest = np.maximum(biggest, np.abs(_finite(y)))
            nonfinite = stats.nonfinite.reshape(shape) | reaches(biggest, nd, growth)
            # r or gamma r below the normal range may be 0 there: an infinite input times it is NaN
            # where the exact product is +-inf (a folded kernel's scale underflowing, gamma 1e-45)
            if not np.isfinite(x).all():
                vanishing = (r_f < smallest_normal(nd)) | (gamma * r_f < smallest_normal(nd))
                nonfinite = nonfinite | (vanishing & ~np.isfinite(x))
            alt = None
            if stats.var_inf.any():  # r may be 0: y = beta (0 * (x - mean) + beta, either form)
                shift = case.beta.reshape(shape) if case.beta is not None else np.zeros(shape)
                alt = np.where(stats.var_inf.reshape(shape) & ~free, shift, np.nan) * np.ones(x.shape)
            bounds["y"] = Bound(_free(b_y, free), gamma * xhat + beta + np.abs(y), self.units["output"],
                                ar.output, nonfinite=nonfinite & ~free, alt=alt)
            if step.grad_output is not None and res.dx is not None:
                axes = (0, *range(2, x.ndim))
                dy = np.abs(step.grad_output)
                mean_dy = dy.mean(axis=axes, keepdims=True)
                mean_dyx = (dy * xhat).mean(axis=axes, keepdims=True)
                scale_dx = gamma * r * (dy + mean_dy + xhat * mean_dyx)
                # the statistics as they are used: the mean and r rounded into the normalize dtype
                bm_n = bm + self.u_n * m + self.e_n
                rel_r = dlog_r * bv + self.u_n + self.e_n / r
                # dx: the reductions' rounding, r's error (relative in dx, and twice through xhat
                # mean(dy xhat), where it does not cancel as dx does), the mean's error through xhat
                # (in x - mean and in mean(dy xhat)), the underflows of its products (those of sum(dy (x - mean))
                # come back multiplied by r^2 |x - mean|); returned in the input's dtype: its final
                # rounding is u_in |dx| (+ e_in).
                b_dx = (self.u_c * g * scale_dx + (np.abs(res.dx) + 2 * gamma * r * xhat * mean_dyx) * rel_r
                        + gamma * r * r * bm_n * (mean_dyx + xhat * mean_dy + mean_dy)
                        + self.e_c * (gamma * r * r * xhat + 2 * gamma * r + gamma + 2)
                        + self.u_in * np.abs(res.dx) + self.e_in)
                # The gradients depend on the channel's sums: unconstrained wherever y may leave
                # the model, and where dr = r^3 / 2 or the terms of dx may overflow the compute dtype.
                # (and the sums sum(dy) and sum(dy (x - mean)), whose terms may be as large as x)
                sums = (np.abs(_finite(step.grad_output)).sum(axis=axes, keepdims=True)
                        + (np.abs(_finite(step.grad_output)) * dev_f).sum(axis=axes, keepdims=True))
                grad_free = ((free | nonfinite | reaches(_finite(scale_dx), ar.compute)).any(axis=axes, keepdims=True)
                             | reaches(r_f**3, ar.compute) | reaches(sums, ar.compute, K["dx"] * g * self.u_c))
                bounds["dx"] = Bound(_free(b_dx, grad_free), scale_dx, self.units["compute"], case.dtype)
                s_dy = dy.sum(axis=axes)
                s_dyx = (dy * xhat).sum(axis=axes)
                rr, dl = r.reshape(-1), rel_r.reshape(-1)
                # dgamma and dbeta are returned in the parameters' dtype: one more rounding.
                u_p = unit_roundoff(case.param_dtype)
                dgamma = res.dgamma if res.dgamma is not None else 0
                n = x.size // case.num_features
                bounds["dgamma"] = Bound(_free(self.u_c * g * s_dyx + s_dy * rr * bm_n.reshape(-1)
                                               + s_dyx * dl + u_p * np.abs(dgamma) + n * self.e_c * (rr + 1) + self.e_p,
                                               grad_free.reshape(-1)),
                                         s_dyx, self.units["compute"], case.param_dtype)
                bounds["dbeta"] = Bound(_free(self.u_c * g * s_dy + u_p * s_dy + self.e_p), s_dy, self.units["compute"],
                                        case.param_dtype)


def _bs(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)
