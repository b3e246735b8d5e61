"""The float64 reference agrees with the exact oracle, for every profile; the oracle's gradients
agree with finite differences taken in exact arithmetic.

Units: u = 2^-53. Each quantity's error is measured per channel, relative to that channel's
*scale*: the magnitude the float64 computation's rounding errors are proportional to (a
first-order error analysis, below), which carries the conditioning. E.g. for a batch variance v
with mean mu over n values the two-pass error is ~n u v + (n u mean|x|)^2; for y it grows with
the relative error of var_s + eps, i.e. with (error of var_s) / (var_s + eps). The bound is
K = 16 such units: the reductions here have at most 12 values per channel.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnspec import kernel
from bnspec.case import Case, make_case
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.oracle import exact_steps, oracle, sqrt_fraction
from bnspec.plan import make_plan
from bnspec.profiles import PROFILES
from bnspec.reference import reference
from bnspec.semantics import Semantics

U = 2.0**-53
K = 16.0
PROFILE_NAMES = sorted(PROFILES)
SETTINGS = settings(derandomize=True, max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def bn_cases(draw: st.DrawFn, semantics: Semantics) -> Case:
    rank = draw(st.integers(2, 4), label="rank")
    c = draw(st.integers(1, 3), label="channels")
    spatial = tuple(draw(st.lists(st.integers(1, 2), min_size=rank - 2, max_size=rank - 2)))
    batch = draw(st.integers(1, 4), label="batch")
    shape = (batch, c, *spatial)
    n = batch * int(np.prod(spatial, dtype=int))
    steps = draw(st.integers(1, 3), label="steps")
    modes = draw(st.lists(st.sampled_from(["train", "eval"]), min_size=steps, max_size=steps))
    frozen = [m == "train" and semantics.frozen_train_stats is not None and draw(st.booleans())
              for m in modes]
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    offset = draw(st.sampled_from([0.0, 1.0, -30.0, 1e4]), label="offset")
    std = draw(st.sampled_from([1e-2, 1.0, 50.0]), label="std")
    constant = draw(st.booleans(), label="a constant channel")
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(steps):
        x = rng.normal(offset, std, size=shape)
        if constant:
            x[:, 0] = offset + std
        xs.append(x)
    grads = [rng.normal(size=shape) if draw(st.booleans()) else None for _ in range(steps)]
    ill_defined = n == 1 or constant  # eps=0 divides 0 by a rounded 0 there
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5] + ([] if ill_defined else [0.0])), label="eps")
    momentum = draw(st.sampled_from([0.1, 0.01, 0.5, 1.0, 0.0, None]), label="momentum")
    affine = draw(st.booleans(), label="affine")
    return make_case(
        xs, modes=modes, frozen=frozen, grad_outputs=grads,
        gamma=rng.normal(1.0, 1.0, size=c) if affine else None,
        beta=rng.normal(size=c) if affine else None,
        running_mean=rng.normal(offset, std, size=c),
        running_var=rng.uniform(0.5, 2.0, size=c) * std**2,
        eps=eps, momentum=momentum,
        track_running_stats=draw(st.sampled_from([True, True, False]), label="track"),
    )


def _chan(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def _scales(case: Case, sem: Semantics) -> list[dict[str, np.ndarray]]:
    """Per step, per quantity, per channel: the magnitude float64 rounding errors scale with.

    Follows the plan's data flow in absolute values; 'S_' names an error magnitude in u."""
    ref = reference(case, sem)
    plan = make_plan(case, sem)
    eps = plan.eps_float
    c = case.num_features
    gamma = np.abs(case.gamma) if case.gamma is not None else np.ones(c)
    beta = np.abs(case.beta) if case.beta is not None else np.zeros(c)
    s_hidden_m, s_hidden_v = np.abs(case.running_mean), np.abs(case.running_var)
    hidden_m, hidden_v = np.abs(case.running_mean), np.abs(case.running_var)
    out = []
    for step, sp, res in zip(case.steps, plan.steps, ref.steps, strict=True):
        x = _chan(step.x)
        n = x.shape[1]
        a = np.abs(x).mean(axis=1)
        sc: dict[str, np.ndarray] = {}
        s_mb = n * a
        s_vb = np.zeros(c)
        if res.batch_mean is not None:
            vb = res.batch_var
            s_vb = n * vb + U * (n * a) ** 2
            sc["batch_mean"], sc["batch_var"] = s_mb, s_vb
        if res.running_mean is not None:
            if sp.updating:
                b_m, b_v = np.abs(res.batch_mean), np.abs(res.batch_var) * 2  # with n/(n-1)
                s_hidden_m = s_hidden_m + s_mb + hidden_m + 2 * b_m
                s_hidden_v = s_hidden_v + 2 * s_vb + hidden_v + 2 * b_v
                hidden_m, hidden_v = hidden_m + b_m, hidden_v + b_v
            # debiasing divides by 1 - (1 - w)^t: error and value scale alike, so read both
            ratio_m = np.where(hidden_m > 0, np.abs(res.running_mean) / np.maximum(hidden_m, 1e-300), 1)
            ratio_v = np.where(hidden_v > 0, np.abs(res.running_var) / np.maximum(hidden_v, 1e-300), 1)
            sc["running_mean"] = (s_hidden_m + hidden_m) * np.maximum(ratio_m, 1) + np.abs(res.running_mean)
            sc["running_var"] = (s_hidden_v + hidden_v) * np.maximum(ratio_v, 1) + np.abs(res.running_var)
        # statistics that normalized: recover them from y is fragile; rebuild from the reference
        yc = _chan(res.y)
        if sp.source == "running":
            m_s, v_s = res.running_mean, res.running_var
            s_ms, s_vs = sc["running_mean"], sc["running_var"]
        else:
            m_s, v_s = res.batch_mean, res.batch_var * (2 if sem.normalize_var == "unbiased" else 1)
            s_ms, s_vs = s_mb, s_vb * 2 + v_s
        root = np.sqrt(v_s)
        r = 1 / np.sqrt(v_s + eps) if sem.eps_placement == "inside_sqrt" else 1 / (root + eps)
        rel_r = s_vs / (v_s + eps) + 4 if sem.eps_placement == "inside_sqrt" else (
            s_vs / np.maximum(root, 1e-300) / (root + eps) + 4)
        xhat = np.abs(x - m_s[:, None]) * r[:, None]
        sc["y"] = (gamma * (r * (s_ms + np.abs(x - m_s[:, None]).max(axis=1))
                            + xhat.max(axis=1) * rel_r)
                   + np.abs(yc).max(axis=1) + beta)
        if step.grad_output is not None:
            g = np.abs(_chan(step.grad_output))
            gm = g.mean(axis=1)
            spread = np.abs(x - m_s[:, None]).max(axis=1) + s_ms * U
            base = gamma * r * (g.max(axis=1) + gm) * (rel_r + s_ms * r + 2)
            var_path = gamma * r**3 * spread * (g * np.abs(x - m_s[:, None])).mean(axis=1) * 4
            sc["dx"] = base + var_path * (rel_r + 2 * s_ms / np.maximum(spread, 1e-300) + 4)
            sc["dgamma"] = (g * xhat).sum(axis=1) * rel_r + g.sum(axis=1) * r * s_ms
            sc["dbeta"] = n * g.sum(axis=1)
        out.append(sc)
    return out


