"""onnx.reference's ReferenceEvaluator, one adapter per BatchNormalization version it implements,
against the "onnx_reference" and "onnx_reference_9" profiles, and the knobs it pins."""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import Case, Result, Step, make_case
from bnspec.errors import UnsupportedFeature
from bnspec.fingerprint import fingerprint
from bnspec.profiles import get_semantics
from bnspec.reference import emulate, reference
from tests.harness import assert_conforms, run

pytest.importorskip("onnx.reference")

_MODULE = "bnspec.adapters.onnx_reference"
REFS = {opset: f"{_MODULE}:ONNX_REFERENCE_{opset}" for opset in (6, 9, 14, 15)}
TRAINING = (14, 15)  # the versions whose training nodes the evaluator runs
SEM = get_semantics("onnx_reference")
# Float64 cases use an eps and momentum that float32 holds exactly: ONNX attributes are float32.
EPS64, MOM64 = 2.0**-17, 0.125


def _adapter(opset: int):  # type: ignore[no-untyped-def]
    from bnspec.adapters import onnx_reference

    adapter = getattr(onnx_reference, f"ONNX_REFERENCE_{opset}")
    adapter.setup()
    return adapter


def _evaluate(opset: int, training: bool, feeds: tuple[np.ndarray, ...], **kw: object) -> list:
    from onnx.reference import ReferenceEvaluator

    from bnspec.adapters.onnx_reference import build_model, input_names

    model = build_model(opset, feeds[0].ndim, str(feeds[0].dtype), str(feeds[1].dtype), training,
                        kw.get("eps", 1e-3), kw.get("momentum", 0.875))  # type: ignore[arg-type]
    return ReferenceEvaluator(model).run(None, dict(zip(input_names(opset), feeds, strict=True)))


def _case(shape: tuple[int, ...], dtype: str = "float32", modes: tuple[str, ...] = ("train", "train", "eval"),
          seed: int = 0, **hyper: object) -> Case:
    rng = np.random.default_rng(seed)
    c = shape[1]
    hyper.setdefault("eps", EPS64 if dtype == "float64" else 1e-3)
    hyper.setdefault("momentum", MOM64 if dtype == "float64" else 0.1)
    return make_case([rng.normal(1.5, 2.0, size=shape) for _ in modes], modes=list(modes),  # type: ignore[arg-type]
                     gamma=rng.uniform(0.5, 2.0, size=c), beta=rng.normal(size=c),
                     running_mean=rng.normal(size=c), running_var=rng.uniform(0.5, 2.0, size=c),
                     dtype=dtype, **hyper)  # type: ignore[arg-type]


# -- the training_mode operator (opsets 14, 15): train then eval --
@pytest.mark.parametrize("opset", TRAINING)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 2, 2)])
def test_train_then_eval_steps_conform_to_onnx_reference_for_ranks_2_to_5(opset: int, shape) -> None:
    assert_conforms(REFS[opset], _case(shape))


@pytest.mark.parametrize("opset", TRAINING)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_train_then_eval_steps_conform_in_each_dtype(opset: int, dtype: str) -> None:
    observed = assert_conforms(REFS[opset], _case((4, 3, 5), dtype=dtype))
    assert observed.steps[0].y_dtype == observed.steps[0].running_dtype == dtype


@pytest.mark.parametrize("opset", TRAINING)
def test_training_step_by_hand_momentum_weighs_running_and_variance_is_biased(opset: int) -> None:
    # channel 0: [-1, 1] (mean 0, biased var 1); channel 1: [1, 5] (mean 3, biased var 4); eps 0.
    x = np.array([[[-1.0, 1.0]], [[1.0, 5.0]]]).reshape(1, 2, 2)
    case = make_case([x, np.array([[[1.75, 0.0]], [[2.375, 1.0]]]).reshape(1, 2, 2)],
                     modes=["train", "eval"], gamma=np.array([2.0, 0.5]), beta=np.array([0.5, -1.0]),
                     running_mean=np.array([1.0, -1.0]), running_var=np.array([2.0, 0.5]),
                     dtype="float64", eps=0.0, momentum=0.25)  # ONNX momentum 0.75
    train, evaluated = assert_conforms(REFS[opset], case).steps
    # batch statistics normalize (biased: +-1 standard deviations), not the blended ones
    np.testing.assert_array_equal(train.y, [[[-1.5, 2.5], [-1.5, -0.5]]])
    np.testing.assert_array_equal(train.running_mean, [0.75 * 1 + 0.25 * 0, 0.75 * -1 + 0.25 * 3])
    np.testing.assert_array_equal(train.running_var, [0.75 * 2 + 0.25 * 1, 0.75 * 0.5 + 0.25 * 4])
    # eval normalizes with the running statistics the training step returned
    rm, rv = np.array([0.75, 0.0]), np.array([1.75, 1.375])
    expected = (case.steps[1].x - rm[None, :, None]) / np.sqrt(rv)[None, :, None]
    np.testing.assert_allclose(evaluated.y, expected * [[[2.0], [0.5]]] + [[[0.5], [-1.0]]], rtol=1e-15)
    for knob, value in dict(running_var_update="unbiased", train_stats="running", eval_stats="batch").items():
        other = reference(case, SEM.replace(**{knob: value}))
        assert any(np.max(np.abs(getattr(o, q) - getattr(t, q))) > 1e-3 for o, t in
                   zip(other.steps, (train, evaluated), strict=True) for q in ("y", "running_var")), knob


