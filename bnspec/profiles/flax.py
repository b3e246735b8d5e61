"""Flax (linen, nnx) profiles. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_LINEN = "flax/linen/normalization.py"
_NNX = "flax/nnx/nn/normalization.py"

FLAX_LINEN = Profile(
    name="flax_linen",
    framework="flax",
    title="flax.linen.BatchNorm (use_fast_variance=True, the default)",
    semantics=Semantics(
        eps=1e-5,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=0.99,
        momentum_weights="running",
        normalize_var="biased",
        running_var_update="biased",
        ema_debias=False,
        initial_running=(0.0, 1.0),
        first_update="ema",
        train_stats="batch",
        eval_stats="running",
        frozen_train_stats=None,
        variance_algorithm="one_pass_clamped",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="parameters",
        state_dtype="float32",
        single_value="allowed",
    ),
    cite={
        "eps": f"{_LINEN}::BatchNorm (epsilon: float = 1e-5)",
        "eps_placement": f"{_LINEN}::_normalize (lax.rsqrt(var + epsilon))",
        "eps_floor": f"{_LINEN}::_normalize: epsilon used as given",
        "momentum": f"{_LINEN}::BatchNorm (momentum: float = 0.99)",
        "momentum_weights": f"{_LINEN}::BatchNorm.__call__ (ra_mean.value = momentum * "
        "ra_mean.value + (1 - momentum) * mean)",
        "normalize_var": f"{_LINEN}::_compute_stats (mean of squares minus square of mean)",
        "running_var_update": f"{_LINEN}::BatchNorm.__call__ feeds _compute_stats' var unchanged",
        "ema_debias": f"{_LINEN}::BatchNorm.__call__: no debiasing",
        "initial_running": f"{_LINEN}::BatchNorm.__call__ (batch_stats mean zeros, var ones)",
        "first_update": f"{_LINEN}::BatchNorm.__call__ blends from the first step "
        "(skipped only during init)",
        "train_stats": f"{_LINEN}::BatchNorm.__call__ (use_running_average=False: batch stats)",
        "eval_stats": f"{_LINEN}::BatchNorm.__call__ (use_running_average=True)",
        "frozen_train_stats": "flax has no trainable flag on a module: no frozen notion",
        "variance_algorithm": f"{_LINEN}::_compute_stats (use_fast_variance=True: "
        "var = maximum(0, mean(x^2) - mean^2))",
        "compute_dtype": f"{_LINEN}::_compute_stats (dtype = promote_types(dtype, float32))",
        "normalize_dtype": f"{_LINEN}::_normalize (computed in the promoted dtype)",
        "output_dtype": f"{_LINEN}::_normalize (dtypes.promote_dtype of input and params; "
        "param_dtype float32 by default)",
        "state_dtype": f"{_LINEN}::BatchNorm.__call__ (batch_stats created as float32)",
        "single_value": f"{_LINEN}::_compute_stats: no check, variance 0",
    },
    confirmed="tests/test_adapter_jax.py runs flax.linen.BatchNorm",
    state_names={"running_mean": "batch_stats/mean", "running_var": "batch_stats/var",
                 "gamma": "params/scale", "beta": "params/bias"},
)

FLAX_LINEN_TWO_PASS = Profile(
    name="flax_linen_two_pass",
    framework="flax",
    title="flax.linen.BatchNorm(use_fast_variance=False)",
    semantics=FLAX_LINEN.semantics.replace(variance_algorithm="two_pass"),
    cite={**FLAX_LINEN.cite,
          "variance_algorithm": f"{_LINEN}::_compute_stats (use_fast_variance=False: "
          "mean of squared deviations)"},
    confirmed=FLAX_LINEN.confirmed,
    state_names=FLAX_LINEN.state_names,
)

FLAX_NNX = Profile(
    name="flax_nnx",
    framework="flax",
    title="flax.nnx.BatchNorm",
    semantics=FLAX_LINEN.semantics,
    cite={k: v.replace(_LINEN, _NNX).replace("BatchNorm.__call__", "BatchNorm.__call__")
          for k, v in FLAX_LINEN.cite.items()},
    confirmed="tests/test_adapter_jax.py runs flax.nnx.BatchNorm",
    state_names={"running_mean": "mean", "running_var": "var", "gamma": "scale", "beta": "bias"},
)

PROFILES = [FLAX_LINEN, FLAX_LINEN_TWO_PASS, FLAX_NNX]
