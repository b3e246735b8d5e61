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

from fractions import Fraction

import numpy as np

from bnspec.case import Case, Result, StepResult
from bnspec.exact import SQRT_BITS, Num, sqrt_fraction
from bnspec.exact import add as _add
from bnspec.exact import div as _div
from bnspec.exact import mul as _mul
from bnspec.exact import sqrt as _sqrt
from bnspec.exact import to_float as _float
from bnspec.exact import total as _sum
from bnspec.plan import Plan, make_plan
from bnspec.semantics import MomentumWeights, Semantics

__all__ = ["SQRT_BITS", "exact_steps", "oracle", "sqrt_fraction"]
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
        for name in StepResult.REPLICA_QUANTITIES:
            if q.get(name) is not None:
                setattr(res, name, np.array([[_float(v) for v in row] for row in q[name]], dtype=np.float64))
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
    plan = make_plan(case, sem, passed_as=passed_as)
    if plan.replica is not None:
        return _replica_steps(case, plan, x_override)
    hidden_mean: list[Num] = [Fraction(v) for v in case.running_mean.tolist()]
    hidden_var: list[Num] = [Fraction(v) for v in case.running_var.tolist()]
    gamma = None if case.gamma is None else [Fraction(v) for v in case.gamma.tolist()]
    beta = None if case.beta is None else [Fraction(v) for v in case.beta.tolist()]
    out: list[dict] = []
    for i, (step, sp) in enumerate(zip(case.steps, plan.steps, strict=True)):
        x = x_override[i] if x_override and i in x_override else _channels(step.x)
        g = None if step.grad_output is None else _channels(step.grad_output)
        n = sp.n
        q: dict = {"y_dtype": plan.dtypes.output, "running_dtype": plan.dtypes.state}
        mean_b: list[Num] = []
        var_b: list[Num] = []
        if sp.needs_batch:
            mean_b = [sum(xc, Fraction(0)) / n for xc in x]
            var_b = [sum(((v - m) ** 2 for v in xc), Fraction(0)) / n for xc, m in zip(x, mean_b, strict=True)]
            q["batch_mean"], q["batch_var"] = mean_b, var_b
        if sp.updating:
            w = sp.weight
            var_in = [_mul(v, sp.running_var_factor) for v in var_b]
            hidden_mean = [_add(_mul(h, 1 - w), _mul(b, w)) for h, b in zip(hidden_mean, mean_b, strict=True)]
            hidden_var = [_add(_mul(h, 1 - w), _mul(b, w)) for h, b in zip(hidden_var, var_in, strict=True)]
        read_mean = [_div(h, sp.debias) for h in hidden_mean]
        read_var = [_div(h, sp.debias) for h in hidden_var]
        if plan.track:
            q["running_mean"], q["running_var"] = read_mean, read_var
        if sp.source == "running":
            mean_s, var_s = read_mean, read_var
        else:
            mean_s, var_s = mean_b, [_mul(v, sp.normalize_var_factor) for v in var_b]
        r, dr = zip(*(_inv_std(v, plan.eps, plan.eps_placement) for v in var_s), strict=True)
        xhat = [[_mul(v - m, rc) for v in xc] for xc, m, rc in zip(x, mean_s, r, strict=True)]
        q["y"] = [
            [_add(_mul(h, gamma[c]), beta[c]) for h in xh] if gamma and beta else xh
            for c, xh in enumerate(xhat)
        ]
        if g is not None:
            q.update(_gradients(x, g, mean_s, r, dr, sp.w_mean, sp.w_var, mean_b or mean_s, xhat, gamma))
        out.append(q)
    return out


