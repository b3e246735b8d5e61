"""The NumPy reference: any :class:`Semantics` applied to a :class:`Case`.

``reference(case, semantics)`` gives the exact semantics in float64 (two-pass variance whatever
the profile's numerics knobs say: they change rounding, not meaning). ``emulate(case, semantics)``
performs the same computation in the dtypes the profile's numerics knobs name (``variance_algorithm``,
``compute_dtype``, ``normalize_dtype``, ``output_dtype``, ``state_dtype``), so that the size of a
low-precision divergence can be predicted rather than guessed. Gradients are always exact float64.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
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
        res = StepResult(y=np.empty(0), y_dtype=meta_dtype, running_dtype=state_dtype)
        g = step.grad_output
        batch = _Batch(x, g) if ar is EXACT or g is not None else None
        g_sums_b = None  # sum(g), sum(g (x - batch mean)): the exact statistics pass has them
        if needs_batch:
            if n == 1 and sem.single_value == "error":
                raise SingleValueError(
                    f"one value per channel in a batch of shape {x.shape} (single_value=error)"
                )
            if ar is EXACT and batch is not None:  # two-pass float64
                mean_b = (_channel_sum(batch.x3) / n).reshape(_bshape(x))
                sq, g_sums_b = batch.sums(mean_b, squares=True)
                var_b = (sq / n).reshape(_bshape(x))
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
        grad = None
        if g is not None:
            assert batch is not None
            g_sum, g_dev = g_sums_b if source != "running" and g_sums_b is not None else batch.g_sums(mean_s)
            grad = _gradient_terms(res, g_sum, g_dev, mean_s, var_s, w_mean, w_var,
                                   mean_b if needs_batch else mean_s, n, case, sem)
        if ar is EXACT:
            assert batch is not None
            y, res.dx = batch.finish(_exact_affine(mean_s, var_s, case, sem), grad)
            assert y is not None
            res.y = y
        else:
            res.y = _normalize(x, mean_s, var_s, case, sem, ar)
            if batch is not None and grad is not None:
                res.dx = batch.finish(None, grad)[1]
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
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, case: Case, sem: Semantics, ar: _Arith
) -> np.ndarray:
    """y in the dtypes of an emulated profile (the exact path: _exact_affine and _Batch.finish)."""
    shape = _bshape(x)
    mean = ar.cast(mean.reshape(shape), ar.compute)
    inv = _inv_std(ar.cast(var.reshape(shape), ar.compute), case, sem)
    mean, inv = ar.cast(mean, ar.normalize), ar.cast(inv, ar.normalize)
    # In place on the one array allocated here: the same roundings as y = (x - mean) * inv ...
    y = np.subtract(ar.cast(x, ar.normalize), mean)
    y *= inv
    if case.gamma is not None and case.beta is not None:
        y *= ar.cast(case.gamma.reshape(shape), ar.normalize)
        y += ar.cast(case.beta.reshape(shape), ar.normalize)
    return ar.cast(y.astype(np.float64, copy=False), ar.output).astype(np.float64, copy=False)


@dataclass(frozen=True)
class _Affine:
    """y = (x - mean) * scale + shift per channel; shift None without affine parameters."""

    mean: np.ndarray
    scale: np.ndarray
    shift: np.ndarray | None


@dataclass(frozen=True)
class _Linear:
    """dx = g * gr - k + (x - mean) * coef per channel; coef None when the statistics used to
    normalize do not depend on the batch."""

    gr: np.ndarray
    k: np.ndarray
    mean: np.ndarray
    coef: np.ndarray | None


def _inv_std(var: np.ndarray, case: Case, sem: Semantics) -> np.ndarray:
    """r = 1/sqrt(var + eps), or 1/(sqrt(var) + eps) with eps outside the root; eps floored as
    the profile floors it and rounded to var's dtype (the dtype the normalisation runs in)."""
    eps = var.dtype.type(max(case.eps, sem.effective_eps_floor))
    if sem.eps_placement == "inside_sqrt":
        return 1 / np.sqrt(var + eps)
    return 1 / (np.sqrt(var) + eps)


def _exact_affine(mean: np.ndarray, var: np.ndarray, case: Case, sem: Semantics) -> _Affine:
    """The float64 normalization as one scale per channel: y = (x - mean) * (gamma r) + beta."""
    inv = _inv_std(var, case, sem)
    scale = inv * case.gamma.reshape(inv.shape) if case.gamma is not None else inv
    return _Affine(mean, scale, None if case.beta is None else case.beta.reshape(inv.shape))


