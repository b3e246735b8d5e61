"""The exact oracle: the same :class:`Result` as ``bnspec.reference.reference``, in exact arithmetic.

Every quantity is a :class:`fractions.Fraction` of the float64 inputs (the case's arrays, eps
and momentum are read as the exact binary values they hold). The only irrational step, the
square root, is an integer square root carrying ``SQRT_BITS`` bits, so each returned float64 is
the correctly rounded value of a number within 2^-SQRT_BITS (relative, per term) of the exact
one; where no square root is involved (batch and running statistics, dbeta) it is the correctly
rounded exact value. Non-finite values (0/0, x/0, the n/(n-1) factor of single_value="nan") follow
IEEE float semantics, as NumPy's do in the reference.

NumPy is used only to read the case's arrays and to shape the outputs; the arithmetic is Python's.
It validates the float64 reference on small inputs; it is slow by design.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Union

import numpy as np

from bnspec.case import Case, Result, Step, StepResult
from bnspec.dtypes import more_precise
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.semantics import MomentumWeights, Semantics

SQRT_BITS = 256
Num = Union[Fraction, float]  # a float only where IEEE semantics produced a NaN or an infinity
Channels = list[list[Num]]  # per channel, the channel's values in (N, *spatial) order


def oracle(case: Case, semantics: Semantics, *, passed_as: MomentumWeights | None = None) -> Result:
    """``reference(case, semantics, passed_as=...)`` computed exactly, rounded once to float64."""
    steps = exact_steps(case, semantics, passed_as=passed_as)
    out = []
    for step, q in zip(case.steps, steps, strict=True):
        res = StepResult(y=_to_array(q["y"], step.x.shape), y_dtype=q["y_dtype"],
                         running_dtype=q["running_dtype"])
        for name in ("batch_mean", "batch_var", "running_mean", "running_var", "dgamma", "dbeta"):
            if q.get(name) is not None:
                setattr(res, name, np.array([_float(v) for v in q[name]], dtype=np.float64))
        if q.get("dx") is not None:
            res.dx = _to_array(q["dx"], step.x.shape)
        out.append(res)
    return Result(out, {"reference": "oracle"})


def exact_steps(
    case: Case,
    sem: Semantics,
    *,
    passed_as: MomentumWeights | None = None,
    x_override: dict[int, Channels] | None = None,
) -> list[dict]:
    """Per step, every quantity as exact numbers (lists per channel); ``x_override`` replaces a
    step's batch (finite differences in exact arithmetic use it)."""
    declared = passed_as or sem.momentum_weights
    hidden_mean: list[Num] = [Fraction(v) for v in case.running_mean.tolist()]
    hidden_var: list[Num] = [Fraction(v) for v in case.running_var.tolist()]
    gamma = None if case.gamma is None else [Fraction(v) for v in case.gamma.tolist()]
    beta = None if case.beta is None else [Fraction(v) for v in case.beta.tolist()]
    eps = max(Fraction(case.eps), Fraction(sem.effective_eps_floor))
    y_dtype, state_dtype = _dtypes(sem, case)
    w_steady = _batch_weight(case.momentum, sem, declared, 2)
    track = case.track_running_stats
    updates = 0
    out: list[dict] = []
    for i, step in enumerate(case.steps):
        x = x_override[i] if x_override and i in x_override else _channels(step.x)
        g = None if step.grad_output is None else _channels(step.grad_output)
        n = len(x[0])
        source = _stats_source(step, sem, track)
        updating = step.updates_running and track and sem.running_update == "ema"
        needs_batch = source != "running" or updating
        q: dict = {"y_dtype": y_dtype, "running_dtype": state_dtype}
        mean_b: list[Num] = []
        var_b: list[Num] = []
        factor: Num = Fraction(1)
        if needs_batch:
            if n == 1 and sem.single_value == "error":
                raise SingleValueError(
                    f"one value per channel in a batch of shape {step.x.shape} (single_value=error)"
                )
            mean_b = [sum(xc, Fraction(0)) / n for xc in x]
            var_b = [sum(((v - m) ** 2 for v in xc), Fraction(0)) / n for xc, m in zip(x, mean_b)]
            if n > 1:
                factor = Fraction(n, n - 1)
            else:
                factor = Fraction(1) if sem.single_value == "allowed" else math.inf
            q["batch_mean"], q["batch_var"] = mean_b, var_b
        w_stats: Num = Fraction(0)  # d(statistic that normalizes) / d(batch statistic)
        var_factor_running: Num = Fraction(1)
        if updating:
            updates += 1
            w = _batch_weight(case.momentum, sem, declared, updates)
            debias = 1 - (1 - w_steady) ** updates if sem.ema_debias else Fraction(1)
            unbiased = sem.running_var_update == "unbiased"
            var_in = [_mul(v, factor) if unbiased else v for v in var_b]
            hidden_mean = [h * (1 - w) + b * w for h, b in zip(hidden_mean, mean_b)]
            hidden_var = [_add(h * (1 - w), _mul(b, w)) for h, b in zip(hidden_var, var_in)]
            w_stats = _div(w, debias)  # decay 1 (momentum 0) never debiases: 0/0, as in NumPy
            var_factor_running = factor if unbiased else Fraction(1)
        scale = 1 - (1 - w_steady) ** updates if sem.ema_debias and updates > 0 else Fraction(1)
        read_mean = [_div(h, scale) for h in hidden_mean]
        read_var = [_div(h, scale) for h in hidden_var]
        if track:
            q["running_mean"], q["running_var"] = read_mean, read_var
        if source == "running":
            mean_s, var_s = read_mean, read_var
            w_mean, w_var = w_stats, _mul(w_stats, var_factor_running)
        else:
            c = factor if sem.normalize_var == "unbiased" else Fraction(1)
            mean_s, var_s = mean_b, [_mul(v, c) for v in var_b]
            w_mean, w_var = Fraction(1), c
        r, dr = zip(*(_inv_std(v, eps, sem.eps_placement) for v in var_s))
        xhat = [[_mul(v - m, rc) for v in xc] for xc, m, rc in zip(x, mean_s, r)]
        q["y"] = [
            [_add(_mul(h, gamma[c]), beta[c]) for h in xh] if gamma and beta else xh
            for c, xh in enumerate(xhat)
        ]
        if g is not None:
            q.update(_gradients(x, g, mean_s, r, dr, w_mean, w_var, mean_b or mean_s, xhat, gamma))
        out.append(q)
    return out


