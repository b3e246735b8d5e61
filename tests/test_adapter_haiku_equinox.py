"""haiku.BatchNorm and equinox.nn.BatchNorm (mode='ema' and mode='batch') against the "haiku",
"equinox_ema" and "equinox_batch" profiles, and one test per knob those profiles pin.

A knob is pinned by running the framework: the observed result conforms to the profile and does
not conform to the profile with that one knob flipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from bnspec.case import Case, Result, make_case
from bnspec.errors import FrameworkError, UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.tolerance import compare
from bnspec.worker import DEFAULT_ENV
from tests.harness import assert_conforms, run

pytest.importorskip("haiku")
pytest.importorskip("equinox")

HAIKU = "bnspec.adapters.haiku:HAIKU"
EQX_EMA = "bnspec.adapters.equinox:EQUINOX_EMA"
EQX_BATCH = "bnspec.adapters.equinox:EQUINOX_BATCH"
ALL = [HAIKU, EQX_EMA, EQX_BATCH]
PROFILE = {HAIKU: "haiku", EQX_EMA: "equinox_ema", EQX_BATCH: "equinox_batch"}


def _case(
    shape: tuple[int, ...] = (4, 3, 5),
    modes: tuple[str, ...] = ("eval", "train", "train", "train", "eval"),
    *,
    seed: int = 0,
    grads: bool = True,
    affine: bool = True,
    loc: float = 1.0,
    **kw: Any,
) -> Case:
    rs = np.random.RandomState(seed)
    c = shape[1]
    xs = [rs.randn(*shape) * 2.0 + loc for _ in modes]
    gs = [rs.randn(*shape) for _ in modes] if grads else None
    kw.setdefault("momentum", 0.25)
    kw.setdefault("eps", 1e-3)
    return make_case(
        xs,
        modes=list(modes),
        grad_outputs=gs,
        gamma=rs.rand(c) + 0.5 if affine else None,
        beta=rs.randn(c) if affine else None,
        running_mean=rs.randn(c),
        running_var=rs.rand(c) + 0.5,
        **kw,
    )


def _pins(ref: str, case: Case, knob: str, other: Any) -> Result:
    """The framework conforms to its profile, and not to the profile with `knob` = `other`."""
    __tracebackhide__ = True
    observed = assert_conforms(ref, case)
    flipped = get_semantics(PROFILE[ref]).replace(**{knob: other})
    assert not compare(case, flipped, observed).ok, (
        f"{ref} also conforms with {knob}={other!r}: the case does not pin the knob"
    )
    return observed


# -- every adapter: ranks, steps, gradients, affine off, dtypes --
@pytest.mark.parametrize("ref", ALL)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 3, 2), (2, 2, 2, 2, 3)])
def test_train_and_eval_steps_with_gradients_conform_in_float64(
    ref: str, shape: tuple[int, ...]
) -> None:
    assert_conforms(ref, _case(shape))


@pytest.mark.parametrize("ref", ALL)
def test_affine_off_conforms(ref: str) -> None:
    assert_conforms(ref, _case(affine=False))


@pytest.mark.parametrize("ref", ALL)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_dtypes_conform(ref: str, dtype: str) -> None:
    observed = assert_conforms(ref, _case(dtype=dtype))
    assert {s.y_dtype for s in observed.steps} == {dtype}
    assert {s.running_dtype for s in observed.steps} == {dtype}


@pytest.mark.parametrize("ref", ALL)
def test_float64_cases_run_in_jax_x64_mode(ref: str) -> None:
    observed = run(ref, _case(grads=False))
    assert observed.meta["jax_enable_x64"] is True
    assert {s.y_dtype for s in observed.steps} == {"float64"}


@pytest.mark.parametrize("ref", ALL)
def test_cumulative_momentum_is_unsupported(ref: str) -> None:
    with pytest.raises(UnsupportedFeature):
        run(ref, _case(momentum=None))


@pytest.mark.parametrize("ref", ALL)
def test_one_value_per_channel_is_allowed_in_training(ref: str) -> None:
    case = _case((1, 3), modes=("train", "eval"))
    observed = assert_conforms(ref, case)
    assert case.beta is not None
    np.testing.assert_allclose(observed.steps[0].y, case.beta[None, :], rtol=0, atol=1e-12)


# -- haiku --
def test_haiku_channels_last_data_format_conforms() -> None:
    assert_conforms(HAIKU, _case((2, 3, 3, 2), layout="channels_last"))


def test_haiku_running_stats_are_read_zero_debiased() -> None:
    _pins(HAIKU, _case(grads=False), "ema_debias", False)


def test_haiku_batch_variance_is_one_pass_and_loses_digits_when_the_mean_is_large() -> None:
    # |mean| / std = 500 in float32: E[x^2] - E[x]^2 cancels about 2 log2(500) = 18 bits.
    case = _case((64, 2), modes=("train", "train"), grads=False, loc=1000.0, dtype="float32")
    _pins(HAIKU, case, "variance_algorithm", "two_pass")


def test_haiku_running_var_is_updated_with_the_biased_batch_variance() -> None:
    _pins(HAIKU, _case((3, 2), grads=False), "running_var_update", "unbiased")


def test_haiku_param_dtype_unlike_the_input_dtype_is_unsupported() -> None:
    with pytest.raises(UnsupportedFeature):
        run(HAIKU, _case(dtype="float16", param_dtype="float32"))


# -- equinox --
def test_equinox_ema_mode_normalizes_training_batches_with_the_updated_running_stats() -> None:
    _pins(EQX_EMA, _case(), "train_stats", "batch")


def test_equinox_ema_mode_gradients_flow_through_the_running_stats() -> None:
    # Compared with the batch-statistics gradient, the EMA weight shrinks the mean/var terms.
    observed = assert_conforms(EQX_EMA, _case(modes=("train", "train")))
    flipped = get_semantics("equinox_ema").replace(train_stats="batch")
    comparison = compare(_case(modes=("train", "train")), flipped, observed)
    assert any(c.quantity == "dx" and c.step == 1 and not c.ok for c in comparison.checks)


def test_equinox_ema_mode_first_training_step_replaces_the_running_stats() -> None:
    _pins(EQX_EMA, _case(modes=("train", "eval")), "first_update", "ema")


def test_equinox_ema_mode_with_a_loaded_counter_blends_its_first_step() -> None:
    # ema_first_time_index is the one bit of the counter mode='ema' keeps: a layer that has
    # updated before (counter > 0) blends its next training step like any other.
    case = _case(modes=("train", "eval"), counter=3)
    observed = assert_conforms(EQX_EMA, case)
    fresh = run(EQX_EMA, _case(modes=("train", "eval")))
    batch_mean = case.steps[0].x.mean(axis=(0, 2))
    np.testing.assert_allclose(fresh.steps[0].running_mean, batch_mean, rtol=1e-12)  # replaced
    m = float(case.momentum)  # type: ignore[arg-type]
    np.testing.assert_allclose(observed.steps[0].running_mean, (1 - m) * case.running_mean + m * batch_mean,
                               rtol=1e-12)  # blended


def test_equinox_batch_mode_debiases_running_stats_including_the_initial_ones() -> None:
    # equinox#1010: the hidden variance starts at 1 and is divided by 1 - momentum^t too.
    _pins(EQX_BATCH, _case(grads=False), "ema_debias", False)


def test_equinox_batch_mode_running_var_is_biased_unlike_its_docstring_says() -> None:
    # The class docstring: "For inference the exponential running mean and unbiased variance
    # are used"; _stats feeds the biased variance.
    _pins(EQX_BATCH, _case((3, 2), grads=False), "running_var_update", "unbiased")


def test_equinox_batch_mode_normalizes_training_batches_with_batch_stats() -> None:
    _pins(EQX_BATCH, _case(), "train_stats", "running")


def test_equinox_batch_mode_promotes_a_float16_input_to_float32_weights() -> None:
    observed = assert_conforms(EQX_BATCH, _case(dtype="float16", param_dtype="float32"))
    assert {s.y_dtype for s in observed.steps} == {"float32"}
    assert {s.running_dtype for s in observed.steps} == {"float32"}


def test_equinox_ema_mode_raises_on_an_input_dtype_unlike_its_state_dtype() -> None:
    with pytest.raises(FrameworkError, match="lax.select requires arguments to have the same"):
        run(EQX_EMA, _case(dtype="float16", param_dtype="float32"))


@pytest.mark.parametrize("ref", [EQX_EMA, EQX_BATCH])
def test_equinox_raises_on_an_input_more_precise_than_its_state(ref: str) -> None:
    with pytest.raises(FrameworkError):
        run(ref, _case(dtype="float64", param_dtype="float32"))


# -- defaults that only a freshly built module shows (the adapters overwrite them) --
_PROBE = r"""
import json, jax.numpy as jnp, numpy as np, haiku as hk, equinox as eqx
f = hk.transform_with_state(lambda x, t: hk.BatchNorm(True, True, 0.9, name="bn")(x, t))
_, st = f.init(None, jnp.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]]), True)
KEYS = ("hidden", "average")
ema = eqx.nn.BatchNorm(3, "batch", mode="ema")
batch = eqx.nn.BatchNorm(3, "batch", mode="batch")
s_ema, s_batch = eqx.nn.State(ema), eqx.nn.State(batch)
out = {
  "haiku_mean": [np.asarray(st["bn/~/mean_ema"][k]).ravel().tolist() for k in KEYS],
  "haiku_var": [np.asarray(st["bn/~/var_ema"][k]).ravel().tolist() for k in KEYS],
  "haiku_counter": int(st["bn/~/mean_ema"]["counter"]),
  "ema": [np.asarray(a).tolist() for a in s_ema.get(ema.ema_state_index)],
  "batch": [np.asarray(a).tolist() for a in s_batch.get(batch.batch_state_index)],
  "batch_counter": int(s_batch.get(batch.batch_counter)),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_state() -> dict[str, Any]:
    from bnspec.adapters.haiku import HAIKU as adapter

    env = {**os.environ, **DEFAULT_ENV, **adapter.worker_env}  # as the worker launches it
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_haiku_ema_hidden_state_starts_at_zeros_but_init_stores_the_init_batch_as_average(
    fresh_state: dict[str, Any],
) -> None:
    # hidden and counter keep their jnp.zeros / 0 init; `average` has no init of its own, so
    # init(is_training=True) stores the first (debiased) update: the init batch's statistics.
    assert get_semantics("haiku").initial_running == (0.0, 0.0)
    hidden_mean, average_mean = fresh_state["haiku_mean"]
    hidden_var, average_var = fresh_state["haiku_var"]
    assert hidden_mean == hidden_var == [0.0] * 3
    assert fresh_state["haiku_counter"] == 0
    np.testing.assert_allclose(average_mean, [2.0, 4.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(average_var, [1.0, 4.0, 9.0], rtol=1e-6)


def test_equinox_ema_mode_empty_buffers_read_as_zeros(fresh_state: dict[str, Any]) -> None:
    assert get_semantics("equinox_ema").initial_running == (0.0, 0.0)
    assert fresh_state["ema"] == [[0.0] * 3, [0.0] * 3]


def test_equinox_batch_mode_hidden_state_starts_at_zeros_and_ones(
    fresh_state: dict[str, Any],
) -> None:
    assert get_semantics("equinox_batch").initial_running == (0.0, 1.0)
    assert fresh_state["batch"] == [[0.0] * 3, [1.0] * 3]
    assert fresh_state["batch_counter"] == 0


# -- snippets replay the case in the framework's own API --
@pytest.mark.parametrize("ref", ALL)
def test_snippet_replays_the_case(ref: str) -> None:
    from bnspec.discovery import load_adapter_ref

    adapter = load_adapter_ref(ref)
    case = _case((3, 2), modes=("train", "eval"), grads=False)
    code = adapter.snippet(case) + "\nprint('YLAST', np.asarray(y1).ravel().tolist())"
    env = {**os.environ, **DEFAULT_ENV, **adapter.worker_env}  # as the worker launches it
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("YLAST")][-1]
    y = np.array(json.loads(line.split(" ", 1)[1]))
    expected = run(ref, case).steps[1].y.ravel()
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
