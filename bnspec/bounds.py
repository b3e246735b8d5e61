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
}


@dataclass
class Bound:
    absolute: np.ndarray  # allowed |observed - expected| elementwise, before K
    scale: np.ndarray  # the quantity's magnitude for reporting in units
    unit: str


class Bounds:
    """The absolute error bounds of every quantity of every step (before K)."""

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
        self.units = {"compute": ar.compute, "output": ar.output, "state": state}
        self.one_pass = ar.algorithm != "two_pass"
        self.folded = ar.affine_form == "folded"
        self.case, self.plan = case, plan
        self.eps = plan.eps_float
        self.per_step: list[dict[str, Bound]] = []
        self._build(expected)

    def get(self, step: int, q: str, expected: np.ndarray) -> Bound:
        return self.per_step[step].get(q) or Bound(
            np.abs(expected) * self.u_c, np.abs(expected), self.units["compute"]
        )

    def _build(self, expected: Result) -> None:
        case, plan = self.case, self.plan
        c = case.num_features
        run_mean_b = np.zeros(c)  # error bounds carried by the running statistics
        run_var_b = np.zeros(c)
        prev_mean = case.running_mean.copy()
        prev_var = case.running_var.copy()
        for step, sp, res in zip(case.steps, plan.steps, expected.steps, strict=True):
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
            bounds: dict[str, Bound] = {}
            if res.batch_mean is not None:
                bounds["batch_mean"] = Bound(b_mu, np.maximum(a, 0), self.units["compute"])
                bounds["batch_var"] = Bound(b_v, v + mu**2 if self.one_pass else v,
                                             self.units["compute"])
            if sp.updating:
                w = float(sp.weight)
                # one value per channel: the factor's inf (or 1) is the expected value's business
                factor = float(sp.running_var_factor) if n > 1 else 1.0
                hid_mean, hid_var = res.running_mean, res.running_var
                assert hid_mean is not None and hid_var is not None  # updating: the layer tracks
                # A weight derived in the state dtype (w = 1 - m) is off by at most u_s absolutely;
                # 0 and 1 are exact.
                exact_w = w in (0.0, 1.0)
                momentum_err_mean = 0.0 if exact_w else self.u_s * np.abs(mu - prev_mean)
                momentum_err_var = 0.0 if exact_w else self.u_s * np.abs(v * factor - prev_var)
                run_mean_b = (1 - w) * run_mean_b + w * b_mu + self.u_s * np.abs(hid_mean) * 2 + momentum_err_mean
                run_var_b = (1 - w) * run_var_b + w * b_v * factor + self.u_s * np.abs(hid_var) * 2 + momentum_err_var
                prev_mean, prev_var = hid_mean, hid_var
            if res.running_mean is not None and res.running_var is not None:
                bounds["running_mean"] = Bound(run_mean_b + self.u_s * np.abs(res.running_mean),
                                                np.abs(res.running_mean) + np.sqrt(np.abs(res.running_var)),
                                                self.units["state"])
                bounds["running_var"] = Bound(run_var_b + self.u_s * np.abs(res.running_var),
                                               np.abs(res.running_var), self.units["state"])
            # the statistics that normalized this step, and their error bounds
            if res.norm_mean is not None and res.norm_var is not None:
                m_s, v_s = res.norm_mean, res.norm_var
                bm_s, bv_s = (b_mu, b_v) if sp.source == "batch" else (run_mean_b, run_var_b)
                self._output_bounds(bounds, step, res, m_s, v_s, bm_s, bv_s, g)
            self.per_step.append(bounds)

    def _output_bounds(self, bounds: dict[str, Bound], step: Any, res: StepResult, m_s: np.ndarray,
                       v_s: np.ndarray, bm: np.ndarray, bv: np.ndarray, g: float) -> None:
        case, x = self.case, step.x
        shape = _bs(x)
        eps = self.eps
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
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
            xhat = np.abs(x - m_s.reshape(shape)) * r
            y = res.y
            b_y = (gamma * r * (bm + self.u_n * np.abs(m_s.reshape(shape)))
                   + gamma * xhat * (dlog_r * bv + 2 * self.u_n) + self.u_n * beta + self.u_o * np.abs(y))
            if self.folded:  # x s and mean s, each rounded, cancel to y: their roundings stay
                b_y = b_y + self.u_n * gamma * r * (np.abs(x) + 2 * np.abs(m_s.reshape(shape)))
            # Where the variance's own error bound reaches the variance (one-pass cancellation
            # with |mean| >> std), the output is unconstrained: even NaN is within the model.
            b_y = np.where(dlog_r * bv * K["batch_var"] >= 1, np.inf, b_y)
            bounds["y"] = Bound(b_y, gamma * xhat + beta + np.abs(y), self.units["output"])
            if step.grad_output is not None and res.dx is not None:
                axes = (0, *range(2, x.ndim))
                dy = np.abs(step.grad_output)
                mean_dy = dy.mean(axis=axes, keepdims=True)
                mean_dyx = (dy * xhat).mean(axis=axes, keepdims=True)
                scale_dx = gamma * r * (dy + mean_dy + xhat * mean_dyx)
                # dx is returned in the input's dtype: its final rounding is u_in |dx|.
                b_dx = (self.u_c * g * scale_dx + np.abs(res.dx) * dlog_r * bv + gamma * r * r * bm * mean_dy
                        + self.u_in * np.abs(res.dx))
                bounds["dx"] = Bound(b_dx, scale_dx, self.units["compute"])
                s_dy = dy.sum(axis=axes)
                s_dyx = (dy * xhat).sum(axis=axes)
                rr, dl = r.reshape(-1), dlog_r.reshape(-1)
                # dgamma and dbeta are returned in the parameters' dtype: one more rounding.
                u_p = unit_roundoff(case.param_dtype)
                dgamma = res.dgamma if res.dgamma is not None else 0
                bounds["dgamma"] = Bound(self.u_c * g * s_dyx + s_dy * rr * bm.reshape(-1)
                                         + s_dyx * dl * bv.reshape(-1) + u_p * np.abs(dgamma),
                                         s_dyx, self.units["compute"])
                bounds["dbeta"] = Bound(self.u_c * g * s_dy + u_p * s_dy, s_dy, self.units["compute"])


def _bs(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)
