"""The NumPy reference: any :class:`Semantics` applied to a :class:`Case`.

``reference(case, semantics)`` gives the exact semantics in float64 (two-pass variance whatever
the profile's numerics knobs say: they change rounding, not meaning). ``emulate(case, semantics)``
performs the same computation in the dtypes the profile's numerics knobs name (``variance_algorithm``,
``compute_dtype``, ``normalize_dtype``, ``output_dtype``, ``state_dtype``), so that the size of a
low-precision divergence can be predicted rather than guessed. Gradients are always exact float64.

What each step does (statistics, updates, weights, factors, eps, dtypes) is the step plan's
(:mod:`bnspec.plan`); this module only does the arithmetic, the float64 passes in
:mod:`bnspec.kernel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnspec.case import Case, StepResult
from bnspec.case import Result as Result
from bnspec.dtypes import np_dtype
from bnspec.kernel import Affine, Batch, Linear, channel_sum
from bnspec.plan import Dtypes, Plan, StepPlan, make_plan
from bnspec.semantics import MomentumWeights, Semantics


@dataclass(frozen=True)
class _Arith:
    """Where each part of the computation is rounded. Exact semantics: float64 throughout."""

    compute: str
    normalize: str
    output: str
    state: str
    created: str
    algorithm: str
    affine_form: str = "centered"
    replica_var: str = "two_pass"

    def cast(self, a: np.ndarray | float, dtype: str) -> np.ndarray:
        # copy=False: a cast to the dtype an array already has is free (the exact path's case);
        # nothing below writes into an array it did not allocate itself.
        return np.asarray(a, dtype=np.float64).astype(np_dtype(dtype), copy=False)

    def channel_mean(self, a: np.ndarray, axes: tuple[int, ...], n: int) -> np.ndarray:
        dt = np_dtype(self.compute)
        total = np.sum(a.astype(dt, copy=False), axis=axes, dtype=dt, keepdims=True)
        return (total / dt.type(n)).astype(dt)


EXACT = _Arith("float64", "float64", "float64", "float64", "float64", "two_pass")


def _emulated(d: Dtypes) -> _Arith:
    return _Arith(d.compute, d.normalize, d.output, d.state, d.created, d.algorithm, d.affine_form,
                  d.replica_var)


def reference(case: Case, semantics: Semantics, *, passed_as: MomentumWeights | None = None) -> Result:
    """Exact float64 semantics.

    ``passed_as`` is the momentum convention the adapter translated the case's momentum into
    (its *declared* profile's); it defaults to ``semantics.momentum_weights``. Attribution sets
    it to model an implementation that misreads the value it was given.
    """
    return _run(case, make_plan(case, semantics, passed_as=passed_as), EXACT)


def emulate(case: Case, semantics: Semantics, *, passed_as: MomentumWeights | None = None) -> Result:
    """The profile's numerics performed in low precision (float16, bfloat16, float32)."""
    plan = make_plan(case, semantics, passed_as=passed_as)
    return _run(case, plan, _emulated(plan.dtypes))


# NaN and Inf inputs, a zero variance under eps=0, float16 overflow: the cases that pin IEEE
# propagation are computed on purpose, and give NaN or Inf as the spec says, not a warning.
@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def _run(case: Case, plan: Plan, ar: _Arith) -> Result:
    if plan.replica is not None:
        from bnspec.replicas import run_replicas  # the same arithmetic, one shard at a time

        return run_replicas(case, plan, ar)
    exact = ar is EXACT
    hidden_mean = ar.cast(ar.cast(case.running_mean, ar.created), ar.state)  # loaded into its creation dtype
    hidden_var = ar.cast(ar.cast(case.running_var, ar.created), ar.state)
    out: list[StepResult] = []
    for step, sp in zip(case.steps, plan.steps, strict=True):
        x, g, n = step.x, step.grad_output, sp.n
        res = StepResult(y=np.empty(0), y_dtype=plan.dtypes.output, running_dtype=plan.dtypes.state)
        batch = Batch(x, g) if exact or g is not None else None
        g_sums_b = None  # sum(g), sum(g (x - batch mean)): the exact statistics pass has them
        mean_b = var_b = np.empty(0)
        if sp.needs_batch:
            if exact and batch is not None:  # two-pass float64
                mean_b = np.divide(channel_sum(batch.x3), n).reshape(_bshape(x))
                sq, g_sums_b = batch.sums(mean_b, squares=True)
                assert sq is not None
                var_b = (sq / n).reshape(_bshape(x))
            else:
                mean_b, var_b = _batch_stats(ar.cast(x, ar.compute), n, ar)
            res.batch_mean, res.batch_var = _flat(mean_b), _flat(var_b)
        if sp.updating:
            w = float(sp.weight)
            hidden_mean = _blend(hidden_mean, mean_b, w, ar)
            hidden_var = _blend(hidden_var, var_b * float(sp.running_var_factor), w, ar)
        read_mean, read_var = _read(hidden_mean, hidden_var, sp)
        if plan.track:
            res.running_mean, res.running_var = _flat(read_mean), _flat(read_var)
        if sp.source == "running":
            mean_s = read_mean.reshape(_bshape(x)).astype(np.float64)
            var_s = read_var.reshape(_bshape(x)).astype(np.float64)
        else:
            mean_s, var_s = mean_b, var_b * float(sp.normalize_var_factor)
        res.norm_mean, res.norm_var = _flat(mean_s).astype(np.float64), _flat(var_s).astype(np.float64)
        grad = None
        if g is not None:
            assert batch is not None
            g_sum, g_dev = g_sums_b if sp.source != "running" and g_sums_b is not None else batch.g_sums(mean_s)
            grad = _gradient_terms(res, g_sum, g_dev, mean_s, var_s, mean_b if sp.needs_batch else mean_s,
                                   sp, plan, case)
        if exact:
            assert batch is not None
            y, res.dx = batch.finish(_exact_affine(mean_s, var_s, case, plan), grad)
            assert y is not None
            res.y = y
        else:
            res.y = _normalize(x, mean_s, var_s, case, plan, ar)
            if batch is not None and grad is not None:
                res.dx = batch.finish(None, grad)[1]
        out.append(res)
    return Result(out, {"reference": "exact" if exact else f"emulated:{ar.compute}"})


def _batch_stats(x: np.ndarray, n: int, ar: _Arith) -> tuple[np.ndarray, np.ndarray]:
    axes = (0, *range(2, x.ndim))
    mean = ar.channel_mean(x, axes, n)
    if ar.algorithm == "two_pass":
        dev = x - mean
        var = ar.channel_mean(np.square(dev, out=dev), axes, n)
    else:  # E[x^2] - E[x]^2, the one-pass form that cancels when |mean| >> std
        var = ar.channel_mean(x * x, axes, n) - mean * mean
        if ar.algorithm == "one_pass_clamped":
            var = np.maximum(var, 0)
    return mean.astype(np.float64), var.astype(np.float64)


def _blend(hidden: np.ndarray, batch: np.ndarray, w: float, ar: _Arith) -> np.ndarray:
    st = np_dtype(ar.state)
    b = ar.cast(_flat(batch), ar.state)
    return (hidden * st.type(1.0 - w) + b * st.type(w)).astype(st)


def _read(hidden_mean: np.ndarray, hidden_var: np.ndarray, sp: StepPlan) -> tuple[np.ndarray, np.ndarray]:
    if sp.debias == 1:
        return hidden_mean.astype(np.float64), hidden_var.astype(np.float64)
    scale = float(sp.debias)
    return hidden_mean.astype(np.float64) / scale, hidden_var.astype(np.float64) / scale


def _normalize(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, case: Case, plan: Plan, ar: _Arith
) -> np.ndarray:
    """y in the dtypes of an emulated profile (the exact path: _exact_affine and Batch.finish)."""
    shape = _bshape(x)
    mean = ar.cast(mean.reshape(shape), ar.compute)
    inv = _inv_std(ar.cast(var.reshape(shape), ar.compute), plan)
    mean, inv = ar.cast(mean, ar.normalize), ar.cast(inv, ar.normalize)
    if ar.affine_form == "folded":
        return ar.cast(_folded(ar.cast(x, ar.normalize), mean, inv, case, ar).astype(np.float64, copy=False),
                       ar.output).astype(np.float64, copy=False)
    # In place on the one array allocated here: the same roundings as y = (x - mean) * inv ...
    y = np.subtract(ar.cast(x, ar.normalize), mean)
    y *= inv
    if case.gamma is not None and case.beta is not None:
        y *= ar.cast(case.gamma.reshape(shape), ar.normalize)
        y += ar.cast(case.beta.reshape(shape), ar.normalize)
    return ar.cast(y.astype(np.float64, copy=False), ar.output).astype(np.float64, copy=False)


def _folded(x: np.ndarray, mean: np.ndarray, inv: np.ndarray, case: Case, ar: _Arith) -> np.ndarray:
    """y = x * s + (beta - mean * s), s = gamma * inv, each rounded in the normalize dtype: the
    per-channel scale and shift a kernel precomputes so that each element costs one multiply-add.
    Where |mean| >> std, x * s and the shift are large and cancel: their roundings stay in y. (A
    fused multiply-add drops the rounding of x * s; the bounds allow for either.)"""
    s = inv if case.gamma is None else inv * ar.cast(case.gamma.reshape(inv.shape), ar.normalize)
    shift = -(mean * s) if case.beta is None else ar.cast(case.beta.reshape(inv.shape), ar.normalize) - mean * s
    y = x * s
    y += shift
    return y


def _inv_std(var: np.ndarray, plan: Plan) -> np.ndarray:
    """r = 1/sqrt(var + eps), or 1/(sqrt(var) + eps) with eps outside the root; eps rounded to
    var's dtype (the dtype the normalisation runs in)."""
    eps = var.dtype.type(plan.eps_float)
    if plan.eps_placement == "inside_sqrt":
        return 1 / np.sqrt(var + eps)
    return 1 / (np.sqrt(var) + eps)


def _exact_affine(mean: np.ndarray, var: np.ndarray, case: Case, plan: Plan) -> Affine:
    """The float64 normalization as one scale per channel: y = (x - mean) * (gamma r) + beta."""
    inv = _inv_std(var, plan)
    scale = inv * case.gamma.reshape(inv.shape) if case.gamma is not None else inv
    return Affine(mean, scale, None if case.beta is None else case.beta.reshape(inv.shape))


def _gradient_terms(
    res: StepResult,
    g_sum: np.ndarray,
    g_dev: np.ndarray,
    mean_s: np.ndarray,
    var_s: np.ndarray,
    mean_b: np.ndarray,
    sp: StepPlan,
    plan: Plan,
    case: Case,
) -> Linear:
    """dgamma, dbeta (set on res) and the per-channel terms of dx for y = gamma (x - mean_s)
    r(var_s) + beta, exact float64, from sum(g) and sum(g (x - mean_s)) per channel.

    The statistics used to normalize depend on the batch through the plan's w_mean (d mean_s /
    d mean_b) and w_var (d var_s / d biased batch var).
    """
    shape, n = mean_s.shape, sp.n
    eps = plan.eps_float
    w_mean, w_var = float(sp.w_mean), float(sp.w_var)
    g_sum, g_dev = g_sum.reshape(shape), g_dev.reshape(shape)
    r = _inv_std(var_s, plan)
    # r'/r, formed directly: r' itself is below float64's range where r is merely small
    if plan.eps_placement == "inside_sqrt":
        dlog_r = -0.5 / (var_s + eps)
    else:
        root = np.sqrt(var_s)
        with np.errstate(divide="ignore"):
            dlog_r = -1 / ((root + eps) * 2 * root)
    gamma = case.gamma.reshape(shape) if case.gamma is not None else 1.0
    res.dbeta = _flat(g_sum) if case.affine else None
    res.dgamma = _flat(r) * _flat(g_dev) if case.affine else None  # sum(g xhat) = r sum(g (x - mean_s))
    # dx = gamma r (g - w_mean mean(g) + 2 w_var (r'/r) (x - mean_b) mean(g (x - mean_s)))
    coef = 2 * w_var * dlog_r * (g_dev / n) if w_var else None
    return Linear(gamma * r, w_mean * g_sum / n, mean_b if mean_b.shape == shape else mean_b.reshape(shape), coef)


def _bshape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(-1)