def _assert_reference_matches_oracle(case: Case, sem: Semantics) -> None:
    __tracebackhide__ = True
    try:
        expected = oracle(case, sem)
    except (SingleValueError, UnsupportedFeature) as e:
        with pytest.raises(type(e)):
            reference(case, sem)
        return
    observed = reference(case, sem)
    scales = _scales(case, sem)
    for i, (o, e) in enumerate(zip(observed.steps, expected.steps, strict=True)):
        assert (o.y_dtype, o.running_dtype) == (e.y_dtype, e.running_dtype)
        for q in o.QUANTITIES:
            ov, ev = getattr(o, q), getattr(e, q)
            assert (ov is None) == (ev is None), f"step {i} {q}: present in one only"
            if ev is None:
                continue
            shaped = (lambda a: _chan(a)) if np.ndim(ev) > 1 else (lambda a: a[:, None])
            oc, ec = shaped(np.asarray(ov)), shaped(np.asarray(ev))
            np.testing.assert_array_equal(np.isnan(oc), np.isnan(ec), err_msg=f"step {i} {q}: NaNs")
            finite = np.isfinite(ec)
            np.testing.assert_array_equal(oc[~finite & ~np.isnan(ec)], ec[~finite & ~np.isnan(ec)])
            err = np.where(finite, np.abs(np.where(finite, oc - ec, 0)), 0).max(axis=1)
            with np.errstate(invalid="ignore"):
                err_u = np.where(err == 0, 0.0, err / np.maximum(scales[i][q], 1e-300) / U)
            assert np.all(err_u <= K), (
                f"step {i} {q}: error={err_u.max():.1f} u of its scale, but should be <= {K} u "
                f"[{sem!r}]"
            )


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_float64_reference_is_within_a_few_ulps_of_the_exact_oracle(profile: str) -> None:
    _check_drawn_cases(PROFILES[profile].semantics)


