"""Data-parallel BatchNorm: the reference's arithmetic on a case whose steps are split into
replica shards (``Case.replicas``), and a generator of such cases for the tests.

What each replica does (which statistics normalize it, what its running copy takes, the shares
and n/(n-1) factors) is the plan's (:class:`bnspec.plan.ReplicaPlan`); this module only does the
arithmetic, in float64 (the exact semantics) or in the dtypes and algorithms a profile's numerics
knobs name (``replica_var`` for a combined variance). y and dx are per sample: the global y is
the concatenation of the replicas' y in shard order. Gradients are float64, as on one device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnspec.bounds import Bound, Bounds, _free
from bnspec.case import Case, Mode, Result, Step, StepResult, make_case
from bnspec.dtypes import np_dtype
from bnspec.plan import Plan, ReplicaPlan, StepPlan
from bnspec.reference import EXACT, _Arith, _batch_stats, _blend, _bshape, _flat, _inv_std, _normalize, _read

__all__ = ["build_replica_bounds", "replica_case", "run_replicas", "typical_case", "uneven_split"]


def _combine(shards: list[np.ndarray], rps: tuple[ReplicaPlan, ...],
             local: dict[int, tuple[np.ndarray, np.ndarray]], ar: _Arith) -> tuple[np.ndarray, np.ndarray]:
    """The combined mean and biased variance in the compute dtype, by ``ar.replica_var``."""
    dt = np_dtype(ar.compute)
    axes = (0, *range(2, shards[0].ndim))
    present = [rp for rp in rps if rp.n]
    mean = sum((dt.type(float(rp.share)) * local[rp.index][0].astype(dt) for rp in present),
               np.zeros_like(local[present[0].index][0], dtype=dt))
    if ar.replica_var == "pairwise":  # Chan, Golub & LeVeque: merge (weight, mean, M2) in turn
        head = present[0]
        c = dt.type(float(head.share))
        m, m2 = (a.astype(dt) for a in local[head.index])
        m2 = c * m2
        for rp in present[1:]:
            c_r = dt.type(float(rp.share))
            mean_r, var_r = (a.astype(dt) for a in local[rp.index])
            c_new = c + c_r
            delta = mean_r - m
            m = m + delta * (c_r / c_new)
            m2 = m2 + c_r * var_r + delta * delta * (c * c_r / c_new)
            c = c_new
        return m.astype(np.float64), (m2 / c).astype(np.float64)
    var = np.zeros_like(mean)
    for rp in present:
        x = shards[rp.index]
        w = dt.type(float(rp.share))
        if ar.replica_var == "one_pass":
            var = var + w * ar.channel_mean(x * x, axes, rp.n)
        else:
            dev = x - mean
            var = var + w * ar.channel_mean(dev * dev, axes, rp.n)
    if ar.replica_var == "one_pass":
        var = var - mean * mean
    return mean.astype(np.float64), var.astype(np.float64)


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def run_replicas(case: Case, plan: Plan, ar: _Arith) -> Result:
    """:func:`bnspec.reference` for a case with replicas (``ar``: where the rounding goes)."""
    rules = plan.replica
    assert rules is not None
    exact = ar is EXACT
    c = case.num_features
    start_mean = ar.cast(ar.cast(case.running_mean, ar.created), ar.state)
    start_var = ar.cast(ar.cast(case.running_var, ar.created), ar.state)
    copies_mean = [start_mean.copy() for _ in range(rules.count)]
    copies_var = [start_var.copy() for _ in range(rules.count)]
    out: list[StepResult] = []
    for step, sp in zip(case.steps, plan.steps, strict=True):
        if rules.running == "replica0":  # the next forward broadcasts replica 0's buffers
            copies_mean = [copies_mean[0].copy() for _ in copies_mean]
            copies_var = [copies_var[0].copy() for _ in copies_var]
        x = step.x
        shards = [ar.cast(x[rp.start:rp.stop], ar.compute) for rp in sp.replicas]
        local = {rp.index: _batch_stats(shards[rp.index], rp.n, ar) for rp in sp.replicas if rp.n}
        wants_combined = any(rp.update == "combined" or (sp.source == "batch" and rp.stats == "combined")
                             for rp in sp.replicas)
        combined = _combine(shards, sp.replicas, local, ar) if wants_combined else None

        def stat(rp: ReplicaPlan, which: str | None, combined: tuple[np.ndarray, np.ndarray] | None = combined,
                 local: dict[int, tuple[np.ndarray, np.ndarray]] = local) -> tuple[np.ndarray, np.ndarray] | None:
            if which == "combined":
                return combined
            return local.get(rp.index) if which == "local" else None

        for rp in sp.replicas:
            if rp.update is not None:
                taken = stat(rp, rp.update)
                assert taken is not None
                w = float(sp.weight)
                copies_mean[rp.index] = _blend(copies_mean[rp.index], taken[0], w, ar)
                copies_var[rp.index] = _blend(copies_var[rp.index], taken[1] * float(rp.running_var_factor), w, ar)
        if sp.updating and rules.running == "mean":  # the copies averaged: every replica holds the mean
            st = np_dtype(ar.state)
            avg_m = (sum(copies_mean[1:], copies_mean[0].copy()) / st.type(rules.count)).astype(st)
            avg_v = (sum(copies_var[1:], copies_var[0].copy()) / st.type(rules.count)).astype(st)
            copies_mean = [avg_m.copy() for _ in copies_mean]
            copies_var = [avg_v.copy() for _ in copies_var]
        reads = [_read(m, v, sp) for m, v in zip(copies_mean, copies_var, strict=True)]
        res = StepResult(y=np.empty(x.shape), y_dtype=plan.dtypes.output, running_dtype=plan.dtypes.state)
        norm_mean, norm_var = np.full((rules.count, c), np.nan), np.full((rules.count, c), np.nan)
        for rp in sp.replicas:
            if sp.source == "running":
                mean_s, var_s = (a.reshape(_bshape(x)) for a in reads[rp.index])
            elif rp.n:
                chosen = stat(rp, rp.stats)
                assert chosen is not None
                mean_s, var_s = chosen[0], chosen[1] * float(rp.normalize_var_factor)
            else:
                continue
            norm_mean[rp.index], norm_var[rp.index] = _flat(mean_s), _flat(var_s)
            if rp.n:
                res.y[rp.start:rp.stop] = _shard_y(x[rp.start:rp.stop], mean_s, var_s, case, plan, ar, exact)
        first = sp.replicas[0]
        shown = stat(first, first.stats if sp.source == "batch" and first.n else first.update)
        if shown is None and sp.needs_batch and first.n:
            shown = local.get(0)
        if shown is not None:
            res.batch_mean, res.batch_var = _flat(shown[0]), _flat(shown[1])
        if plan.track:
            res.running_mean, res.running_var = _flat(reads[0][0]), _flat(reads[0][1])
            res.replica_running_mean = np.stack([_flat(m) for m, _ in reads])
            res.replica_running_var = np.stack([_flat(v) for _, v in reads])
        res.norm_mean, res.norm_var = norm_mean[0].copy(), norm_var[0].copy()
        res.replica_norm_mean, res.replica_norm_var = norm_mean, norm_var
        if step.grad_output is not None:
            _gradients(res, case, step.grad_output, sp, plan, local, combined, norm_mean, norm_var)
        out.append(res)
    return Result(out, {"reference": "exact" if exact else f"emulated:{ar.compute}", "replicas": rules.count})


def _shard_y(x: np.ndarray, mean: np.ndarray, var: np.ndarray, case: Case, plan: Plan, ar: _Arith,
             exact: bool) -> np.ndarray:
    if not exact:
        return _normalize(x, mean, var, case, plan, ar)
    scale = _inv_std(var, plan)
    if case.gamma is not None:
        scale = scale * case.gamma.reshape(scale.shape)
    y = (x - mean) * scale
    return y + case.beta.reshape(scale.shape) if case.beta is not None else y


def _gradients(res: StepResult, case: Case, g: np.ndarray, sp: StepPlan, plan: Plan,
               local: dict[int, tuple[np.ndarray, np.ndarray]], combined: tuple[np.ndarray, np.ndarray] | None,
               norm_mean: np.ndarray, norm_var: np.ndarray) -> None:
    """dx, dgamma, dbeta in float64 for y_i = gamma (x_i - mean_s) r(var_s) + beta per replica.

    Replica q's statistics move with the statistics of ``depends`` (its own shard's, or the
    combined ones, where each value x_i weighs a_i = its replica's sample_weight): d mean/dx_i =
    a_i, d var/dx_i = 2 a_i (x_i - mean). Replica q's loss sum(g y) over its shard then adds to
    dx_i a_i gamma r_q (-w_mean G_q + 2 w_var (r'/r)_q (x_i - mean) D_q), with G_q = sum(g) and
    D_q = sum(g (x - mean_s)) over q's shard, to every x_i its statistics depend on (global), or
    to its own shard's only (local); and gamma r g_i to its own values."""
    rules = plan.replica
    assert rules is not None
    x = case.steps[sp.index].x
    shape, axes = _bshape(x), (0, *range(2, x.ndim))
    gamma = case.gamma.reshape(shape) if case.gamma is not None else np.ones(shape)
    dx = np.zeros(x.shape)
    a = np.zeros((x.shape[0],) + (1,) * (x.ndim - 1))
    for rp in sp.replicas:
        a[rp.start:rp.stop] = float(rp.sample_weight)
    dgamma, dbeta = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    eps = plan.eps_float
    for rp in sp.replicas:
        if not rp.n:
            continue
        sl = slice(rp.start, rp.stop)
        mean_s, var_s = norm_mean[rp.index].reshape(shape), norm_var[rp.index].reshape(shape)
        r = _inv_std(var_s, plan)
        if plan.eps_placement == "inside_sqrt":
            dlog_r = -0.5 / (var_s + eps)
        else:
            root = np.sqrt(var_s)
            dlog_r = -1 / ((root + eps) * 2 * root)
        gq, xq = g[sl], x[sl]
        g_sum = gq.sum(axis=axes, keepdims=True)
        g_dev = (gq * (xq - mean_s)).sum(axis=axes, keepdims=True)
        if rules.param_grad != "local" or rp.index == 0:
            dgamma += _flat(r * g_dev)
            dbeta += _flat(g_sum)
        dx[sl] += gamma * r * gq
        if rp.depends is None:
            continue
        w_mean, w_var = float(rp.w_mean), float(rp.w_var)
        if rp.depends == "local":
            mean_t, target, weight = local[rp.index][0], sl, np.asarray(1.0 / rp.n)
        else:
            assert combined is not None
            mean_t = combined[0]
            target = slice(None) if rules.grad == "global" else sl
            weight = a[target]
        term = -w_mean * g_sum
        if w_var:
            term = term + 2 * w_var * dlog_r * (x[target] - mean_t) * g_dev
        dx[target] += weight * gamma * r * term
    res.dx = dx
    if case.affine:
        scale = 1.0 / rules.count if rules.param_grad == "mean" else 1.0
        res.dgamma, res.dbeta = dgamma * scale, dbeta * scale


# -- cases --

def uneven_split(n: int, replicas: int, rng: np.random.Generator) -> tuple[int, ...]:
    """``n`` samples cut into ``replicas`` shards at random cut points (uneven; 0 and 1 occur)."""
    cuts = np.sort(rng.integers(0, n + 1, size=replicas - 1))
    bounds = [0, *cuts.tolist(), n]
    return tuple(int(b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def replica_case(rng: np.random.Generator, i: int, *, replicas: int | None = None, dtype: str = "float64",
                 offset: float = 0.0, grads: bool = True) -> Case:
    """A training-then-eval trajectory whose batches split across 2-4 replicas, unevenly for odd
    ``i`` (a one-sample or empty shard among them), with gradients: the tests' cases (the
    properties are bnspec.properties' replicas_*)."""
    r = replicas or int(rng.integers(2, 5))
    n = int(rng.integers(r + 1, 3 * r + 2))
    c = int(rng.integers(1, 4))
    spatial = tuple(int(rng.integers(1, 3)) for _ in range(int(rng.integers(0, 2))))
    if i % 2:
        split = uneven_split(n, r, rng)
        while split.count(1) + split.count(0) == 0 or max(split) < 2:
            split = uneven_split(n, r, rng)
    else:
        n = r * max(1, n // r)
        split = (n // r,) * r
    shape = (n, c, *spatial)
    xs = [rng.normal(offset, 1.0, size=shape) * rng.uniform(0.5, 2.0, size=(1, c) + (1,) * len(spatial))
          for _ in range(3)]
    return make_case(
        xs, modes=["train", "train", "eval"],
        grad_outputs=[rng.normal(size=shape) if grads else None for _ in range(3)],
        gamma=rng.normal(1.0, 0.5, c), beta=rng.normal(0.0, 1.0, c),
        running_mean=rng.normal(offset, 1.0, c), running_var=rng.uniform(0.5, 2.0, c),
        eps=1e-3, momentum=0.25, dtype=dtype, replicas=split, label=f"replicas[{i}]",
    )


def typical_case() -> Case:
    """The split the porting guide and the reports size replica differences on: 3 replicas of 8,
    5 and 3 samples (a last batch short), 2 channels of 3 values, 24 training steps, then eval."""
    rng = np.random.default_rng(15)
    split = (8, 5, 3)
    xs = [rng.normal(2.0, 1.5, (sum(split), 2, 3)) * np.array([1.0, 3.0]).reshape(1, 2, 1) for _ in range(25)]
    modes: list[Mode] = ["train" if k < 24 else "eval" for k in range(25)]
    return make_case(xs, modes=modes, momentum=0.1, eps=1e-5, replicas=split,
                     gamma=np.ones(2), beta=np.zeros(2), label="typical uneven split (8, 5, 3)")


# -- bounds --

def build_replica_bounds(b: Bounds, expected: Result) -> None:
    """:class:`bnspec.bounds.Bounds` for a case with replicas: each replica's statistics carry the
    error of the shard (local) or of the global batch (combined: R more roundings to merge, and
    the sample weights' spread for equal weights), its running copy the blend's, and y and dx
    the one-device model of the statistics that normalized it, shard by shard.

    The range model (overflow to +-inf) is the global batch's, applied to every replica."""
    case, plan = b.case, b.plan
    rules = plan.replica
    assert rules is not None
    c, count = case.num_features, rules.count
    # the statistics as loaded, rounded into their creation dtype (a copy that never updates keeps it)
    run_m = np.tile(b.u_s * np.abs(case.running_mean) + b.e_s, (count, 1))
    run_v = np.tile(b.u_s * np.abs(case.running_var) + b.e_s, (count, 1))
    prev_m, prev_v = np.tile(case.running_mean, (count, 1)), np.tile(case.running_var, (count, 1))
    d = plan.dtypes
    combined_one_pass = d.replica_var == "one_pass" or (d.replica_var == "pairwise" and b.one_pass)
    nf_run = np.zeros(c, bool)  # a running copy that took statistics which may have overflowed
    for step, sp, res in zip(case.steps, plan.steps, expected.steps, strict=True):
        if rules.running == "replica0":
            run_m[:], run_v[:], prev_m[:], prev_v[:] = run_m[0], run_v[0], prev_m[0], prev_v[0]
        x = step.x
        axes = (0, *range(2, x.ndim))
        n = x.size // c
        g = 1.0 + math.log2(n)
        a, mu = np.abs(x).mean(axis=axes), x.mean(axis=axes)
        v = ((x - mu.reshape(_bshape(x))) ** 2).mean(axis=axes)
        # the range as the combined statistics' algorithm meets it too (one_pass: the squares)
        saved, b.one_pass = b.one_pass, b.one_pass or combined_one_pass
        rng, _, _ = b._range(x, n, g, a, mu, v)
        b.one_pass = saved
        spread = max((float(rp.sample_weight) * n for rp in sp.replicas if rp.n), default=1.0)

        def moments(xs: np.ndarray, one_pass: bool, extra: float, weight: float = 1.0,
                    merged: bool = False, axes: tuple[int, ...] = axes) -> tuple[np.ndarray, ...]:
            k = max(xs.size // c, 1)
            gk = 1.0 + math.log2(k) + extra
            ak, muk = np.abs(xs).mean(axis=axes), xs.mean(axis=axes)
            vk = ((xs - muk.reshape(_bshape(xs))) ** 2).mean(axis=axes)
            b_mu = weight * b.u_c * gk * ak + b.e_c
            b_v = (weight * b.u_c * gk * (vk + muk**2) * 2 if one_pass else weight * b.u_c * gk * vk + b_mu**2)
            if merged:  # Chan's merge: the shards' mean errors enter delta^2 times the spread of the means
                b_v = b_v + 4 * np.sqrt(vk) * b_mu
            return b_mu, b_v + 2 * b.e_c, ak, muk, vk

        local = {rp.index: moments(x[rp.start:rp.stop], b.one_pass, 0.0) for rp in sp.replicas if rp.n}
        # the combined statistics over the global batch, with both the global and each shard's
        # conditioning (equal weights: a shard's mean can sit far from the global one)
        comb = moments(x, combined_one_pass, count + 1.0, spread, merged=d.replica_var == "pairwise")
        if local:
            # the shards' moments as the combination reads them: a pairwise merge takes each
            # shard's variance as its own algorithm forms it; two_pass and one_pass take only the
            # shards' means and sums of squares (the one-device variance_algorithm does not enter)
            feeding = local if d.replica_var == "pairwise" else {
                rp.index: moments(x[rp.start:rp.stop], combined_one_pass, 0.0) for rp in sp.replicas if rp.n}
            worst = [np.max([lb[i] for lb in feeding.values()], axis=0) for i in (0, 1)]
            comb = (np.maximum(comb[0], worst[0] * spread), np.maximum(comb[1], worst[1] * spread), *comb[2:])

        def of(which: str | None, index: int, comb: tuple[np.ndarray, ...] = comb,
               local: dict[int, tuple[np.ndarray, ...]] = local) -> tuple[np.ndarray, ...]:
            return comb if which == "combined" else local.get(index, comb)

        bounds: dict[str, Bound] = {}
        first = sp.replicas[0]
        if res.batch_mean is not None:
            which = first.stats if sp.source == "batch" and first.n else first.update
            bm0 = of(which, 0)
            one = combined_one_pass if which == "combined" else b.one_pass
            bounds["batch_mean"] = Bound(_free(bm0[0], rng.free), bm0[2], d.compute, nonfinite=rng.nonfinite)
            bounds["batch_var"] = Bound(_free(bm0[1], rng.free), bm0[4] + (bm0[3] ** 2 if one else 0),
                                        d.compute, nonfinite=rng.nonfinite)
        w = float(sp.weight)
        exact_w = w in (0.0, 1.0)
        if sp.updating:
            nf_run |= rng.nonfinite | rng.free
        for rp in sp.replicas:
            if rp.update is None or res.replica_running_mean is None or res.replica_running_var is None:
                continue
            bm_u, bv_u, _, mu_u, v_u = of(rp.update, rp.index)
            factor = float(rp.running_var_factor) if math.isfinite(rp.running_var_factor) else 1.0
            hid_m, hid_v = res.replica_running_mean[rp.index], res.replica_running_var[rp.index]
            err_m = 0.0 if exact_w else (b.u_s + b.e_s) * np.abs(mu_u - prev_m[rp.index])
            err_v = 0.0 if exact_w else (b.u_s + b.e_s) * np.abs(v_u * factor - prev_v[rp.index])
            run_m[rp.index] = (1 - w) * run_m[rp.index] + w * bm_u + 2 * b.u_s * np.abs(hid_m) + err_m + 3 * b.e_s
            run_v[rp.index] = ((1 - w) * run_v[rp.index] + w * bv_u * factor + 2 * b.u_s * np.abs(hid_v) + err_v
                               + 3 * b.e_s)
            prev_m[rp.index], prev_v[rp.index] = hid_m, hid_v
        if sp.updating and rules.running == "mean" and res.replica_running_mean is not None:
            grow = b.u_s * (1 + math.log2(count))
            run_m[:] = run_m.max(axis=0) + grow * np.abs(res.replica_running_mean).max(axis=0)
            run_v[:] = run_v.max(axis=0) + grow * np.abs(np.asarray(res.replica_running_var)).max(axis=0)
        if res.replica_running_mean is not None and res.replica_running_var is not None:
            rm, rv = res.replica_running_mean, res.replica_running_var
            state = b.units["state"]
            nf = np.broadcast_to(nf_run, rm.shape)
            bounds["replica_running_mean"] = Bound(run_m + b.u_s * np.abs(rm) + b.e_s, np.abs(rm) + np.sqrt(np.abs(rv)),
                                                   state, d.state, nonfinite=nf)
            bounds["replica_running_var"] = Bound(run_v + b.u_s * np.abs(rv) + b.e_s, np.abs(rv), state, d.state,
                                                  nonfinite=nf)
            for q in ("running_mean", "running_var"):
                whole = bounds[f"replica_{q}"]
                bounds[q] = Bound(whole.absolute[0], whole.scale[0], state, d.state, nonfinite=nf_run.copy())
        if sp.source == "running":
            rng = type(rng)(rng.free, rng.nonfinite | nf_run, rng.var_inf | nf_run)
        _shard_outputs(b, bounds, step, sp, res, local, comb, run_m, run_v, g, rng, spread)
        b.per_step.append(bounds)


def _shard_outputs(b: Bounds, bounds: dict[str, Bound], step: Step, sp: StepPlan, res: StepResult,
                   local: dict[int, tuple[np.ndarray, ...]], comb: tuple[np.ndarray, ...], run_m: np.ndarray,
                   run_v: np.ndarray, g: float, rng: Any, spread: float) -> None:
    """y, dx, dgamma and dbeta: the one-device model per shard, with the statistics that
    normalized it; dx where statistics are combined and gradients global also as the global
    batch's (its sums are the global ones), the larger taken."""
    rules = b.plan.replica
    assert rules is not None
    if res.replica_norm_mean is None or res.replica_norm_var is None:
        return
    parts: list[tuple[slice, dict[str, Bound]]] = []
    x, grad = step.x, step.grad_output
    for rp in sp.replicas:
        if not rp.n:
            continue
        sl = slice(rp.start, rp.stop)
        if sp.source == "batch":
            bm, bv = (comb if rp.stats == "combined" else local[rp.index])[:2]
        else:
            bm, bv = run_m[rp.index], run_v[rp.index]
        sub = Step(step.mode, x[sl], grad_output=None if grad is None else grad[sl])
        sub_res = StepResult(y=res.y[sl], dx=None if res.dx is None else res.dx[sl], dgamma=res.dgamma)
        out: dict[str, Bound] = {}
        b._output_bounds(out, sub, sub_res, res.replica_norm_mean[rp.index], res.replica_norm_var[rp.index],
                         bm, bv, g, rng)
        if "dx" in out and rp.depends == "combined" and rules.grad == "global":
            whole: dict[str, Bound] = {}
            b._output_bounds(whole, step, res, res.replica_norm_mean[rp.index], res.replica_norm_var[rp.index],
                             bm, bv, g, rng)
            out["dx"].absolute = np.maximum(out["dx"].absolute, whole["dx"].absolute[sl])
            out["dx"].scale = np.maximum(out["dx"].scale, whole["dx"].scale[sl])
        if "dx" in out and rp.depends == "combined":
            out["dx"].absolute = out["dx"].absolute * spread
        parts.append((sl, out))
    if not parts:
        return
    for q in ("y", "dx"):
        if q not in parts[0][1]:
            continue
        pieces = [(sl, o[q]) for sl, o in parts]
        shape = lambda sl: x[sl].shape  # noqa: E731
        absolute = np.concatenate([np.broadcast_to(p.absolute, shape(sl)) for sl, p in pieces])
        scale = np.concatenate([np.broadcast_to(p.scale, shape(sl)) for sl, p in pieces])
        nonfinite = np.concatenate([np.broadcast_to(np.asarray(p.nonfinite, bool), shape(sl)) for sl, p in pieces])
        alt = None
        if any(p.alt is not None for _, p in pieces):
            alt = np.concatenate([np.broadcast_to(p.alt if p.alt is not None else np.nan, shape(sl))
                                  for sl, p in pieces])
        head = pieces[0][1]
        bounds[q] = _full(x.shape, sp, absolute, scale, nonfinite, alt, head)
    mean_of = 1.0 / rules.count if rules.param_grad == "mean" else 1.0
    first = sp.replicas[0]
    summed = parts if rules.param_grad != "local" else [
        (sl, o) for sl, o in parts if first.n and sl.start == first.start]  # replica 0's own share
    for q in ("dgamma", "dbeta"):
        if q in parts[0][1]:
            head = parts[0][1][q]
            if not summed:  # replica 0 is empty: its share is exactly 0
                bounds[q] = Bound(np.zeros_like(head.absolute), np.zeros_like(head.scale), head.unit, head.dtype)
                continue
            absolute = np.sum([o[q].absolute for _, o in summed], axis=0)
            magnitude = np.sum([o[q].scale for _, o in summed], axis=0)
            # the replicas' sums added (an all-reduce: log2(2R) roundings)
            reduce_roundings = math.log2(2 * (rules.count if rules.param_grad != "local" else 1))
            bounds[q] = Bound(mean_of * (absolute + b.u_c * reduce_roundings * magnitude),
                              mean_of * magnitude, head.unit, head.dtype)


def _full(shape: tuple[int, ...], sp: StepPlan, absolute: np.ndarray, scale: np.ndarray, nonfinite: np.ndarray,
          alt: np.ndarray | None, head: Bound) -> Bound:
    """A shard-concatenated bound over the global batch; an empty replica holds no rows."""
    assert absolute.shape == shape, (absolute.shape, shape, sp.index)
    return Bound(absolute, scale, head.unit, head.dtype, nonfinite=nonfinite, alt=alt)
