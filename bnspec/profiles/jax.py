"""Flax (linen, nnx), Haiku and Equinox profiles. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_LINEN = "flax/linen/normalization.py"
_NNX = "flax/nnx/nn/normalization.py"
_HK = "haiku/_src/batch_norm.py"
_HKEMA = "haiku/_src/moving_averages.py"
_EQX = "equinox/nn/_batch_norm.py"

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

HAIKU = Profile(
    name="haiku",
    framework="dm-haiku",
    title="haiku.BatchNorm (zero-debiased ExponentialMovingAverage state)",
    semantics=FLAX_LINEN.semantics.replace(
        ema_debias=True,
        initial_running=(0.0, 0.0),
        variance_algorithm="one_pass",
        compute_dtype="input",
        output_dtype="input",
        state_dtype="input",
    ),
    cite={
        **{k: f"{_HK}::BatchNorm.__call__" for k in FLAX_LINEN.cite},
        "eps": f"{_HK}::BatchNorm.__init__ (eps: float = 1e-5)",
        "eps_placement": f"{_HK}::BatchNorm.__call__ (inv = scale * jax.lax.rsqrt(var + eps))",
        "momentum": f"{_HK}::BatchNorm.__init__ (decay_rate has no default; 0.99 is the "
        "documented example)",
        "momentum_weights": f"{_HKEMA}::ExponentialMovingAverage.__call__ (hidden * decay + "
        "value * (1 - decay))",
        "ema_debias": f"{_HKEMA}::ExponentialMovingAverage (zero_debias=True: average = hidden / "
        "(1 - decay^counter))",
        "initial_running": f"{_HKEMA}::ExponentialMovingAverage.initialize (hidden and average "
        "start at zeros)",
        "variance_algorithm": f"{_HK}::BatchNorm.__call__ (var = mean_of_squares - "
        "jnp.square(mean), not clamped)",
        "compute_dtype": f"{_HK}::BatchNorm.__call__ computes in the input's dtype",
        "output_dtype": f"{_HK}::BatchNorm.__call__ (output in the input's dtype)",
        "state_dtype": f"{_HKEMA}::ExponentialMovingAverage (state created with the value's dtype)",
        "frozen_train_stats": "haiku has no trainable flag on a module: no frozen notion",
        "eval_stats": f"{_HK}::BatchNorm.__call__ (is_training=False or test_local_stats=False: "
        "mean_ema.average)",
    },
    confirmed="tests/test_adapter_jax.py runs haiku.BatchNorm",
    state_names={"running_mean": "mean_ema/average", "running_var": "var_ema/average",
                 "hidden_mean": "mean_ema/hidden", "counter": "mean_ema/counter",
                 "gamma": "scale", "beta": "offset"},
)

_EQX_BASE = FLAX_LINEN.semantics.replace(
    variance_algorithm="two_pass",
    compute_dtype="input",
    output_dtype="parameters",
    state_dtype="parameters",
)
_EQX_CITE = {
    **{k: f"{_EQX}::BatchNorm.__call__" for k in FLAX_LINEN.cite},
    "eps": f"{_EQX}::BatchNorm.__init__ (eps: float = 1e-5)",
    "eps_placement": f"{_EQX}::BatchNorm.__call__._norm ((y - m) / jnp.sqrt(v + self.eps))",
    "momentum": f"{_EQX}::BatchNorm.__init__ (momentum: float = 0.99)",
    "momentum_weights": f"{_EQX}::BatchNorm.__call__ ((1 - momentum) * batch_mean + momentum * "
    "running_mean)",
    "variance_algorithm": f"{_EQX}::BatchNorm.__call__._stats (mean((y - mean)^2), then "
    "maximum(0, var))",
    "frozen_train_stats": "equinox has no trainable flag on a module: no frozen notion",
    "state_dtype": f"{_EQX}::BatchNorm.__init__ (dtype: running statistics and weights)",
    "output_dtype": f"{_EQX}::BatchNorm.__call__ (promotes input with the float32 weights)",
    "compute_dtype": f"{_EQX}::BatchNorm.__call__._stats (jnp.mean in the input's dtype)",
}

EQUINOX_EMA = Profile(
    name="equinox_ema",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='ema'): normalizes training batches with the running stats",
    semantics=_EQX_BASE.replace(first_update="replace", train_stats="running"),
    cite={
        **_EQX_CITE,
        "first_update": f"{_EQX}::BatchNorm.__call__ (lax.select(first_time, batch_mean, mean))",
        "train_stats": f"{_EQX}::BatchNorm.__call__ (mode='ema' normalizes with the updated "
        "running statistics); equinox#659",
        "initial_running": f"{_EQX}::BatchNorm.__init__ (jnp.empty buffers, overwritten on the "
        "first step)",
    },
    confirmed="tests/test_adapter_jax.py runs equinox.nn.BatchNorm(mode='ema')",
    state_names={"running_mean": "ema_state[0]", "running_var": "ema_state[1]",
                 "gamma": "weight", "beta": "bias"},
)

EQUINOX_BATCH = Profile(
    name="equinox_batch",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='batch'): batch statistics, debiased EMA for inference",
    semantics=_EQX_BASE.replace(ema_debias=True, initial_running=(0.0, 1.0)),
    cite={
        **_EQX_CITE,
        "ema_debias": f"{_EQX}::BatchNorm.__call__ (inference: hidden / (1 - momentum**counter))",
        "initial_running": f"{_EQX}::BatchNorm.__init__ (init_hidden = zeros, ones: the ones "
        "are debiased too, equinox#1010)",
    },
    confirmed="tests/test_adapter_jax.py runs equinox.nn.BatchNorm(mode='batch')",
    state_names={"running_mean": "batch_state[0]", "running_var": "batch_state[1]",
                 "counter": "batch_counter", "gamma": "weight", "beta": "bias"},
)

PROFILES = [FLAX_LINEN, FLAX_LINEN_TWO_PASS, FLAX_NNX, HAIKU, EQUINOX_EMA, EQUINOX_BATCH]