@pytest.mark.parametrize("opset", TRAINING)
def test_eps_is_inside_the_square_root_and_not_floored(opset: int) -> None:
    # one channel [-0.5, 0.5] (biased var 0.25): eps 0.5 inside the root gives 0.5/sqrt(0.75)
    case = make_case(np.array([[-0.5], [0.5]]), modes="train", dtype="float64", eps=0.5, momentum=MOM64)
    np.testing.assert_allclose(run(REFS[opset], case).steps[0].y[:, 0], [-0.5, 0.5] / np.sqrt(0.75), rtol=1e-15)
    tiny = make_case(np.array([[1.0, 3.0], [1.0 + 2.0**-19, 3.0 - 2.0**-19]]), modes="train",
                     dtype="float64", eps=2.0**-60, momentum=MOM64)
    # var 2^-40 + eps 2^-60: y = +-1/sqrt(1 + 2^-20); an eps floor of 1e-5 would give +-3e-4
    expected = np.array([[-1, 1], [1, -1]]) / np.sqrt(1 + 2.0**-20)
    np.testing.assert_allclose(run(REFS[opset], tiny).steps[0].y, expected, rtol=1e-12)


@pytest.mark.parametrize("opset", TRAINING)
def test_one_value_per_channel_is_allowed_with_zero_variance(opset: int) -> None:
    case = make_case(np.array([[1.0, -2.0]]), modes="train", gamma=np.array([2.0, 3.0]),
                     beta=np.array([0.5, -0.5]), dtype="float64", eps=EPS64, momentum=MOM64)
    observed = assert_conforms(REFS[opset], case)
    np.testing.assert_array_equal(observed.steps[0].y, [[0.5, -0.5]])
    np.testing.assert_array_equal(observed.steps[0].running_var, [0.875, 0.875])


@pytest.mark.parametrize("opset", TRAINING)
def test_variance_is_two_pass_at_a_large_offset(opset: int) -> None:
    rng = np.random.default_rng(1)  # mean/std 1e4 in float32: E[x^2] - E[x]^2 would lose every digit
    case = make_case(1e4 + rng.normal(0, 1, (8, 32)), modes="train", dtype="float32", eps=1e-3, momentum=0.5)
    observed = assert_conforms(REFS[opset], case)
    exact = reference(case, SEM)
    np.testing.assert_allclose(observed.steps[0].running_var, exact.steps[0].running_var, rtol=1e-3)


# -- numerics: the evaluator is NumPy in the input's dtype --
@pytest.mark.parametrize("opset", [6, 14, 15])
def test_x_minus_mean_is_rounded_to_float16_before_normalizing(opset: int) -> None:
    # x - mean = 2049 rounds to 2048 in float16 (normalize_dtype=input); in float32 y would be 1.
    case = make_case(np.array([[2050.0]]), modes="eval", gamma=np.array([1.0]), beta=np.array([-2048.0]),
                     running_mean=np.array([1.0]), running_var=np.array([1.0]), dtype="float16",
                     eps=0.0, momentum=0.1)
    observed = run(REFS[opset], case).steps[0]
    assert observed.y[0, 0] == 0.0 == emulate(case, SEM).steps[0].y[0, 0]
    assert emulate(case, SEM.replace(normalize_dtype="compute", compute_dtype="promote_float32")).steps[0].y[0, 0] == 1
    assert reference(case, SEM).steps[0].y[0, 0] == 1.0


