"""The tolerance model at the edges of the dtypes' ranges (bnspec.bounds, bnspec.tolerance): a
result that overflows its dtype is +-inf, an intermediate that may overflow admits NaN/Inf (or
y = beta where the variance may be inf), 1/0 is unconstrained, underflow adds the smallest
subnormal. Each case is hand-built; observations are the exact result, changed by hand."""

from __future__ import annotations

import copy

import numpy as np

from bnspec.case import Result, make_case
from bnspec.profiles import get_semantics
from bnspec.reference import reference
from bnspec.tolerance import compare

PYTORCH = get_semantics("pytorch")


def _changed(expected: Result, step: int, q: str, value: object) -> Result:
    out = copy.deepcopy(expected)
    setattr(out.steps[step], q, np.broadcast_to(np.asarray(value, np.float64),
                                                np.shape(getattr(out.steps[step], q))).copy())
    return out


def _ok(case, observed: Result) -> bool:  # type: ignore[no-untyped-def]
    return compare(case, PYTORCH, observed).ok


def test_a_result_beyond_its_dtype_is_inf_of_its_sign():
    # dbeta = sum(dy) = 4 * 60000 = 240000, returned in the float16 parameters: +inf (IEEE).
    x = np.array([[1.0], [2.0], [3.0], [5.0]])
    case = make_case(x, grad_outputs=[np.full((4, 1), 60000.0)], dtype="float16", eps=1e-3)
    expected = reference(case, PYTORCH)
    assert expected.steps[0].dbeta[0] == 240000.0  # the exact value, beyond float16's 65504
    assert _ok(case, _changed(expected, 0, "dbeta", np.inf))
    for wrong in (-np.inf, np.nan, 65504.0):
        assert not _ok(case, _changed(expected, 0, "dbeta", wrong)), wrong


def test_where_a_sum_may_overflow_its_dtype_nan_inf_and_beta_conform_and_wrong_values_do_not():
    # float32 values near +-2.7e38: their sum overflows float32 in one order and not in
    # another, their sum of squares in every order (var = inf, r = 0, y = beta).
    x = np.array([[2.7e38], [-2.7e38], [2.7e38], [-2.6e38]])
    case = make_case(x, dtype="float32", beta=np.array([0.5]), eps=1e-5)
    expected = reference(case, PYTORCH)
    y = expected.steps[0].y
    assert np.isfinite(y).all() and np.abs(y).max() > 0.9  # the exact output: about +-1
    assert _ok(case, expected)
    for conforming in (np.nan, np.inf, 0.5):  # a sum that overflowed; r = 0: y = beta
        assert _ok(case, _changed(expected, 0, "y", conforming)), conforming
    for wrong in (y * 1.5, y + 3.0, 0.0):
        assert not _ok(case, _changed(expected, 0, "y", wrong))


def test_within_range_a_nan_is_still_a_mismatch():
    x = np.array([[1.0], [2.0], [4.0]])
    case = make_case(x, dtype="float32")
    expected = reference(case, PYTORCH)
    assert not _ok(case, _changed(expected, 0, "y", np.nan))
    assert not _ok(case, _changed(expected, 0, "running_var", np.inf))


def test_one_over_zero_is_unconstrained():
    # eps = 0 on a zero running variance: r = 1/0, y = (x - mean) inf: nothing is defined.
    x = np.array([[1.0], [2.0], [4.0]])
    case = make_case(x, modes="eval", running_var=np.array([0.0]), eps=0.0)
    expected = reference(case, PYTORCH)
    assert _ok(case, _changed(expected, 0, "y", 12345.0))
    same = make_case(x, modes="eval", running_var=np.array([0.0]), eps=1e-5)
    assert not _ok(same, _changed(reference(same, PYTORCH), 0, "y", 12345.0))


def test_underflow_adds_the_smallest_subnormal_of_the_dtype():
    # gamma 1.4e-44 (a float32 subnormal) times r: gamma r is a subnormal with 2 significant
    # bits (15.7 of its smallest steps), so folded x (gamma r) is 2 % off; 200 % is not rounding.
    x = np.full((8, 1), -1.77e38)
    case = make_case(x, modes="eval", gamma=np.array([1.4e-44]), beta=np.array([0.0]),
                     running_var=np.array([0.407]), eps=1e-6, dtype="float32")
    expected = reference(case, PYTORCH)
    y = expected.steps[0].y
    assert _ok(case, _changed(expected, 0, "y", y * 1.02))
    assert not _ok(case, _changed(expected, 0, "y", y * 3))


def test_a_momentum_the_state_dtype_holds_as_zero_may_blend_inf_into_nan():
    # An Inf input makes the batch mean inf; w = 1e-310 is 0 in float16 state: 0 * inf = NaN
    # there, where the exact blend is inf. A normal momentum blends to inf, NaN is wrong.
    x = np.array([[1.0], [np.inf], [2.0]])
    for momentum, nan_conforms in ((1e-310, True), (0.5, False)):
        case = make_case(x, dtype="float16", momentum=momentum)
        expected = reference(case, PYTORCH)
        assert expected.steps[0].running_mean[0] == np.inf
        assert _ok(case, _changed(expected, 0, "running_mean", np.nan)) is nan_conforms, momentum


def test_a_scale_below_the_normal_range_may_turn_an_infinite_input_into_nan():
    # gamma r = 6e-47 is 0 in float32: a folded kernel's x (gamma r) is inf * 0 = NaN where the
    # exact (x - mean) r gamma is -inf. With gamma 1 nothing vanishes: NaN is wrong.
    x = np.array([[1.0], [-np.inf], [2.0]])
    for gamma, nan_conforms in ((1.4e-45, True), (1.0, False)):
        case = make_case(x, modes="eval", gamma=np.array([gamma]), beta=np.array([1.0]),
                         running_var=np.array([544.8]), dtype="float32")
        expected = reference(case, PYTORCH)
        assert expected.steps[0].y[1, 0] == -np.inf
        nan_there = expected.steps[0].y.copy()
        nan_there[1, 0] = np.nan
        assert _ok(case, _changed(expected, 0, "y", nan_there)) is nan_conforms, gamma
