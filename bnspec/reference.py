"""The NumPy reference: any :class:`Semantics` applied to a :class:`Case`.

``reference(case, semantics)`` gives the exact semantics in float64 (two-pass variance whatever
the profile's numerics knobs say: they change rounding, not meaning). ``emulate(case, semantics)``
performs the same computation in the dtypes the profile's numerics knobs name (``variance_algorithm``,
``compute_dtype``, ``normalize_dtype``, ``output_dtype``, ``state_dtype``), so that the size of a
low-precision divergence can be predicted rather than guessed. Gradients are always exact float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnspec.case import Case, Step, StepResult
from bnspec.case import Result as Result
from bnspec.dtypes import more_precise, np_dtype
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.semantics import MomentumWeights, Semantics


@dataclass(frozen=True)
class _Arith:
    """Where each part of the computation is rounded. Exact semantics: float64 throughout."""

    compute: str
    normalize: str
    output: str
    state: str
    algorithm: str

    def cast(self, a: np.ndarray | float, dtype: str) -> np.ndarray:
        # copy=False: a cast to the dtype an array already has is free (the exact path's case);
        # nothing below writes into an array it did not allocate itself.
        return np.asarray(a, dtype=np.float64).astype(np_dtype(dtype), copy=False)

    def channel_mean(self, a: np.ndarray, axes: tuple[int, ...], n: int) -> np.ndarray:
        dt = np_dtype(self.compute)
        total = np.sum(a.astype(dt, copy=False), axis=axes, dtype=dt, keepdims=True)
        return (total / dt.type(n)).astype(dt)


EXACT = _Arith("float64", "float64", "float64", "float64", "two_pass")


def arithmetic_of(semantics: Semantics, case: Case) -> _Arith:
    """The rounding points a profile's numerics knobs imply for this case's dtypes."""
    dtype, params = case.dtype, case.param_dtype
    compute = {
        "input": dtype,
        "float32": "float32",
        "promote_float32": more_precise(dtype, "float32"),
    }[semantics.compute_dtype]
    state = {"input": dtype, "float32": "float32", "parameters": params,
             "promote_float32": more_precise(dtype, "float32")}[semantics.state_dtype]
    output = {"input": dtype, "parameters": params, "state": state}[semantics.output_dtype]
    normalize = dtype if semantics.normalize_dtype == "input" else compute
    return _Arith(compute, normalize, output, state, semantics.variance_algorithm)


def reference(case: Case, semantics: Semantics, *, passed_as: MomentumWeights | None = None) -> Result:
    """Exact float64 semantics.

    ``passed_as`` is the momentum convention the adapter translated the case's momentum into
    (its *declared* profile's); it defaults to ``semantics.momentum_weights``. Attribution sets
    it to model an implementation that misreads the value it was given.
    """
    return _run(case, semantics, EXACT, passed_as)


def emulate(case: Case, semantics: Semantics, *, passed_as: MomentumWeights | None = None) -> Result:
    """The profile's numerics performed in low precision (float16, bfloat16, float32)."""
    return _run(case, semantics, arithmetic_of(semantics, case), passed_as)


def _run(case: Case, sem: Semantics, ar: _Arith, passed_as: MomentumWeights | None) -> Result:
    declared = passed_as or sem.momentum_weights
    created = "float32" if sem.state_dtype == "promote_float32" and ar is not EXACT else ar.state
    hidden_mean = ar.cast(ar.cast(case.running_mean, created), ar.state)  # loaded into its creation dtype
    hidden_var = ar.cast(ar.cast(case.running_var, created), ar.state)
    updates = 0
    w_steady = _batch_weight(case.momentum, sem, declared, 2)  # the EMA weight after step 1
    out: list[StepResult] = []
    meta_dtype = ar.output if ar is not EXACT else arithmetic_of(sem, case).output
    state_dtype = arithmetic_of(sem, case).state
    for step in case.steps:
        x = step.x
        axes = (0, *range(2, x.ndim))
        n = x.size // x.shape[1]
        source = _stats_source(step, sem, case.track_running_stats)
        updating = step.updates_running and case.track_running_stats and sem.running_update == "ema"
        needs_batch = source != "running" or updating
        dev_b = None  # x - batch mean, kept by the exact path for normalizing and the gradients
        res = StepResult(y=np.empty(0), y_dtype=meta_dtype, running_dtype=state_dtype)
        if needs_batch:
            if n == 1 and sem.single_value == "error":
                raise SingleValueError(
                    f"one value per channel in a batch of shape {x.shape} (single_value=error)"
                )
            if ar is EXACT and ar.algorithm == "two_pass":
                mean_b, var_b, dev_b = _exact_batch_stats(x, n)
            else:
                mean_b, var_b = _batch_stats(ar.cast(x, ar.compute), axes, n, ar)
            factor = n / (n - 1) if n > 1 else (1.0 if sem.single_value == "allowed" else np.inf)
            res.batch_mean, res.batch_var = _flat(mean_b), _flat(var_b)
        w_stats = 0.0  # d(statistic used to normalize) / d(batch statistic)
        var_factor_running = 1.0
        if updating:
            updates += 1
            w = _batch_weight(case.momentum, sem, declared, updates)
            debias = (1.0 - (1.0 - w_steady) ** updates) if sem.ema_debias else 1.0
            var_in = var_b * factor if sem.running_var_update == "unbiased" else var_b
            hidden_mean = _blend(hidden_mean, mean_b, w, ar)
            hidden_var = _blend(hidden_var, var_in, w, ar)
            with np.errstate(divide="ignore", invalid="ignore"):  # decay 1 never debiases: 0/0
                w_stats = float(np.float64(w) / np.float64(debias))
            var_factor_running = factor if sem.running_var_update == "unbiased" else 1.0
        read_mean, read_var = _read(hidden_mean, hidden_var, sem, updates, w_steady)
        if case.track_running_stats:
            res.running_mean, res.running_var = _flat(read_mean), _flat(read_var)
        if source == "running":
            mean_s, var_s = read_mean.reshape(_bshape(x)), read_var.reshape(_bshape(x))
            mean_s, var_s = mean_s.astype(np.float64), var_s.astype(np.float64)
            w_mean, w_var = w_stats, w_stats * var_factor_running
        else:
            c = factor if sem.normalize_var == "unbiased" else 1.0
            mean_s, var_s = mean_b, var_b * c
            w_mean, w_var = 1.0, c
        res.norm_mean, res.norm_var = _flat(mean_s).astype(np.float64), _flat(var_s).astype(np.float64)
        dev = dev_b if source != "running" else None  # the batch mean normalizes: reuse x - mean
        res.y = _normalize(x, mean_s, var_s, case, sem, ar, dev=dev)
        if step.grad_output is not None:
            _gradients(res, step, mean_s, var_s, w_mean, w_var, mean_b if needs_batch else mean_s, case, sem,
                       dev=dev)
        out.append(res)
    return Result(out, {"reference": "exact" if ar is EXACT else f"emulated:{ar.compute}"})


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


def _batch_stats(
    x: np.ndarray, axes: tuple[int, ...], n: int, ar: _Arith
) -> tuple[np.ndarray, np.ndarray]:
    mean = ar.channel_mean(x, axes, n)
    if ar.algorithm == "two_pass":
        dev = x - mean
        var = ar.channel_mean(np.square(dev, out=dev), axes, n)
    else:  # E[x^2] - E[x]^2, the one-pass form that cancels when |mean| >> std
        var = ar.channel_mean(x * x, axes, n) - mean * mean
        if ar.algorithm == "one_pass_clamped":
            var = np.maximum(var, 0)
    return mean.astype(np.float64), var.astype(np.float64)


def _exact_batch_stats(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-pass float64 mean and biased variance, and x - mean (kept: normalizing and the
    gradients need it again)."""
    shape = _bshape(x)
    x = np.asarray(x, dtype=np.float64)
    mean = (np.sum(x, axis=(0, *range(2, x.ndim)), keepdims=True) / n).reshape(shape)
    dev = x - mean
    var = (_channel_dot(dev, dev) / n).reshape(shape)
    return mean, var, dev


def _batch_weight(momentum: float | None, sem: Semantics, declared: str, updates: int) -> float:
    if sem.first_update == "replace" and updates == 1:
        return 1.0
    if momentum is None:  # PyTorch momentum=None: cumulative moving average
        return 1.0 / updates
    passed = momentum if declared == "batch" else 1.0 - momentum
    return passed if sem.momentum_weights == "batch" else 1.0 - passed


def _blend(hidden: np.ndarray, batch: np.ndarray, w: float, ar: _Arith) -> np.ndarray:
    st = np_dtype(ar.state)
    b = ar.cast(_flat(batch), ar.state)
    return (hidden * st.type(1.0 - w) + b * st.type(w)).astype(st)


def _read(
    hidden_mean: np.ndarray, hidden_var: np.ndarray, sem: Semantics, updates: int, w_steady: float
) -> tuple[np.ndarray, np.ndarray]:
    if not (sem.ema_debias and updates > 0):
        return hidden_mean.astype(np.float64), hidden_var.astype(np.float64)
    scale = 1.0 - (1.0 - w_steady) ** updates
    return hidden_mean.astype(np.float64) / scale, hidden_var.astype(np.float64) / scale


def _normalize(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, case: Case, sem: Semantics, ar: _Arith,
    dev: np.ndarray | None = None,
) -> np.ndarray:
    eps = max(case.eps, sem.effective_eps_floor)
    shape = _bshape(x)
    mean = ar.cast(mean.reshape(shape), ar.compute)
    var = ar.cast(var.reshape(shape), ar.compute)
    if sem.eps_placement == "inside_sqrt":
        inv = 1 / np.sqrt(var + np_dtype(ar.compute).type(eps))
    else:
        inv = 1 / (np.sqrt(var) + np_dtype(ar.compute).type(eps))
    if ar is EXACT and dev is not None:  # float64 throughout: y = (x - mean) * (inv * gamma) + beta
        scale = inv * case.gamma.reshape(shape) if case.gamma is not None else inv
        y = np.multiply(dev, scale)
        if case.beta is not None:
            y += case.beta.reshape(shape)
        return y
    mean, inv = ar.cast(mean, ar.normalize), ar.cast(inv, ar.normalize)
    # In place on the one array allocated here: the same roundings as y = (x - mean) * inv ...
    y = np.subtract(ar.cast(x, ar.normalize), mean)
    y *= inv
    if case.gamma is not None and case.beta is not None:
        y *= ar.cast(case.gamma.reshape(shape), ar.normalize)
        y += ar.cast(case.beta.reshape(shape), ar.normalize)
    return ar.cast(y.astype(np.float64, copy=False), ar.output).astype(np.float64, copy=False)


def _gradients(
    res: StepResult,
    step: Step,
    mean_s: np.ndarray,
    var_s: np.ndarray,
    w_mean: float,
    w_var: float,
    mean_b: np.ndarray,
    case: Case,
    sem: Semantics,
    dev: np.ndarray | None = None,
) -> None:
    """dx, dgamma, dbeta of y = gamma (x - mean_s) r(var_s) + beta, exact float64.

    The statistics used to normalize depend on the batch through w_mean (d mean_s / d mean_b)
    and w_var (d var_s / d biased batch var): 1 and c for batch statistics, the EMA weight for
    running statistics that include this step's update, 0 for fixed running statistics.
    """
    x, g = step.x, step.grad_output
    assert g is not None
    axes = (0, *range(2, x.ndim))
    shape = _bshape(x)
    eps = max(case.eps, sem.effective_eps_floor)
    mean_s, var_s = mean_s.reshape(shape), var_s.reshape(shape)
    if sem.eps_placement == "inside_sqrt":
        r = 1 / np.sqrt(var_s + eps)
        dr = -0.5 * (var_s + eps) ** -1.5
    else:
        root = np.sqrt(var_s)
        r = 1 / (root + eps)
        with np.errstate(divide="ignore"):
            dr = -1 / ((root + eps) ** 2 * 2 * root)
    gamma = case.gamma.reshape(shape) if case.gamma is not None else 1.0
    n = x.size // x.shape[1]
    dev = dev if dev is not None else x - mean_s  # a given dev (the batch's) is ours to overwrite
    g_sum = g.sum(axis=axes, keepdims=True)
    g_dev = _channel_dot(g, dev).reshape(shape)  # sum(g (x - mean_s)) per channel
    gr = gamma * r
    # dx = gamma r (g - w_mean mean(g)) + 2 gamma w_var r' (x - mean_b) mean(g (x - mean_s)),
    # built in place: the batch-sized arrays are dev and dx only.
    dx = g * gr
    dx -= gr * (w_mean * g_sum / n)
    if w_var:
        coef = 2 * gamma * w_var * dr * (g_dev / n)
        base = dev if np.array_equal(mean_b.reshape(shape), mean_s) else x - mean_b.reshape(shape)
        dx += np.multiply(base, coef, out=base)  # base is ours: dev is not needed any more
    res.dx = dx
    res.dbeta = _flat(g_sum) if case.affine else None
    res.dgamma = _flat(r) * _flat(g_dev) if case.affine else None  # sum(g xhat) = r sum(g (x - mean_s))


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum over every axis but the channel axis of a * b, in one pass (no product array)."""
    n, c = a.shape[0], a.shape[1]
    return np.einsum("ncs,ncs->c", a.reshape(n, c, -1), b.reshape(n, c, -1))


def _bshape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(-1)