def _replica_steps(case: Case, plan: Plan, x_override: dict[int, Channels] | None) -> list[dict]:
    """exact_steps for a case with replicas: each replica's statistics, running copy, y and dx
    (see bnspec.replicas for the formulas; here every term is exact)."""
    rules = plan.replica
    assert rules is not None
    c = case.num_features
    copies_mean: list[list[Num]] = [[Fraction(v) for v in case.running_mean.tolist()] for _ in range(rules.count)]
    copies_var: list[list[Num]] = [[Fraction(v) for v in case.running_var.tolist()] for _ in range(rules.count)]
    gamma = None if case.gamma is None else [Fraction(v) for v in case.gamma.tolist()]
    beta = None if case.beta is None else [Fraction(v) for v in case.beta.tolist()]
    out: list[dict] = []
    for i, (step, sp) in enumerate(zip(case.steps, plan.steps, strict=True)):
        if rules.running == "replica0":
            copies_mean = [list(copies_mean[0]) for _ in copies_mean]
            copies_var = [list(copies_var[0]) for _ in copies_var]
        x = x_override[i] if x_override and i in x_override else _channels(step.x)
        per = step.x.size // (step.x.shape[0] * c)  # values per sample and channel
        cuts = [slice(rp.start * per, rp.stop * per) for rp in sp.replicas]
        local: dict[int, tuple[list[Num], list[Num]]] = {}
        for rp, cut in zip(sp.replicas, cuts, strict=True):
            if rp.n:
                m = [sum(xc[cut], Fraction(0)) / rp.n for xc in x]
                local[rp.index] = (m, [sum(((v - mc) ** 2 for v in xc[cut]), Fraction(0)) / rp.n
                                       for xc, mc in zip(x, m, strict=True)])
        present = [rp for rp in sp.replicas if rp.n]
        comb_mean = [sum((rp.share * local[rp.index][0][ch] for rp in present), Fraction(0)) for ch in range(c)]
        comb_var = [sum((rp.share * (local[rp.index][1][ch] + (local[rp.index][0][ch] - comb_mean[ch]) ** 2)
                         for rp in present), Fraction(0)) for ch in range(c)]

        def stat(index: int, which: str | None, comb_mean: list[Num] = comb_mean, comb_var: list[Num] = comb_var,
                 local: dict[int, tuple[list[Num], list[Num]]] = local) -> tuple[list[Num], list[Num]] | None:
            if which == "combined":
                return comb_mean, comb_var
            return local.get(index) if which == "local" else None

        for rp in sp.replicas:
            taken = stat(rp.index, rp.update)
            if taken is not None:
                w = sp.weight
                copies_mean[rp.index] = [_add(_mul(h, 1 - w), _mul(b, w))
                                         for h, b in zip(copies_mean[rp.index], taken[0], strict=True)]
                copies_var[rp.index] = [_add(_mul(h, 1 - w), _mul(_mul(b, rp.running_var_factor), w))
                                        for h, b in zip(copies_var[rp.index], taken[1], strict=True)]
        if sp.updating and rules.running == "mean":
            avg_m = [_div(_sum(cm[ch] for cm in copies_mean), Fraction(rules.count)) for ch in range(c)]
            avg_v = [_div(_sum(cv[ch] for cv in copies_var), Fraction(rules.count)) for ch in range(c)]
            copies_mean, copies_var = [list(avg_m) for _ in copies_mean], [list(avg_v) for _ in copies_var]
        reads = [([_div(h, sp.debias) for h in cm], [_div(h, sp.debias) for h in cv])
                 for cm, cv in zip(copies_mean, copies_var, strict=True)]
        q: dict = {"y_dtype": plan.dtypes.output, "running_dtype": plan.dtypes.state}
        first = sp.replicas[0]
        shown = stat(0, first.stats if sp.source == "batch" and first.n else first.update)
        if shown is None and sp.needs_batch and first.n:
            shown = local.get(0)
        if shown is not None:
            q["batch_mean"], q["batch_var"] = shown
        if plan.track:
            q["running_mean"], q["running_var"] = reads[0]
            q["replica_running_mean"] = [m for m, _ in reads]
            q["replica_running_var"] = [v for _, v in reads]
        y: Channels = [[Fraction(0)] * len(xc) for xc in x]
        g = None if step.grad_output is None else _channels(step.grad_output)
        dx: Channels = [[Fraction(0)] * len(xc) for xc in x]
        weights = [Fraction(0)] * len(x[0])
        for rp, cut in zip(sp.replicas, cuts, strict=True):
            weights[cut] = [rp.sample_weight] * (cut.stop - cut.start)
        dgamma: list[Num] = [Fraction(0)] * c
        dbeta: list[Num] = [Fraction(0)] * c
        for rp, cut in zip(sp.replicas, cuts, strict=True):
            if not rp.n:
                continue
            if sp.source == "running":
                mean_s, var_s = reads[rp.index]
            else:
                chosen = stat(rp.index, rp.stats)
                assert chosen is not None
                mean_s, var_s = chosen[0], [_mul(v, rp.normalize_var_factor) for v in chosen[1]]
            for ch in range(c):
                r, dr = _inv_std(var_s[ch], plan.eps, plan.eps_placement)
                gm = gamma[ch] if gamma else Fraction(1)
                xhat = [_mul(v - mean_s[ch], r) for v in x[ch][cut]]
                y[ch][cut] = [_add(_mul(h, gm), beta[ch]) for h in xhat] if gamma and beta else xhat
                if g is None:
                    continue
                gq = g[ch][cut]
                g_sum = sum(gq, Fraction(0))
                g_dev = _sum(gv * (v - mean_s[ch]) for gv, v in zip(gq, x[ch][cut], strict=True))
                if rules.param_grad != "local" or rp.index == 0:
                    dgamma[ch] = _add(dgamma[ch], _mul(r, g_dev))
                    dbeta[ch] = dbeta[ch] + g_sum
                dx[ch][cut] = [_add(d, _mul(_mul(gm, r), gv)) for d, gv in zip(dx[ch][cut], gq, strict=True)]
                if rp.depends is None:
                    continue
                if rp.depends == "local":
                    mean_t, target = local[rp.index][0][ch], cut
                    wts = [Fraction(1, rp.n)] * (cut.stop - cut.start)
                else:
                    mean_t = comb_mean[ch]
                    target = slice(0, len(x[ch])) if rules.grad == "global" else cut
                    wts = weights[target]
                # r' = dr: a_i gamma (-w_mean r G + 2 w_var r' (x_i - mean) D)
                k_mean = _mul(_mul(gm, r), _mul(rp.w_mean, g_sum))
                k_var = _mul(_mul(2 * gm, rp.w_var), _mul(dr, g_dev)) if rp.w_var != 0 else Fraction(0)
                dx[ch][target] = [_add(d, _mul(a, _add(-k_mean,
                                                       _mul(k_var, v - mean_t))))
                                  for d, a, v in zip(dx[ch][target], wts, x[ch][target], strict=True)]
        q["y"] = y
        if g is not None:
            q["dx"] = dx
            if gamma is not None:
                scale = Fraction(1, rules.count) if rules.param_grad == "mean" else Fraction(1)
                q["dgamma"], q["dbeta"] = [_mul(v, scale) for v in dgamma], [_mul(v, scale) for v in dbeta]
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
    for c, (xc, gc) in enumerate(zip(x, g, strict=True)):
        n = len(xc)
        gm = gamma[c] if gamma else Fraction(1)
        g_mean = sum(gc, Fraction(0)) / n
        gx_mean = sum((gv * (v - mean_s[c]) for gv, v in zip(gc, xc, strict=True)), Fraction(0)) / n
        row = [_mul(_mul(gm, r[c]), gv - _mul(w_mean, g_mean)) for gv in gc]
        if w_var != 0:
            k = _mul(_mul(_mul(2 * gm, w_var), dr[c]), gx_mean)
            row = [_add(d, _mul(k, v - mean_b[c])) for d, v in zip(row, xc, strict=True)]
        dx.append(row)
    if gamma is None:
        return {"dx": dx}
    dbeta = [sum(gc, Fraction(0)) for gc in g]
    dgamma = [_sum(_mul(gv, h) for gv, h in zip(gc, xh, strict=True)) for gc, xh in zip(g, xhat, strict=True)]
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


def _channels(a: np.ndarray) -> Channels:
    c = a.shape[1]
    return [[Fraction(v) for v in row] for row in np.moveaxis(a, 1, 0).reshape(c, -1).tolist()]


def _to_array(channels: Channels, shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array([[_float(v) for v in row] for row in channels], dtype=np.float64)
    moved = (shape[1], shape[0], *shape[2:])
    return np.moveaxis(flat.reshape(moved), 0, 1)
