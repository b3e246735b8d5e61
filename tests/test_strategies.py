"""The Hypothesis strategies: every drawn case is valid and runnable by the adapter it was drawn
for, the draws reach the corners that separate the knobs, the reference conforms to itself on
drawn cases, and a wrong running-variance estimator is falsified with a shrunk counterexample.

Every run is derandomized with no example database, so the suite never flakes; ``find`` stops
at the first example in the reachability checks (generate phase only) and shrinks only where
the shrunk example is what is being checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from bnspec.adapter import Adapter, Capabilities
from bnspec.adapters.reference import _ALL
from bnspec.case import Case
from bnspec.conformance import strategies as bs
from bnspec.dtypes import DTYPES, np_dtype, round_to
from bnspec.errors import SingleValueError
from bnspec.observe import observe
from bnspec.profiles import get_semantics
from bnspec.reference import reference
from bnspec.tolerance import compare
from tests.fixtures import bad_adapters as bad

# Timing health checks are off: they depend on the machine's load, and the suite never flakes.
FIXED = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# TF's fused op: NHWC rank 4 only here, float32 only, no frozen layer.
TF_FUSED_FLOAT32 = Capabilities(ranks=(4,), dtypes=("float32",), gradients=True, cumulative_momentum=True)
# No momentum=None, no frozen layer, no affine off, no gradients, no initial state.
PLAIN = Capabilities(dtypes=("float64", "float32"), cumulative_momentum=False, frozen=False,
                     affine_off=False, gradients=False, initial_running=False)
# An inference-only operator with no momentum (ONNX-like): eval steps only, momentum fixed.
EVAL_ONLY = Capabilities(ranks=(3, 4), dtypes=("float16", "bfloat16"), train_steps=False,
                         momentum_values="fixed:0.1", layouts=("channels_first", "channels_last"))
CAPABILITY_SETS = {"reference": _ALL, "tf_fused_float32": TF_FUSED_FLOAT32, "plain": PLAIN,
                   "eval_only": EVAL_ONLY}
# The pytorch profile has no frozen layer: the reference raises for a frozen step.
PYTORCH_FLOAT64 = dataclasses.replace(_ALL, dtypes=("float64",), frozen=False)
PYTORCH = get_semantics("pytorch")


def _adapter(caps: Capabilities) -> Adapter:
    return Adapter(name="drawn", framework="bnspec", profile="pytorch", capabilities=caps)


def _exact_in(a: np.ndarray, dtype: str) -> bool:
    finite = np.isfinite(a)
    return bool(np.array_equal(a[finite], round_to(a[finite], dtype)))


def assert_valid_for(case: Case, caps: Capabilities) -> None:
    __tracebackhide__ = True
    _adapter(caps).check_supported(case)  # raises UnsupportedFeature
    assert 1 <= len(case.steps) <= bs.MAX_STEPS, f"steps={len(case.steps)}, but should be 1..{bs.MAX_STEPS}"
    for i, step in enumerate(case.steps):
        assert step.x.size <= bs.MAX_VALUES, f"step {i}: x.size={step.x.size}, but should be <= {bs.MAX_VALUES}"
        assert _exact_in(step.x, case.dtype), f"step {i}: x not exact in {case.dtype}"
        if step.grad_output is not None:
            assert _exact_in(step.grad_output, case.dtype), f"step {i}: dy not exact in {case.dtype}"
    for name in ("gamma", "beta", "running_mean", "running_var"):
        v = getattr(case, name)
        if v is not None:
            assert _exact_in(v, case.param_dtype), f"{name} not exact in {case.param_dtype}"
    assert (case.running_var >= 0).all(), f"running_var={case.running_var}, but should be >= 0"
    fixed = bs.momentum_choices(caps)
    if fixed is not None:
        assert case.momentum in fixed, f"momentum={case.momentum}, but should be in {fixed}"
    if not caps.initial_running:
        assert (case.running_mean == 0).all() and (case.running_var == 1).all()
    assert Case.from_dict(case.to_dict()).case_id() == case.case_id(), "case does not round-trip"


def assert_reachable(strategy: st.SearchStrategy[Any], condition: Callable[[Any], bool],
                     max_examples: int = 300) -> Any:
    """The first drawn example meeting ``condition``."""
    __tracebackhide__ = True
    try:
        return find(strategy, condition, settings=settings(FIXED, max_examples=max_examples,
                                                           phases=[Phase.generate]))
    except NoSuchExample:
        raise AssertionError(f"no draw of {strategy!r} in {max_examples} meets the condition") from None


# -- validity ------------------------------------------------------------------------------

@pytest.mark.parametrize("caps", list(CAPABILITY_SETS.values()), ids=list(CAPABILITY_SETS))
def test_every_drawn_case_is_valid_and_supported_by_its_capabilities(caps: Capabilities) -> None:
    @settings(FIXED, max_examples=60)
    @given(bs.cases(caps))
    def check(case: Case) -> None:
        assert_valid_for(case, caps)
        if not caps.cumulative_momentum:
            assert case.momentum is not None
        if not caps.affine_off:
            assert case.affine
        if not caps.frozen:
            assert not any(s.frozen for s in case.steps)
        if not caps.gradients:
            assert not case.needs_gradients
        if not caps.train_steps:
            assert all(s.mode == "eval" for s in case.steps)

    check()


@st.composite
def capabilities(draw: Any) -> Capabilities:
    def subset(options: tuple[Any, ...], label: str) -> tuple[Any, ...]:
        return tuple(draw(st.lists(st.sampled_from(options), min_size=1, unique=True), label=label))

    train = draw(st.booleans(), label="train_steps")
    return Capabilities(
        ranks=subset((2, 3, 4, 5), "ranks"), dtypes=subset(DTYPES, "dtypes"),
        layouts=subset(("channels_first", "channels_last"), "layouts"),
        gradients=draw(st.booleans(), label="gradients"),
        cumulative_momentum=draw(st.booleans(), label="cumulative_momentum"),
        frozen=draw(st.booleans(), label="frozen"), affine_off=draw(st.booleans(), label="affine_off"),
        untracked=draw(st.booleans(), label="untracked"),
        initial_running=draw(st.booleans(), label="initial_running"),
        train_steps=train, eval_steps=not train or draw(st.booleans(), label="eval_steps"),
        momentum_values=draw(st.sampled_from(("any", "fixed:0.1", "fixed:None")), label="momentum_values"),
    )


@settings(FIXED, max_examples=60)
@given(st.data())
def test_cases_stay_within_any_capability_set(data: st.DataObject) -> None:
    caps = data.draw(capabilities(), label="capabilities")
    if caps.momentum_values == "fixed:None":
        caps = dataclasses.replace(caps, cumulative_momentum=True)
    case = data.draw(bs.cases(caps, max_steps=4), label="case")
    assert_valid_for(case, caps)


# -- the corners are reachable -------------------------------------------------------------

def _spatial_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape) // shape[1]


def _channels(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def test_shapes_reach_one_value_per_channel_and_tiny_batches_at_every_rank() -> None:
    for rank in (2, 3, 4, 5):
        caps = dataclasses.replace(_ALL, ranks=(rank,))
        assert len(assert_reachable(bs.shapes(caps), lambda s: _spatial_size(s) == 1)) == rank
        assert_reachable(bs.shapes(caps), lambda s: s[0] == 2 and s[1] > 1)
    assert_reachable(bs.shapes(_ALL), lambda s: math.prod(s) > 32)
    assert_reachable(bs.shapes(TF_FUSED_FLOAT32), lambda s: len(s) == 4 and _spatial_size(s) == 1)


def test_batches_reach_large_offsets_relative_to_the_spread() -> None:
    def offset_ratio(x: np.ndarray) -> float:
        ch = _channels(x)
        with np.errstate(all="ignore"):  # the squares of huge values overflow
            std = ch.std(axis=1)
            ratio = np.where(std > 0, np.abs(ch.mean(axis=1)) / std, 0.0)
        return float(ratio.max())

    x = assert_reachable(bs.batches((8, 2), "float64", nonfinite=False), lambda x: offset_ratio(x) >= 1e4)
    assert offset_ratio(x) >= 1e4
    assert_reachable(bs.batches((8, 2), "float64", nonfinite=False), lambda x: offset_ratio(x) >= 1e7)
    assert_reachable(bs.batches((8, 2), "float32", nonfinite=False), lambda x: offset_ratio(x) >= 1e4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batches_reach_constant_channels_tiny_and_huge_scales_and_the_dtype_limits(dtype: str) -> None:
    info = ml_dtypes.finfo(np_dtype(dtype))
    batches = bs.batches((4, 2), dtype, nonfinite=False)
    assert_reachable(batches, lambda x: bool((np.ptp(_channels(x), axis=1) == 0).any() and np.abs(x).max() > 0))
    finite_max = lambda x: float(np.abs(x).max())  # noqa: E731
    assert_reachable(batches, lambda x: finite_max(x) >= bs.largest_defined(dtype) / 2)
    assert_reachable(batches, lambda x: bool(((x != 0) & (np.abs(x) < float(info.smallest_normal))).any()))
    assert_reachable(batches, lambda x: 0 < finite_max(x) <= 2.0**-8 and np.ptp(x) > 0)
    assert_reachable(batches, lambda x: finite_max(x) >= 2.0**8 and np.ptp(x) >= 2.0**6)


@pytest.mark.parametrize("special", ["nan", "inf", "-inf"])
def test_batches_reach_nonfinite_values_only_when_asked(special: str) -> None:
    value = float(special)
    has = (lambda x: bool(np.isnan(x).any())) if special == "nan" else (lambda x: bool((x == value).any()))
    assert_reachable(bs.batches((4, 2), "float32"), has)
    assert not any(has(x) for x in _draws(bs.batches((4, 2), "float32", nonfinite=False)))


def _draws(strategy: st.SearchStrategy[Any], n: int = 40) -> list[Any]:
    seen: list[Any] = []

    @settings(FIXED, max_examples=n)
    @given(strategy)
    def collect(v: Any) -> None:
        seen.append(v)

    collect()
    return seen


def test_hyperparameters_reach_eps_zero_eps_below_the_fused_floor_and_every_momentum() -> None:
    hyper = bs.hyperparameters(_ALL)
    assert_reachable(hyper, lambda h: h["eps"] == 0.0)
    assert_reachable(hyper, lambda h: 0.0 < h["eps"] < 1.001e-5)
    assert_reachable(hyper, lambda h: h["eps"] == 1.001e-5)
    for momentum in (0.0, 1.0, None):
        assert_reachable(hyper, lambda h, m=momentum: h["momentum"] is m or h["momentum"] == m)
    assert_reachable(hyper, lambda h: h["momentum"] is not None and 0.0 < h["momentum"] < 1.0
                      and h["momentum"] not in (0.1, 0.01, 0.5, 0.99))
    assert_reachable(hyper, lambda h: not h["track_running_stats"])


def test_hyperparameters_never_draw_what_the_capabilities_exclude() -> None:
    for h in _draws(bs.hyperparameters(PLAIN), n=100):
        assert h["momentum"] is not None, f"momentum=None, but {PLAIN.cumulative_momentum=}"
        assert h["track_running_stats"], f"track_running_stats=False, but {PLAIN.untracked=}"
    assert {h["momentum"] for h in _draws(bs.hyperparameters(EVAL_ONLY))} == {0.1}


def test_affine_parameters_reach_zero_and_negative_scales_and_affine_off() -> None:
    params = bs.affine_parameters(3, "float32")
    assert_reachable(params, lambda p: p[0] is None and p[1] is None)
    assert_reachable(params, lambda p: p[0] is not None and (p[0] == 0).any())
    assert_reachable(params, lambda p: p[0] is not None and (p[0] < 0).any() and (p[1] != 0).any())
    assert all(g is not None for g, _ in _draws(bs.affine_parameters(3, "float32", affine_off=False)))


def test_step_plans_mix_train_eval_and_frozen_steps_as_capabilities_allow() -> None:
    kinds = lambda plan: {(p.mode, p.frozen) for p in plan}  # noqa: E731
    every = {("train", False), ("eval", False), ("train", True)}
    assert kinds(assert_reachable(bs.step_plans(_ALL), lambda plan: kinds(plan) == every)) == every
    assert len(assert_reachable(bs.step_plans(_ALL), lambda plan: len(plan) == bs.MAX_STEPS)) == bs.MAX_STEPS
    assert_reachable(bs.step_plans(_ALL), lambda plan: any(p.gradient for p in plan))
    for plan in _draws(bs.step_plans(PLAIN)):
        assert not any(p.frozen or p.gradient for p in plan)


def test_dtypes_reach_every_dtype_the_capabilities_list() -> None:
    for dtype in DTYPES:
        assert assert_reachable(bs.dtypes(_ALL), lambda d, want=dtype: d == want) == dtype
    assert set(_draws(bs.dtypes(TF_FUSED_FLOAT32))) == {"float32"}


def test_cases_reach_half_precision_input_with_float32_parameters() -> None:
    case = assert_reachable(bs.cases(_ALL), lambda c: c.dtype == "float16" and c.param_dtype == "float32")
    assert case.gamma is None or _exact_in(case.gamma, "float32")


# -- properties on drawn cases -------------------------------------------------------------

@settings(FIXED, max_examples=100)
@given(bs.cases(PYTORCH_FLOAT64))
def test_reference_conforms_to_itself_on_drawn_float64_cases(case: Case) -> None:
    try:
        with np.errstate(all="ignore"):  # NaN, Inf and overflow are drawn on purpose
            result = reference(case, PYTORCH)
    except SingleValueError:
        return  # the pytorch profile rejects one value per channel in training
    with np.errstate(all="ignore"):
        comparison = compare(case, PYTORCH, result)
    assert comparison.ok, comparison.describe()


def test_biased_running_var_is_falsified_with_a_shrunk_counterexample() -> None:
    def running_var_mismatches(case: Case) -> bool:
        observed = observe(bad.BIASED_RUNNING_VAR, case)
        if observed.result is None:  # the pytorch profile raises for one value per channel
            return False
        with np.errstate(all="ignore"):
            mismatches = compare(case, PYTORCH, observed.result).mismatches
        return any(m.quantity == "running_var" for m in mismatches)

    counterexample = find(bs.cases(PYTORCH_FLOAT64), running_var_mismatches,
                          settings=settings(FIXED, max_examples=200))
    # Shrunk: a step or two of training on two values of one channel (the fewest for which
    # the estimators differ), the plain hyperparameters.
    assert running_var_mismatches(counterexample)
    assert len(counterexample.steps) <= 2, counterexample.label
    assert all(s.x.size == 2 and s.x.shape[1] == 1 for s in counterexample.steps), counterexample.label
    assert any(s.mode == "train" for s in counterexample.steps)
    assert (counterexample.momentum, counterexample.eps) == (0.1, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batches_stay_where_the_spec_defines_their_statistics(dtype: str) -> None:
    """No drawn value is beyond largest_defined: 64 of them, their sum and their sum of squared
    deviations fit the compute dtype (the wider of the input's and float32) with room to spare,
    so no summation order overflows it (bnspec.bounds.reaches)."""
    from bnspec.bounds import reaches
    from bnspec.dtypes import more_precise

    limit = bs.largest_defined(dtype)
    compute = more_precise(dtype, "float32")
    n = bs.MAX_VALUES
    assert not reaches(n * limit, compute, 1.0) and not reaches(n * (2 * limit) ** 2, compute, 1.0)

    @settings(FIXED, max_examples=200)
    @given(bs.batches((8, 2), dtype, nonfinite=False))
    def within(x: np.ndarray) -> None:
        assert float(np.abs(x).max()) <= limit * (1 + 2.0**-7)  # rounded into the dtype once

    within()


def test_continuous_eps_and_momentum_are_normal_numbers_of_the_dtypes_that_hold_them() -> None:
    """A continuous draw never rounds to 0 where it is held: eps (added in float32 at the
    narrowest) >= float32's smallest normal, momentum and 1 - momentum >= float16's."""
    hyper = _draws(bs.hyperparameters(_ALL), 300)
    assert all(h["eps"] == 0.0 or h["eps"] >= 2.0**-126 for h in hyper)
    assert all(h["momentum"] is None or h["momentum"] in (0.0, 1.0)
               or min(h["momentum"], 1 - h["momentum"]) >= 2.0**-14 - 1e-18 for h in hyper)