def _gradient_terms(
    res: StepResult,
    g_sum: np.ndarray,
    g_dev: np.ndarray,
    mean_s: np.ndarray,
    var_s: np.ndarray,
    w_mean: float,
    w_var: float,
    mean_b: np.ndarray,
    n: int,
    case: Case,
    sem: Semantics,
) -> _Linear:
    """dgamma, dbeta (set on res) and the per-channel terms of dx for y = gamma (x - mean_s)
    r(var_s) + beta, exact float64, from sum(g) and sum(g (x - mean_s)) per channel.

    The statistics used to normalize depend on the batch through w_mean (d mean_s / d mean_b)
    and w_var (d var_s / d biased batch var): 1 and c for batch statistics, the EMA weight for
    running statistics that include this step's update, 0 for fixed running statistics.
    """
    shape = mean_s.shape
    eps = max(case.eps, sem.effective_eps_floor)
    g_sum, g_dev = g_sum.reshape(shape), g_dev.reshape(shape)
    r = _inv_std(var_s, case, sem)
    if sem.eps_placement == "inside_sqrt":
        dr = -0.5 * (var_s + eps) ** -1.5
    else:
        root = np.sqrt(var_s)
        with np.errstate(divide="ignore"):
            dr = -1 / ((root + eps) ** 2 * 2 * root)
    gamma = case.gamma.reshape(shape) if case.gamma is not None else 1.0
    res.dbeta = _flat(g_sum) if case.affine else None
    res.dgamma = _flat(r) * _flat(g_dev) if case.affine else None  # sum(g xhat) = r sum(g (x - mean_s))
    # dx = gamma r (g - w_mean mean(g)) + 2 gamma w_var r' (x - mean_b) mean(g (x - mean_s))
    gr = gamma * r
    coef = 2 * gamma * w_var * dr * (g_dev / n) if w_var else None
    return _Linear(gr, gr * (w_mean * g_sum / n), mean_b if mean_b.shape == shape else mean_b.reshape(shape), coef)