def _check_drawn_cases(sem: Semantics) -> None:
    @SETTINGS
    @given(case=bn_cases(sem))
    def check(case: Case) -> None:
        _assert_reference_matches_oracle(case, sem)

    check()


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_blocked_float64_paths_are_within_a_few_ulps_of_the_exact_oracle(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle's cases are a block each; with blocks of 4 elements, BLAS row dots from 2
    elements per row and pairwise sums from 2 samples, the same cases go through every path a
    large batch takes: runs of samples, channels of one sample split, (1, C, S) rows."""
    monkeypatch.setattr(kernel, "_BLOCK", 4)
    monkeypatch.setattr(kernel, "_BLAS_ROW", 2)
    monkeypatch.setattr(kernel, "_PAIRWISE", 1)
    _check_drawn_cases(PROFILES[profile].semantics)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 1, 1), (3, 2, 2), (2, 7, 3), (4, 1, 9), (6, 3, 1)])
@pytest.mark.parametrize("block", [1, 4, 6, 64])
def test_blocks_cover_every_element_once(
    shape: tuple[int, int, int], block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "_BLOCK", block)
    seen = np.zeros(shape, dtype=int)
    for bn, bc in kernel._blocks(np.empty(shape)):
        seen[bn, bc] += 1
    assert np.all(seen == 1)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_reference_matches_oracle_on_large_offsets_and_constant_channels(profile: str) -> None:
    sem = PROFILES[profile].semantics
    rng = np.random.default_rng(7)
    x = rng.normal(1e4, 1.0, size=(6, 3))
    x[:, 1] = 1e4 + 0.1  # a constant channel: batch variance 0 exactly, a rounded 0 in float64
    case = make_case([x, x[::-1] + 1, x], modes=["train", "train", "eval"],
                     grad_outputs=[rng.normal(size=x.shape)] * 3, eps=1e-3, momentum=0.1,
                     running_mean=np.full(3, 1e4))
    _assert_reference_matches_oracle(case, sem)


@pytest.mark.parametrize("single_value", ["allowed", "nan", "error"])
def test_oracle_and_reference_agree_on_one_value_per_channel(single_value: str) -> None:
    sem = PROFILES["pytorch"].semantics.replace(single_value=single_value)
    case = make_case([np.array([[1.5, -2.0]]), np.array([[0.5, 1.0], [2.0, 3.0]])],
                     modes=["train", "eval"], eps=1e-3)
    _assert_reference_matches_oracle(case, sem)
    if single_value == "nan":
        assert np.all(np.isnan(oracle(case, sem).steps[0].running_var))


def test_sqrt_fraction_is_correctly_rounded_where_float_sqrt_is() -> None:
    for v in [2.0, 1e-300, 3.0e10, 0.1, 1 - 2**-53, 2.0**-1074]:
        assert float(sqrt_fraction(Fraction(v))) == np.sqrt(v)
    assert sqrt_fraction(Fraction(9, 4)) == Fraction(3, 2)


# -- gradients against finite differences in exact arithmetic --

H = Fraction(1, 2**40)


def _loss(case: Case, sem: Semantics, step: int, x: list[list[Fraction]] | None = None) -> Fraction:
    q = exact_steps(case, sem, x_override=None if x is None else {step: x})[step]
    g = _chan(case.steps[step].grad_output)
    pairs = (zip(gc, yc, strict=True) for gc, yc in zip(g.tolist(), q["y"], strict=True))
    return sum((Fraction(gv) * y for row in pairs for gv, y in row), Fraction(0))


def _tiny_case(sem: Semantics, modes: list[str], frozen: list[bool] | None = None) -> Case:
    rng = np.random.default_rng(11)
    xs = [rng.normal(0.5, 1.5, size=(3, 2)) for _ in modes]
    return make_case(xs, modes=modes, frozen=frozen, grad_outputs=[rng.normal(size=(3, 2))] * len(modes),
                     gamma=np.array([1.5, -0.75]), beta=np.array([0.25, 0.5]),
                     running_mean=np.array([0.1, -0.2]), running_var=np.array([1.5, 0.5]),
                     eps=1e-2, momentum=0.25)


GRADIENT_PLANS = [
    ("pytorch", ["train", "eval"], None),
    ("ioffe2015", ["train"], None),
    ("equinox_ema", ["train", "train"], None),  # normalizes with running stats updated by x
    ("haiku", ["train", "train"], None),
    ("keras", ["train", "train"], [False, True]),  # frozen: running statistics, no gradient path
    ("flax_linen", ["train"], None),
]


@pytest.mark.parametrize("placement", ["inside_sqrt", "outside_sqrt"])
@pytest.mark.parametrize(("profile", "modes", "frozen"), GRADIENT_PLANS)
def test_oracle_gradients_match_exact_finite_differences(profile, modes, frozen, placement) -> None:
    sem = PROFILES[profile].semantics.replace(eps_placement=placement)
    case = _tiny_case(sem, modes, frozen)
    for step in range(len(modes)):
        q = exact_steps(case, sem)[step]
        x = [[Fraction(v) for v in row] for row in _chan(case.steps[step].x).tolist()]
        for c in range(len(x)):
            for j in range(len(x[c])):
                plus = [row[:] for row in x]
                minus = [row[:] for row in x]
                plus[c][j] += H
                minus[c][j] -= H
                fd = (_loss(case, sem, step, plus) - _loss(case, sem, step, minus)) / (2 * H)
                assert abs(fd - q["dx"][c][j]) <= Fraction(1, 2**60) * (1 + abs(fd)), (step, c, j)
        for c in range(case.num_features):
            # the loss is linear in gamma and beta: one difference of float64 neighbours is exact
            for name in ("gamma", "beta"):
                arr = getattr(case, name).copy()
                arr[c] += 0.5
                moved = case.replace(**{name: arr})
                delta = Fraction(arr[c]) - Fraction(getattr(case, name)[c])
                fd = (_loss(moved, sem, step) - _loss(case, sem, step)) / delta
                assert abs(fd - q["d" + name][c]) <= Fraction(1, 2**100) * (1 + abs(fd)), (name, c)


# -- cases with replicas (Case.replicas): the same comparisons, shard by shard --

REPLICA_SEMANTICS = [
    dict(),
    dict(replica_stats="count_weighted", replica_running="synchronized"),
    dict(replica_stats="equal_weighted", replica_running="mean", replica_grad="local"),
    dict(replica_stats="count_weighted", replica_running="replica0", replica_count="local",
         replica_param_grad="mean"),
    dict(replica_stats="equal_weighted", replica_running="own"),
]


@pytest.mark.parametrize("profile", ["pytorch", "keras", "haiku", "equinox_ema"])
@pytest.mark.parametrize("knobs", REPLICA_SEMANTICS, ids=lambda k: "-".join(f"{v}" for v in k.values()) or "default")
def test_float64_reference_matches_the_oracle_across_replicas(profile: str, knobs: dict) -> None:
    from bnspec.replicas import replica_case

    sem = PROFILES[profile].semantics.replace(single_value="allowed", **knobs)
    for i in range(6):
        case = replica_case(np.random.default_rng(i), i, offset=[0.0, 30.0, 1e3][i % 3])
        try:
            expected = oracle(case, sem)
        except (SingleValueError, UnsupportedFeature) as e:
            with pytest.raises(type(e)):
                reference(case, sem)
            continue
        observed = reference(case, sem)
        for s, (o, e) in enumerate(zip(observed.steps, expected.steps, strict=True)):
            for q in (*o.QUANTITIES, *o.REPLICA_QUANTITIES):
                ov, ev = getattr(o, q), getattr(e, q)
                assert (ov is None) == (ev is None), f"step {s} {q}: present in one only"
                if ev is None:
                    continue
                # conditioning: the offset over the spread (1e3 at most), times 12 values
                err = np.abs(ov - ev).max() / (np.abs(ev).max() + 1)
                assert err <= K * U * 1e4, f"case {i} step {s} {q}: {err / U:.1f} u [{knobs}]"


@pytest.mark.parametrize("knobs", [dict(replica_stats="count_weighted", replica_running="synchronized"),
                                   dict(replica_stats="equal_weighted", replica_running="synchronized"),
                                   dict(), dict(replica_running="own", train_stats="running")])
def test_oracle_gradients_across_replicas_match_exact_finite_differences(knobs: dict) -> None:
    """replica_grad=global: dx is the gradient of the whole batch's loss (each replica's summed)."""
    sem = PROFILES["pytorch"].semantics.replace(single_value="allowed", **knobs)
    rng = np.random.default_rng(5)
    x = rng.normal(0.5, 1.5, size=(5, 2))
    case = make_case([x], grad_outputs=[rng.normal(size=(5, 2))], gamma=np.array([1.5, -0.75]),
                     beta=np.array([0.25, 0.5]), eps=1e-2, momentum=0.25, replicas=(1, 3, 0, 1))
    q = exact_steps(case, sem)[0]
    xs = [[Fraction(v) for v in row] for row in _chan(x).tolist()]
    for c in range(2):
        for j in range(5):
            plus = [row[:] for row in xs]
            minus = [row[:] for row in xs]
            plus[c][j] += H
            minus[c][j] -= H
            fd = (_loss(case, sem, 0, plus) - _loss(case, sem, 0, minus)) / (2 * H)
            assert abs(fd - q["dx"][c][j]) <= Fraction(1, 2**60) * (1 + abs(fd)), (c, j)