@pytest.mark.parametrize("opset", TRAINING)
def test_float16_variance_overflows_although_the_opset_15_text_says_float(opset: int) -> None:
    # 512 values near 1000: numpy's x.var sums float16 in float16 (compute_dtype=input), so the
    # variance is inf and y collapses to B; "ReduceVar uses float to avoid overflow" (opset 15 text).
    rng = np.random.default_rng(3)
    case = make_case(rng.normal(1000.0, 4.0, size=(512, 2)), modes="train", dtype="float16",
                     beta=np.array([0.25, -0.5]), eps=1e-3, momentum=0.5)
    observed = run(REFS[opset], case).steps[0]
    assert np.all(np.isinf(observed.running_var))
    np.testing.assert_array_equal(observed.y, np.broadcast_to([0.25, -0.5], observed.y.shape))
    in_float = emulate(case, SEM.replace(compute_dtype="promote_float32")).steps[0]
    assert np.all(np.isfinite(in_float.running_var)) and np.all(np.isfinite(in_float.y))


def test_running_statistics_come_back_in_x_dtype_not_t2_at_opset_15() -> None:
    x = np.random.default_rng(4).normal(size=(4, 2)).astype(np.float16)
    params = tuple(np.array(v, np.float32) for v in ([1.0, 2.0], [0.0, 0.5], [0.0, 1.0], [1.0, 2.0]))
    outputs = _evaluate(15, True, (x, *params))
    assert [o.dtype for o in outputs] == [np.float16] * 3  # the operator types running_mean T2
    case = _case((4, 2), dtype="float16", modes=("train", "eval")).replace(param_dtype="float32")
    observed = assert_conforms(REFS[15], case)
    assert (observed.steps[0].y_dtype, observed.steps[0].running_dtype) == ("float16", "float16")
    assert observed.steps[1].running_dtype is None  # an eval node returns no running statistics


@pytest.mark.parametrize("opset", [6, 9, 14, 15])
def test_affine_form_is_centered_constant_channel_at_the_mean_gives_b_exactly(opset: int) -> None:
    beta = np.array([0.375 + 2.0**-12, -1.25 + 3 * 2.0**-12])
    case = make_case(np.full((8, 2), 3e4), modes="eval", gamma=np.array([1.5, 0.75]), beta=beta,
                     running_mean=np.full(2, 3e4), running_var=np.array([0.5, 2.0]),
                     dtype="float32", eps=1e-3, momentum=0.125)  # blends 3e4 exactly at opset 9
    observed = run(REFS[opset], case).steps[0].y
    np.testing.assert_array_equal(observed, np.broadcast_to(beta.astype(np.float32), observed.shape))
    folded = emulate(case, SEM.replace(affine_form="folded")).steps[0].y
    assert np.max(np.abs(folded - beta)) > 1e-4


# -- opset 6: test mode only --
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 5)])
def test_opset_6_test_mode_conforms_to_onnx_reference(dtype: str, shape) -> None:
    assert_conforms(REFS[6], _case(shape, dtype=dtype, modes=("eval", "eval")))


def test_opset_6_to_8_training_nodes_fail_in_the_evaluator() -> None:
    from onnx.reference import ReferenceEvaluator

    from bnspec.adapters.onnx_reference import build_model

    x, p = np.ones((2, 2)), np.ones(2)
    with pytest.raises(TypeError, match="is a tuple"):
        _evaluate(6, True, (x, p, p, p, p))
    model = build_model(7, 2, "float64", "float64", False, 1e-3, 0.9)  # a valid opset-7 test-mode node
    kept = [a for a in model.graph.node[0].attribute if a.name != "is_test"]  # gone in opset 7
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.extend(kept)
    with pytest.raises(TypeError, match="is a tuple"):
        ReferenceEvaluator(model).run(None, dict(X=x, scale=p, B=p, mean=p, var=p))
    with pytest.raises(UnsupportedFeature, match="nested tuple"):
        run(REFS[6], _case((4, 2)))


# -- opset 9: test mode normalizes with blended statistics --
def test_opset_9_test_mode_normalizes_with_momentum_blended_statistics() -> None:
    case = _case((4, 3, 2), dtype="float64", modes=("eval",))
    assert case.momentum is not None and case.gamma is not None and case.beta is not None
    x, m = case.steps[0].x, 1 - case.momentum  # ONNX momentum 0.875
    mean = m * case.running_mean + (1 - m) * x.mean(axis=(0, 2))
    var = m * case.running_var + (1 - m) * x.var(axis=(0, 2))
    expected = (x - mean[:, None]) / np.sqrt(var[:, None] + case.eps) * case.gamma[:, None] + case.beta[:, None]
    observed = run(REFS[9], case).steps[0]
    np.testing.assert_allclose(observed.y, expected, rtol=1e-14, atol=1e-14)
    spec = reference(case, get_semantics("onnx_reference_9")).steps[0].y  # the operator text: input mean/var
    assert np.max(np.abs(observed.y - spec)) > 1e-2
    np.testing.assert_array_equal(observed.running_mean, case.running_mean)  # nothing is updated


