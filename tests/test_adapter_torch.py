"""The PyTorch adapters (eager module, functional, torch.compile) against the ``pytorch``
profiles, in their real worker processes, and the knobs of those profiles pinned by running
torch itself."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from bnspec.case import Case, Result, make_case
from bnspec.errors import FrameworkError, UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.reference import reference
from bnspec.tolerance import compare
from tests.harness import assert_conforms, run

pytest.importorskip("torch")
pytestmark = pytest.mark.framework("torch")

MODULE = "bnspec.adapters.torch:TORCH_MODULE"
FUNCTIONAL = "bnspec.adapters.torch:TORCH_FUNCTIONAL"
COMPILE = "bnspec.adapters.torch:TORCH_COMPILE"

SHAPES = {2: (6, 3), 3: (4, 3, 5), 4: (3, 3, 2, 3), 5: (2, 3, 2, 2, 2)}


def _case(
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    modes: tuple[str, ...] = ("train", "train", "train", "eval"),
    grads: bool = True,
    affine: bool = True,
    loc: float = 1.0,
    scale: float = 2.0,
    **hyper: object,
) -> Case:
    """Several train steps (so the running statistics matter), then eval."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    xs = [rng.normal(loc, scale, shape) for _ in modes]
    return make_case(
        xs,
        modes=list(modes),
        gamma=rng.uniform(0.5, 2.0, c) if affine else None,
        beta=rng.normal(size=c) if affine else None,
        running_mean=rng.normal(size=c),
        running_var=rng.uniform(0.5, 2.0, c),
        grad_outputs=[rng.normal(size=shape) for _ in modes] if grads else None,
        **hyper,  # type: ignore[arg-type]
    )


def _conforms_under(
    case: Case, observed: Result, passed_as: str | None = None, **knobs: object
) -> bool:
    """Whether ``observed`` also fits the pytorch profile with some knobs flipped."""
    semantics = get_semantics("pytorch").replace(**knobs)
    expected = reference(case, semantics, passed_as=passed_as)  # type: ignore[arg-type]
    return compare(case, semantics, observed, expected).ok


# -- torch.nn.BatchNorm1d/2d/3d, eager --


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_module_conforms_to_pytorch_profile_for_every_rank_with_gradients(rank: int) -> None:
    case = _case(SHAPES[rank], momentum=0.1, eps=1e-5)
    result = assert_conforms(MODULE, case)
    assert [s.y_dtype for s in result.steps] == ["float64"] * 4
    assert all(s.dx is not None and s.dgamma is not None for s in result.steps)


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_module_conforms_in_float32_with_channels_last_strides(rank: int) -> None:
    case = _case(SHAPES[rank], dtype="float32", momentum=0.3, eps=1e-3, layout="channels_last")
    assert_conforms(MODULE, case)


def test_module_conforms_without_affine_parameters() -> None:
    result = assert_conforms(MODULE, _case((4, 3, 2, 2), affine=False, momentum=0.2))
    assert result.steps[0].dgamma is None and result.steps[0].dbeta is None


def test_module_without_running_statistics_normalizes_eval_batches_with_batch_stats() -> None:
    case = _case((5, 2, 3), track_running_stats=False, momentum=0.1)
    result = assert_conforms(MODULE, case)
    assert all(s.running_mean is None and s.running_var is None for s in result.steps)


def test_momentum_none_is_the_cumulative_average_of_pytorch_cumulative_profile() -> None:
    case = _case((6, 3), modes=("train",) * 4 + ("eval",), momentum=None, grads=False)
    result = assert_conforms(MODULE, case, profile="pytorch_cumulative")
    # After t steps the running mean is the plain average of the t batch means (the first
    # step replaces the initial value).
    batch_means = [s.x.mean(axis=0) for s in case.steps[:4]]
    np.testing.assert_allclose(
        result.steps[3].running_mean, np.mean(batch_means, axis=0), rtol=1e-12
    )


def test_running_var_uses_unbiased_estimator_in_pytorch_profile() -> None:
    case = _case((4, 3), grads=False, momentum=0.5)
    observed = assert_conforms(MODULE, case)
    assert not _conforms_under(case, observed, running_var_update="biased")


def test_momentum_weights_the_batch_statistic() -> None:
    case = _case((4, 3), grads=False, momentum=0.2)
    observed = assert_conforms(MODULE, case)
    # torch's momentum=0.2 read as the weight of the running statistic (the Keras convention)
    assert not _conforms_under(case, observed, passed_as="batch", momentum_weights="running")


