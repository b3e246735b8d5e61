"""ONNX Runtime's CPU BatchNormalization-15 against the "onnx" profile, and the knobs it pins."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bnspec.case import Case, Result, make_case
from bnspec.dtypes import unit_roundoff
from bnspec.errors import UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.reference import reference
from bnspec.semantics import Semantics

pytest.importorskip("onnxruntime")

REF = "bnspec.adapters.onnxruntime:ONNXRUNTIME"
ONNX = get_semantics("onnx")
# Float64 cases use an eps and momentum that float32 holds exactly: ONNX attributes are float32.
EPS64, MOM64 = 2.0**-17, 0.125
_HARNESS = importlib.util.find_spec("bnspec.tolerance") is not None


def _adapter():  # type: ignore[no-untyped-def]
    from bnspec.adapters.onnxruntime import ONNXRUNTIME

    ONNXRUNTIME.setup()
    return ONNXRUNTIME


def _run(case: Case) -> Result:
    if _HARNESS:
        from tests.harness import run

        return run(REF, case)
    return _adapter().run(case)


def _max_ulps(observed: np.ndarray, expected: np.ndarray, dtype: str) -> float:
    """Largest error in units of the dtype's roundoff, relative to the quantity's scale."""
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(observed - expected))) / scale / unit_roundoff(dtype)


def _assert_matches(case: Case, semantics: Semantics = ONNX, ulps: float = 8.0) -> Result:
    if _HARNESS and semantics is ONNX:
        from tests.harness import assert_conforms

        return assert_conforms(REF, case)
    observed, expected = _run(case), reference(case, semantics)
    for i, (o, e) in enumerate(zip(observed.steps, expected.steps, strict=True)):
        for q in ("y", "running_mean", "running_var"):
            err = _max_ulps(getattr(o, q), getattr(e, q), case.dtype)
            assert err <= ulps, f"step {i} {q}: error={err:.1f} u, but should be <= {ulps} u"
    return observed


def _case(shape: tuple[int, ...], dtype: str = "float32", steps: int = 3, seed: int = 0,
          **hyper: object) -> Case:
    rng = np.random.default_rng(seed)
    c = shape[1]
    modes = ["train"] * (steps - 1) + ["eval"]
    hyper.setdefault("eps", EPS64 if dtype == "float64" else 1e-3)
    hyper.setdefault("momentum", MOM64 if dtype == "float64" else 0.1)
    return make_case(
        [rng.normal(1.5, 2.0, size=shape) for _ in range(steps)],
        modes=modes,
        gamma=rng.uniform(0.5, 2.0, size=c),
        beta=rng.normal(size=c),
        running_mean=rng.normal(size=c),
        running_var=rng.uniform(0.5, 2.0, size=c),
        dtype=dtype,
        **hyper,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 2, 2)])
def test_train_then_eval_steps_conform_to_onnx_profile_for_ranks_2_to_5(shape) -> None:
    _assert_matches(_case(shape))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_train_then_eval_steps_conform_to_onnx_profile_in_each_dtype(dtype: str) -> None:
    observed = _assert_matches(_case((4, 3, 5), dtype=dtype, steps=4))
    assert observed.steps[0].y_dtype == dtype
    assert observed.steps[0].running_dtype == dtype


def test_running_var_uses_biased_estimator_in_onnx_profile() -> None:
    case = _case((3, 2, 2), dtype="float64")  # n = 6: the n/(n-1) factor is 1.2
    _assert_matches(case)
    unbiased = reference(case, ONNX.replace(running_var_update="unbiased"))
    assert _max_ulps(_run(case).steps[0].running_var, unbiased.steps[0].running_var, "float64") > 1e6


def test_momentum_weighs_the_running_statistic_in_onnx_profile() -> None:
    # case.momentum=0.125 (batch weight) becomes ONNX momentum 0.875; a misread 0.125 would not match.
    case = _case((4, 2, 3), dtype="float64", steps=2)
    observed = _run(case)
    exact = reference(case, ONNX)
    misread = reference(case, ONNX, passed_as="batch")
    assert _max_ulps(observed.steps[0].running_mean, exact.steps[0].running_mean, "float64") <= 4
    assert _max_ulps(observed.steps[0].running_mean, misread.steps[0].running_mean, "float64") > 1e6


def test_training_step_normalizes_with_batch_statistics_not_the_blended_ones() -> None:
    # BatchNormalization-9 in onnx.reference normalized with the blended statistics; opset 15 must not.
    case = _case((4, 2, 3), dtype="float64", steps=2)
    _assert_matches(case)
    blended = reference(case, ONNX.replace(train_stats="running"))
    assert _max_ulps(_run(case).steps[0].y, blended.steps[0].y, "float64") > 1e6


def test_one_value_per_channel_is_allowed_with_zero_variance() -> None:
    case = make_case(np.array([[1.0, -2.0]]), modes="train", gamma=np.array([2.0, 3.0]),
                     beta=np.array([0.5, -0.5]), dtype="float64", eps=EPS64, momentum=MOM64)
    observed = _assert_matches(case)
    np.testing.assert_array_equal(observed.steps[0].y, [[0.5, -0.5]])
    np.testing.assert_array_equal(observed.steps[0].running_var, [0.875, 0.875])


def test_eps_is_not_floored_on_the_cpu_provider() -> None:
    # var = 2^-40 per channel: an eps floor of 1e-5 (cuDNN's minimum) would change y by ~1e7x.
    x = np.array([[1.0, 3.0], [1.0 + 2.0**-19, 3.0 - 2.0**-19]])
    case = make_case(x, modes="train", dtype="float64", eps=2.0**-60, momentum=MOM64)
    _assert_matches(case)
    _assert_matches(case.replace(eps=0.0))


def test_float16_reductions_do_not_overflow() -> None:
    # 512 values near 1000: a float16 sum (max 65504) overflows, the spec's float reductions don't.
    rng = np.random.default_rng(3)
    case = make_case(rng.normal(1000.0, 4.0, size=(512, 2)), modes="train", dtype="float16",
                     eps=1e-3, momentum=0.5)
    observed = _assert_matches(case)
    assert np.all(np.isfinite(observed.steps[0].running_mean))


def test_float64_eps_that_float32_cannot_hold_is_unsupported() -> None:
    with pytest.raises(UnsupportedFeature, match="eps=1e-05 in a float64 model"):
        _run(_case((4, 2), dtype="float64", eps=1e-5))
    with pytest.raises(UnsupportedFeature, match="momentum=0.9 in a float64 model"):
        _run(_case((4, 2), dtype="float64", momentum=0.1))


def test_onnx_attributes_hold_eps_and_momentum_in_float32() -> None:
    from bnspec.adapters.onnxruntime import build_model

    attrs = {a.name: a for a in build_model(4, "float64", True, 1e-5, 0.9).graph.node[0].attribute}
    assert attrs["epsilon"].f == float(np.float32(1e-5)) != 1e-5
    assert attrs["momentum"].f == float(np.float32(0.9)) != 0.9


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"gamma": None, "beta": None}, "affine=False"),
        ({"momentum": None}, "momentum=None"),
        ({"track_running_stats": False}, "track_running_stats=False"),
    ],
)
def test_settings_onnx_cannot_express_are_unsupported(change: dict, reason: str) -> None:
    with pytest.raises(UnsupportedFeature, match=reason):
        _run(_case((4, 2)).replace(**change))


def test_gradients_and_bfloat16_are_unsupported() -> None:
    case = _case((4, 2), steps=1)
    with pytest.raises(UnsupportedFeature, match="gradients"):
        _run(case.replace(steps=(case.steps[0].__class__("train", case.steps[0].x,
                                                          grad_output=case.steps[0].x),)))
    with pytest.raises(UnsupportedFeature, match="bfloat16"):
        _run(make_case(np.ones((2, 2)), dtype="bfloat16"))


def test_snippet_replays_the_case_in_onnxruntime() -> None:
    case = _case((3, 2, 2), steps=2)
    namespace: dict = {}
    code = _adapter().snippet(case).replace("print(", "(lambda *a: None)(")
    exec(compile(code, "<snippet>", "exec"), namespace)
    observed = _run(case)
    np.testing.assert_array_equal(namespace["out"][0], observed.steps[-1].y.astype(np.float32))
