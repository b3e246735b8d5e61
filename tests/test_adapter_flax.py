"""The Flax adapters (linen jitted, linen eager, linen two-pass, nnx) against their profiles.

Every test runs the real framework in the adapter's worker process (JAX_ENABLE_X64=1). The
profile-pinning tests state one Flax fact each, checked on Flax's own output.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import Case, make_case
from bnspec.discovery import load_adapter_ref
from bnspec.dtypes import round_to
from bnspec.errors import UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.semantics import Semantics
from bnspec.tolerance import compare
from tests.harness import assert_conforms, run

LINEN = "bnspec.adapters.flax:FLAX_LINEN"
LINEN_EAGER = "bnspec.adapters.flax:FLAX_LINEN_EAGER"
LINEN_TWO_PASS = "bnspec.adapters.flax:FLAX_LINEN_TWO_PASS"
NNX = "bnspec.adapters.flax:FLAX_NNX"
ALL = [LINEN, LINEN_EAGER, LINEN_TWO_PASS, NNX]


def _shape(rank: int, n: int = 4, c: int = 3) -> tuple[int, ...]:
    return (n, c, 5, 4, 3)[:rank] if rank > 2 else (8, c)


def _plan(
    rank: int = 4,
    dtype: str = "float32",
    *,
    seed: int = 0,
    affine: bool = True,
    grads: bool = True,
    modes: tuple[str, ...] = ("train", "train", "train", "eval"),
    **kw: object,
) -> Case:
    """Several training steps (so the running statistics matter), then eval."""
    rng = np.random.default_rng(seed)
    shape = _shape(rank)
    c = shape[1]
    xs = [rng.normal(0.5, 2.0, size=shape) for _ in modes]
    params: dict[str, object] = (
        {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(size=c)}
        if affine
        else {"gamma": None, "beta": None}
    )
    hyper: dict[str, object] = {"momentum": 0.1, "eps": 1e-3}
    hyper.update(kw)
    return make_case(
        xs,
        modes=list(modes),
        grad_outputs=[rng.normal(size=shape) for _ in modes] if grads else None,
        running_mean=rng.normal(size=c),
        running_var=rng.uniform(0.5, 2.0, c),
        dtype=dtype,
        **params,  # type: ignore[arg-type]
        **hyper,  # type: ignore[arg-type]
    )


def _assert_conforms_to(ref: str, case: Case, semantics: Semantics) -> None:
    __tracebackhide__ = True
    comparison = compare(case, semantics, run(ref, case))
    assert comparison.ok, comparison.describe()


# -- conformance over ranks, modes, gradients, affine, dtypes --


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_linen_conforms_over_every_rank_with_gradients(rank: int) -> None:
    assert_conforms(LINEN, _plan(rank))


@pytest.mark.parametrize("ref", ALL)
def test_each_flax_adapter_conforms_over_train_then_eval_steps_with_gradients(ref: str) -> None:
    result = assert_conforms(ref, _plan(4, seed=1))
    assert result.steps[-1].dx is not None and result.steps[-1].dgamma is not None
    assert result.meta["jax_enable_x64"] is True


@pytest.mark.parametrize("ref", [LINEN, NNX])
def test_flax_conforms_with_affine_off(ref: str) -> None:
    result = assert_conforms(ref, _plan(3, seed=2, affine=False))
    assert result.steps[0].dgamma is None


def test_nnx_conforms_in_float64_under_jax_enable_x64() -> None:
    result = assert_conforms(NNX, _plan(4, "float64", seed=3))
    assert result.steps[0].y_dtype == "float64"


@pytest.mark.parametrize("ref", [LINEN, LINEN_TWO_PASS])
def test_linen_float64_conforms_with_state_promoted_from_float32(ref: str) -> None:
    # A finding, stated by state_dtype="promote_float32": linen's batch_stats are float32 until
    # a float64 training step returns them promoted to float64; the float32 state of nnx would not
    # conform to it.
    case = _plan(4, "float64", seed=3)
    result = assert_conforms(ref, case)
    assert {s.running_dtype for s in result.steps} == {"float64"}
    as_float32 = compare(case, get_semantics("flax_linen").replace(state_dtype="float32"), result)
    assert {c.quantity for c in as_float32.mismatches} == {"running_dtype"}


@pytest.mark.parametrize("ref", [LINEN, NNX])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_flax_conforms_in_half_precision_with_float32_parameters(ref: str, dtype: str) -> None:
    # without gradients: dx of a half-precision input is rounded to that dtype (see below)
    case = _plan(4, dtype, seed=4, grads=False).replace(param_dtype="float32")
    result = assert_conforms(ref, case)
    # float16/bfloat16 input with float32 scale and bias: the output is promoted to float32.
    assert {s.y_dtype for s in result.steps} == {"float32"}
    assert {s.running_dtype for s in result.steps} == {"float32"}


def test_eval_before_any_training_step_uses_the_given_running_statistics() -> None:
    assert_conforms(NNX, _plan(2, seed=5, modes=("eval", "train", "eval")))


# -- one test per non-obvious knob, pinned on Flax's own output --


def test_running_var_uses_biased_estimator_in_flax_profiles() -> None:
    x = np.array([[1.0], [2.0], [4.0]])  # batch var 14/9, unbiased 7/3
    case = make_case(x, momentum=1.0, eps=0.0, dtype="float64")  # Flax decay 0: copy the batch
    for ref in (LINEN_TWO_PASS, NNX):
        assert run(ref, case).steps[0].running_var == pytest.approx([14 / 9], rel=1e-6)


def test_momentum_is_translated_into_flax_decay_one_minus_momentum() -> None:
    x = np.array([[0.0], [2.0]])  # batch mean 1
    case = make_case(x, momentum=0.25, running_mean=np.array([5.0]), dtype="float64")
    # ra <- 0.75 * 5 + 0.25 * 1 with Flax momentum=0.75; no debiasing when read
    assert run(LINEN, case).steps[0].running_mean == pytest.approx([4.0], rel=1e-12)


def test_fast_variance_is_one_pass_and_clamped_at_zero_in_float32() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(1e4, 1.0, size=(64, 32))  # |mean| >> std: E[x^2] - E[x]^2 cancels
    case = make_case(x, momentum=1.0, dtype="float32")  # running var = the batch var
    true_var = round_to(x, "float32").var(axis=0)
    fast = run(LINEN, case).steps[0].running_var
    assert fast is not None
    assert (fast >= 0).all()  # clamped: the unclamped form gives -8, -16, ... here
    assert (fast == 0).sum() >= 4  # channels whose true variance ~1 read as exactly 0
    assert np.max(np.abs(fast - true_var)) > 4.0  # multiples of ulp(1e8) = 8
    two_pass = run(LINEN_TWO_PASS, case).steps[0].running_var
    np.testing.assert_allclose(two_pass, true_var, rtol=1e-4)
    assert_conforms(LINEN, case)  # within the one-pass tolerance the profile declares
    assert_conforms(LINEN_TWO_PASS, case)


def test_nnx_fast_variance_is_one_pass_by_default_like_linen() -> None:
    rng = np.random.default_rng(6)
    case = make_case(rng.normal(1e4, 1.0, size=(64, 8)), momentum=1.0, dtype="float32")
    linen = run(LINEN, case).steps[0].running_var
    nnx = run(NNX, case).steps[0].running_var
    np.testing.assert_array_equal(nnx, linen)


def test_one_value_per_channel_is_allowed_and_yields_beta() -> None:
    case = make_case(np.array([[3.0, -1.0]]), beta=np.array([0.5, -0.25]), momentum=0.1,
                     dtype="float32")
    for ref in (LINEN, NNX):
        result = assert_conforms(ref, case)
        np.testing.assert_array_equal(result.steps[0].y, [[0.5, -0.25]])


def test_nnx_keeps_running_statistics_in_float32_even_for_float64_input() -> None:
    result = run(NNX, _plan(2, "float64", seed=7, grads=False))
    assert {s.running_dtype for s in result.steps} == {"float32"}
    assert {s.y_dtype for s in result.steps} == {"float64"}


def test_linen_promotes_running_statistics_to_float64_after_a_float64_training_step() -> None:
    # A finding: linen creates batch_stats in float32 (the profile's state_dtype), but the
    # blend with float64 batch statistics promotes them and apply(mutable=...) returns that.
    case = _plan(2, "float64", seed=8, grads=False, modes=("eval", "train", "eval"))
    case = case.replace(running_mean=round_to(case.running_mean, "float32"),
                        running_var=round_to(case.running_var, "float32"))
    result = run(LINEN, case)
    assert [s.running_dtype for s in result.steps] == ["float32", "float64", "float64"]


def test_linen_output_dtype_is_the_input_dtype_when_affine_is_off() -> None:
    # A finding: linen's output dtype is result_type(x, scale, bias); without scale and bias
    # float16 stays float16, whereas nnx also promotes with its float32 statistics.
    case = _plan(2, "float16", seed=9, affine=False, grads=False).replace(param_dtype="float32")
    linen = run(LINEN, case)
    assert {s.y_dtype for s in linen.steps} == {"float16"}
    _assert_conforms_to(LINEN, case, get_semantics("flax_linen").replace(output_dtype="input"))
    nnx = assert_conforms(NNX, case)
    assert {s.y_dtype for s in nnx.steps} == {"float32"}


def test_eager_linen_matches_jitted_linen_within_float32_roundoff() -> None:
    case = _plan(4, seed=10)
    jitted, eager = run(LINEN, case), run(LINEN_EAGER, case)
    for a, b in zip(jitted.steps, eager.steps, strict=True):
        np.testing.assert_allclose(a.y, b.y, rtol=0, atol=1e-5)
    assert jitted.meta["jit"] is True and eager.meta["jit"] is False


# -- what Flax cannot express --


def test_cumulative_momentum_is_unsupported() -> None:
    with pytest.raises(UnsupportedFeature):
        run(LINEN, _plan(2, grads=False, momentum=None))


def test_snippets_are_python_that_names_every_setting() -> None:
    case = _plan(3, grads=False)
    for ref in (LINEN, LINEN_EAGER, LINEN_TWO_PASS, NNX):
        text = load_adapter_ref(ref).snippet(case)
        compile(text, ref, "exec")
        for setting in ("momentum=0.9", "epsilon=0.001", "use_fast_variance=", "param_dtype="):
            assert setting in text


@pytest.mark.parametrize("ref", [LINEN, NNX])
def test_dx_of_a_float16_input_is_rounded_to_float16(ref: str) -> None:
    # jax.grad returns the cotangent in the input's dtype: dx carries float16 rounding on top
    # of the float32 computation, which the tolerance model's float32 dx bound does not include.
    case = _plan(3, "float16", seed=11, modes=("train", "eval")).replace(param_dtype="float32")
    result = run(ref, case)
    for step in result.steps:
        assert step.dx is not None and step.dgamma is not None
        np.testing.assert_array_equal(step.dx, round_to(step.dx, "float16"))
        assert not np.array_equal(step.dgamma, round_to(step.dgamma, "float16"))  # float32