class _Batch:
    """One step's float64 x (and upstream gradient g) viewed as (N, C, S) and walked a block at
    a time (see _blocks): x - mean is formed in cache where a pass needs it, never stored whole,
    and the only batch-sized arrays allocated are the outputs."""

    def __init__(self, x: np.ndarray, g: np.ndarray | None) -> None:
        self.shape = x.shape
        self.x3 = _view3(np.asarray(x, dtype=np.float64))
        self.g3 = None if g is None else _view3(np.asarray(g, dtype=np.float64))
        self.blocks = list(_blocks(self.x3))
        size = max(self.x3[bn, bc].size for bn, bc in self.blocks)
        self._dev, self._tmp = np.empty(size), np.empty(size)

    def _deviation(self, bn: slice, bc: slice, mean_rows: np.ndarray) -> np.ndarray:
        xb = self.x3[bn, bc]
        return np.subtract(xb, mean_rows[:, bc], out=self._dev[: xb.size].reshape(xb.shape))

    def sums(
        self, mean: np.ndarray, *, squares: bool
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """One pass: per channel sum((x - mean)^2) (if squares), and sum(g), sum(g (x - mean))
        (if there is a g)."""
        c = self.x3.shape[1]
        mean_rows = _rows(mean, self.x3)
        sq = np.zeros(c) if squares else None
        g_sum, g_dev = np.zeros(c), np.zeros(c)
        for bn, bc in self.blocks:
            dev = self._deviation(bn, bc, mean_rows)
            if sq is not None:
                sq[bc] += _channel_dot(dev, dev)
            if self.g3 is not None:
                gb = self.g3[bn, bc]
                g_sum[bc] += _channel_sum(gb)
                g_dev[bc] += _channel_dot(gb, dev)
        return sq, (None if self.g3 is None else (g_sum, g_dev))

    def g_sums(self, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = self.sums(mean, squares=False)[1]
        assert sums is not None
        return sums

    def finish(self, y_of: _Affine | None, dx_of: _Linear | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """y and dx in one pass. They share one allocation: freed together, it is reused by
        the next step, where two batch-sized blocks freed together go back to the OS (glibc's
        trim threshold) and faulting them in again costs as much as computing them."""
        x3, g3 = self.x3, self.g3
        pair = np.empty(((y_of is not None) + (dx_of is not None), *x3.shape))
        y, dx = (pair[0] if y_of is not None else None), (pair[-1] if dx_of is not None else None)
        if y_of is not None:
            y_mean, y_scale = _rows(y_of.mean, x3), _rows(y_of.scale, x3)
            y_shift = None if y_of.shift is None else _rows(y_of.shift, x3)
        if dx_of is not None:
            assert g3 is not None
            gr, k = _rows(dx_of.gr, x3), _rows(dx_of.k, x3)
            coef = None if dx_of.coef is None else _rows(dx_of.coef, x3)
            same = y_of is not None and (dx_of.mean is y_of.mean or np.array_equal(dx_of.mean, y_of.mean))
            dx_mean = None if coef is None or same else _rows(dx_of.mean, x3)
        for bn, bc in self.blocks:
            if y is not None:
                dev = self._deviation(bn, bc, y_mean)
                yb = np.multiply(dev, y_scale[:, bc], out=y[bn, bc])
                if y_shift is not None:
                    yb += y_shift[:, bc]
            if dx is not None and g3 is not None:
                db = np.multiply(g3[bn, bc], gr[:, bc], out=dx[bn, bc])
                db -= k[:, bc]
                if coef is not None:
                    if dx_mean is not None:
                        dev = self._deviation(bn, bc, dx_mean)
                    db += np.multiply(dev, coef[:, bc], out=self._tmp[: dev.size].reshape(dev.shape))
        return (None if y is None else y.reshape(self.shape)), (None if dx is None else dx.reshape(self.shape))


def _view3(a: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) as (N, C, S); a view of a contiguous array."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _rows(v: np.ndarray, a3: np.ndarray) -> np.ndarray:
    """A per-channel value (C values) as a contiguous (1, C, S) block, broadcast over N: NumPy's
    inner loop then runs over C*S contiguous elements instead of restarting every S (twice as
    fast). As (1, C, 1) where the array is one block (building rows would cost more than it
    saves) or a sample is more than a block (rows as large as the data; S is long anyway)."""
    c, s = a3.shape[1], a3.shape[2]
    if a3.size <= _BLOCK or c * s > _BLOCK:
        return v.reshape(1, c, 1)
    return np.repeat(v.reshape(c), s).reshape(1, c, s)


_BLAS_ROW = 8  # from this many elements per (sample, channel) row on, a row is one BLAS dot
_PAIRWISE = 8  # NumPy's pairwise summation starts above 8 terms; up to 8 samples are added in turn
_BLOCK = 1 << 16  # elements per block: 512 KiB of float64


def _blocks(a3: np.ndarray) -> Iterator[tuple[slice, slice]]:
    """(sample, channel) slices cutting an (N, C, S) array into blocks of about _BLOCK elements:
    runs of whole samples, or runs of channels of one sample where a sample is larger.

    A pass that forms x - mean for a block and uses it while the block is in cache moves a
    fraction of the bytes of whole-array NumPy passes and needs no batch-sized temporaries.
    """
    n, c, s = a3.shape
    if a3.size <= _BLOCK:
        yield slice(None), slice(None)
    elif c * s <= _BLOCK:
        k = max(1, _BLOCK // max(c * s, 1))
        for i in range(0, max(n, 1), k):
            yield slice(i, i + k), slice(None)
    else:
        k = max(1, _BLOCK // max(s, 1))
        for i in range(n):
            for j in range(0, c, k):
                yield slice(i, i + 1), slice(j, j + k)


def _channel_sum(a3: np.ndarray) -> np.ndarray:
    """Per-channel sum of an (N, C, S) array: each (sample, channel) row in one BLAS dot, the
    rows pairwise."""
    if a3.shape[2] >= _BLAS_ROW:
        return _sum_samples(np.matmul(a3, _ones(a3.shape[2])))
    if a3.shape[0] <= _PAIRWISE:
        return a3.sum(axis=(0, 2))
    return _sum_samples(a3.sum(axis=2))


def _sum_samples(p: np.ndarray) -> np.ndarray:
    """(N, C) -> (C,), summed pairwise over N (NumPy sums pairwise along a contiguous axis):
    the rounding error grows with log2(N), where a reduction over the leading axis adds the
    rows one after another (error growing with N: 2.6 u log2(n) |x| for a (4096, 16) batch)."""
    if p.shape[0] <= _PAIRWISE:
        return p.sum(axis=0)
    return np.ascontiguousarray(p.T).sum(axis=1)


@functools.lru_cache(maxsize=8)
def _ones(s: int) -> np.ndarray:
    ones = np.ones(s)
    ones.flags.writeable = False
    return ones


def _channel_dot(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """Per-channel sum of a * b over (N, C, S) arrays: each row one BLAS dot (no product array
    where rows are long), the rows pairwise."""
    if a3.shape[2] >= _BLAS_ROW and hasattr(np, "vecdot"):  # NumPy >= 2
        return _sum_samples(np.vecdot(a3, b3))
    if a3.shape[0] <= _PAIRWISE:
        return np.einsum("ncs,ncs->c", a3, b3)
    return _sum_samples(np.einsum("ncs,ncs->nc", a3, b3))


def _bshape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(-1)