def _gradients(
    x: Channels, g: Channels, mean_s: list[Num], r: tuple[Num, ...], dr: tuple[Num, ...],
    w_mean: Num, w_var: Num, mean_b: list[Num], xhat: Channels, gamma: list[Fraction] | None,
) -> dict:
    """dx, dgamma, dbeta of sum(g * y), y = gamma (x - mean_s) r(var_s) + beta; mean_s moves
    with the batch mean by w_mean, var_s with the biased batch variance by w_var (d var_b / dx_i
    = 2 (x_i - mean_b) / n)."""
    dx: Channels = []
    for c, (xc, gc) in enumerate(zip(x, g)):
        n = len(xc)
        gm = gamma[c] if gamma else Fraction(1)
        g_mean = sum(gc, Fraction(0)) / n
        gx_mean = sum((gv * (v - mean_s[c]) for gv, v in zip(gc, xc)), Fraction(0)) / n
        row = [_mul(_mul(gm, r[c]), gv - _mul(w_mean, g_mean)) for gv in gc]
        if w_var != 0:
            k = _mul(_mul(_mul(2 * gm, w_var), dr[c]), gx_mean)
            row = [_add(d, _mul(k, v - mean_b[c])) for d, v in zip(row, xc)]
        dx.append(row)
    if gamma is None:
        return {"dx": dx}
    dbeta = [sum(gc, Fraction(0)) for gc in g]
    dgamma = [_sum(_mul(gv, h) for gv, h in zip(gc, xh)) for gc, xh in zip(g, xhat)]
    return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _inv_std(var: Num, eps: Fraction, placement: str) -> tuple[Num, Num]:
    """r = 1/sqrt(var + eps) or 1/(sqrt(var) + eps), and dr/dvar."""
    if placement == "inside_sqrt":
        root = _sqrt(_add(var, eps))
        r = _div(Fraction(1), root)
        return r, _mul(_mul(r, _mul(r, r)), Fraction(-1, 2))
    root = _sqrt(var)
    den = _add(root, eps)
    r = _div(Fraction(1), den)
    return r, _div(Fraction(-1), _mul(_mul(den, den), _mul(root, Fraction(2))))