def test_opset_9_conforms_only_where_the_blend_is_the_running_statistics() -> None:
    assert_conforms(REFS[9], _case((4, 3, 2), dtype="float64", modes=("eval", "eval"), momentum=0.0))


def test_opset_9_training_nodes_fail_in_the_evaluator() -> None:
    x, p = np.ones((2, 2)), np.ones(2)
    with pytest.raises(RuntimeError, match="Unable to find output name 'running_mean'"):
        _evaluate(9, True, (x, p, p, p, p))
    with pytest.raises(UnsupportedFeature, match="returns Y only"):
        run(REFS[9], _case((4, 2)))


# -- what the adapters build and refuse --
@pytest.mark.parametrize("opset", [6, 9, 14, 15])
@pytest.mark.parametrize("training", [False, True])
def test_models_are_valid_onnx_at_their_opset(opset: int, training: bool) -> None:
    import onnx

    from bnspec.adapters.onnx_reference import build_model

    pdt = "float32" if opset >= 15 else "float16"
    onnx.checker.check_model(build_model(opset, 4, "float16", pdt, training, 1e-5, 0.9), full_check=True)


def test_float64_attributes_that_float32_cannot_hold_are_unsupported() -> None:
    with pytest.raises(UnsupportedFeature, match="eps=1e-05 in a float64 model"):
        run(REFS[15], _case((4, 2), dtype="float64", eps=1e-5))
    with pytest.raises(UnsupportedFeature, match="momentum=0.9 in a float64 model"):
        run(REFS[9], _case((4, 2), dtype="float64", modes=("eval",), momentum=0.1))
    with pytest.raises(UnsupportedFeature, match="forms 1 - momentum in float32"):
        run(REFS[14], _case((4, 2), dtype="float64", momentum=1 - 2.0**-30))
    assert_conforms(REFS[6], _case((4, 2), dtype="float64", modes=("eval",), momentum=0.1))  # never read


@pytest.mark.parametrize(("change", "reason"), [
    ({"gamma": None, "beta": None}, "affine=False"), ({"momentum": None}, "momentum=None"),
    ({"track_running_stats": False}, "track_running_stats=False"), ({"param_dtype": "float64"}, "param_dtype"),
])
def test_settings_the_operator_cannot_express_are_unsupported(change: dict, reason: str) -> None:
    with pytest.raises(UnsupportedFeature, match=reason):
        run(REFS[14], _case((4, 2)).replace(**change))


def test_gradients_and_bfloat16_before_opset_14_are_unsupported() -> None:
    case = _case((4, 2), modes=("train",))
    step = case.steps[0]
    with pytest.raises(UnsupportedFeature, match="gradients"):
        run(REFS[15], case.replace(steps=(Step("train", step.x, grad_output=step.x),)))
    with pytest.raises(UnsupportedFeature, match="bfloat16"):
        run(REFS[6], make_case(np.ones((2, 2)), modes="eval", dtype="bfloat16"))


def test_snippet_replays_the_case_in_the_evaluator() -> None:
    case = _case((3, 2, 2), modes=("train", "eval"))
    namespace: dict = {}
    code = _adapter(15).snippet(case).replace("print(", "(lambda *a: None)(")
    exec(compile(code, "<snippet>", "exec"), namespace)
    observed: Result = run(REFS[15], case)
    np.testing.assert_array_equal(namespace["out"][0], observed.steps[-1].y.astype(np.float32))


@pytest.mark.parametrize("opset", [6, 9, 14, 15])
def test_fingerprint_agrees_with_the_declared_profile(opset: int) -> None:
    found = fingerprint(_adapter(opset), in_process=True)
    disagree = {k: v for k, v in found["knobs"].items() if not v["agrees"]}
    if opset in TRAINING:
        # The half_large probe (4096 float16 values near 24): np.mean accumulates float16 in
        # float32, but x.var() sums its own mean in float16, which overflows to inf, so the
        # variance is inf and y = 0. No compute_dtype value says that (a finding, also the
        # report's onnx_reference_15 half_precision cell; tests/test_fingerprint.py records it).
        for knob in ("compute_dtype", "normalize_dtype"):
            row = disagree.pop(knob)
            assert row["observed"].startswith("none of") and "half_large" in row["decided_by"], row
            assert "observed 0.0" in row["evidence"], row
    assert not disagree, disagree
    assert found["knobs"]["affine_form"]["observed"] == "'centered'"
    if opset in TRAINING:
        decided = {k for k, v in found["knobs"].items() if v["status"] != "not probed"}
        assert {"momentum_weights", "running_var_update", "train_stats", "eval_stats", "normalize_dtype",
                "variance_algorithm", "state_dtype", "single_value"} <= decided