def test_batch_variance_is_two_pass_so_a_large_mean_does_not_cancel_in_float32() -> None:
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 in float32 loses every digit of the variance.
    case = _case((8, 2, 4), dtype="float32", loc=1e4, scale=1e-2, grads=False, momentum=0.1)
    assert_conforms(MODULE, case)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_input_with_float32_parameters_gives_half_output_and_float32_running_stats(
    dtype: str,
) -> None:
    case = _case((4, 3, 2, 3), dtype=dtype, param_dtype="float32", grads=False, momentum=0.1)
    result = assert_conforms(MODULE, case)
    assert {s.y_dtype for s in result.steps} == {dtype}
    assert {s.running_dtype for s in result.steps} == {"float32"}


def test_half_parameters_keep_running_stats_in_half_and_round_the_normalizing_statistics() -> None:
    case = _case((16, 4, 8, 8), dtype="float16", grads=False, momentum=0.1)
    result = assert_conforms(MODULE, case)
    assert {s.running_dtype for s in result.steps} == {"float16"}
    # The kernel reads the batch mean and invstd back from float16 tensors before normalizing:
    # a float32 normalization does not explain the output.
    assert not _conforms_under(case, result, normalize_dtype="compute")


def test_mixed_dtypes_the_cpu_kernel_rejects_are_unsupported_not_failures() -> None:
    with pytest.raises(UnsupportedFeature, match="float32 input with float16 parameters"):
        run(MODULE, _case((4, 3), dtype="float32", param_dtype="float16"))


def test_one_value_per_channel_in_training_raises_in_torch() -> None:
    with pytest.raises(FrameworkError, match="Expected more than 1 value per channel"):
        run(MODULE, _case((1, 3), modes=("train",), grads=False))


def test_module_snippet_runs_as_a_standalone_program() -> None:
    from bnspec.adapters.torch import TORCH_MODULE

    case = _case((3, 2, 2), modes=("train", "eval"), layout="channels_last", dtype="float32")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(TORCH_MODULE.snippet(case), "<snippet>", "exec"), {})
    assert "running" in out.getvalue() and "dx" in out.getvalue()
    assert "dx None" not in out.getvalue()  # x is a leaf that requires grad, channels-last strides too


# -- torch.nn.functional.batch_norm --


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_functional_conforms_with_running_statistics_passed_as_tensors(dtype: str) -> None:
    assert_conforms(FUNCTIONAL, _case((3, 3, 2, 3), dtype=dtype, momentum=0.1))


def test_functional_conforms_with_bfloat16_input_and_float32_statistics() -> None:
    case = _case((4, 2, 6), dtype="bfloat16", param_dtype="float32", grads=False)
    assert_conforms(FUNCTIONAL, case)


def test_functional_without_running_statistics_or_affine_uses_batch_statistics() -> None:
    assert_conforms(FUNCTIONAL, _case((5, 3), affine=False, track_running_stats=False))


def test_functional_cannot_express_a_cumulative_average() -> None:
    with pytest.raises(UnsupportedFeature, match="momentum=None"):
        run(FUNCTIONAL, _case((4, 3), momentum=None))


def test_functional_snippet_runs_as_a_standalone_program() -> None:
    from bnspec.adapters.torch import TORCH_FUNCTIONAL

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(TORCH_FUNCTIONAL.snippet(_case((4, 2))), "<snippet>", "exec"), {})
    assert "eval" in out.getvalue()


# -- torch.compile(backend="inductor") --


def test_compiled_module_conforms_in_float32_with_gradients() -> None:
    case = _case((3, 3, 2, 3), dtype="float32", modes=("train", "train", "eval"), momentum=0.1)
    result = assert_conforms(COMPILE, case)
    assert result.meta["compiled"] is True


def test_compiled_module_conforms_with_float16_input_and_float32_parameters() -> None:
    case = _case((3, 3, 2, 3), dtype="float16", param_dtype="float32", grads=False,
                 modes=("train", "train", "eval"))
    result = assert_conforms(COMPILE, case)
    assert {s.y_dtype for s in result.steps} == {"float16"}
    assert {s.running_dtype for s in result.steps} == {"float32"}


def test_compiled_module_reports_momentum_none_unsupported_rather_than_running_eagerly() -> None:
    with pytest.raises(UnsupportedFeature, match="momentum=None"):
        run(COMPILE, _case((4, 3), momentum=None))