def sqrt_fraction(v: Fraction, bits: int = SQRT_BITS) -> Fraction:
    """sqrt(v) to within a relative 2^-bits, from an integer square root."""
    if v < 0:
        raise ValueError("square root of a negative number")
    if v == 0:
        return Fraction(0)
    p, q = v.numerator, v.denominator
    return Fraction(math.isqrt(p * q << (2 * bits)), q << bits)


def _sqrt(v: Num) -> Num:
    if isinstance(v, float):
        return math.sqrt(v) if v >= 0 else math.nan
    return sqrt_fraction(v)


# IEEE semantics for the few places a NaN or an infinity can appear (NumPy's, in the reference).
def _finite(v: Num) -> bool:
    return isinstance(v, Fraction) or math.isfinite(v)


def _mul(a: Num, b: Num) -> Num:
    if _finite(a) and _finite(b):
        return a * b
    return float(a) * float(b)


def _add(a: Num, b: Num) -> Num:
    if _finite(a) and _finite(b):
        return a + b
    return float(a) + float(b)


def _div(a: Num, b: Num) -> Num:
    if _finite(a) and _finite(b) and b != 0:
        return a / b
    if b == 0:
        a = float(a)
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return float(a) / float(b)


def _sum(values) -> Num:  # type: ignore[no-untyped-def]
    total: Num = Fraction(0)
    for v in values:
        total = _add(total, v)
    return total


def _float(v: Num) -> float:
    return float(v)  # Fraction.__float__ rounds correctly (integer true division)


def _stats_source(step: Step, sem: Semantics, track: bool) -> str:
    if step.mode == "train" and step.frozen:
        if sem.frozen_train_stats is None:
            raise UnsupportedFeature("these semantics have no notion of a frozen layer")
        source = sem.frozen_train_stats
    elif step.mode == "train":
        source = sem.train_stats
    else:
        source = sem.eval_stats
    return source if track else "batch"


def _batch_weight(momentum: float | None, sem: Semantics, declared: str, updates: int) -> Fraction:
    """The exact weight of the batch statistic in the update number ``updates``."""
    if sem.first_update == "replace" and updates == 1:
        return Fraction(1)
    if momentum is None:
        return Fraction(1, updates)
    m = Fraction(momentum)
    passed = m if declared == "batch" else 1 - m
    return passed if sem.momentum_weights == "batch" else 1 - passed


def _dtypes(sem: Semantics, case: Case) -> tuple[str, str]:
    state = {"input": case.dtype, "float32": "float32", "parameters": case.param_dtype,
             "promote_float32": more_precise(case.dtype, "float32")}[sem.state_dtype]
    output = {"input": case.dtype, "parameters": case.param_dtype, "state": state}[
        sem.output_dtype
    ]
    return output, state


def _channels(a: np.ndarray) -> Channels:
    c = a.shape[1]
    return [[Fraction(v) for v in row] for row in np.moveaxis(a, 1, 0).reshape(c, -1).tolist()]


def _to_array(channels: Channels, shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array([[_float(v) for v in row] for row in channels], dtype=np.float64)
    moved = (shape[1], shape[0], *shape[2:])
    return np.moveaxis(flat.reshape(moved), 0, 1)
