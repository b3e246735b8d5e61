"""Haiku profile. Paths are relative to site-packages (dm-haiku 0.0.17, jax 0.10.2)."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_HK = "haiku/_src/batch_norm.py"
_HKEMA = "haiku/_src/moving_averages.py"
_JNP_MEAN = "jax/_src/numpy/reductions.py::_mean"

HAIKU = Profile(
    name="haiku",
    framework="dm-haiku",
    title="haiku.BatchNorm (zero-debiased ExponentialMovingAverage state)",
    semantics=Semantics(
        eps=1e-5,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=0.9,
        momentum_weights="running",
        normalize_var="biased",
        running_var_update="biased",
        ema_debias=True,
        initial_running=(0.0, 0.0),
        first_update="ema",
        train_stats="batch",
        eval_stats="running",
        frozen_train_stats=None,
        variance_algorithm="one_pass",
        compute_dtype="input",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="input",
        single_value="allowed",
        affine_form="centered",
    ),
    cite={
        "affine_form": f"{_HK}::BatchNorm.__call__ ((inputs - mean) * inv + offset, inv = scale * "
        "rsqrt(var + eps)): centered",
        "eps": f"{_HK}::BatchNorm.__init__ (eps: float = 1e-5)",
        "eps_placement": f"{_HK}::BatchNorm.__call__ (inv = scale * jax.lax.rsqrt(var + eps))",
        "eps_floor": f"{_HK}::BatchNorm.__call__: eps is used as given "
        "(jax.lax.convert_element_type(self.eps, var.dtype))",
        "momentum": f"{_HK}::BatchNorm.__init__ (decay_rate is required, no default; the "
        "docstring examples in haiku/_src/module.py and haiku/_src/basic.py use 0.9)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_HKEMA}::ExponentialMovingAverage.__call__ (hidden = hidden * "
        "decay + value * (one - decay)); BatchNorm.__init__ passes decay_rate as the decay",
        "normalize_var": f"{_HK}::BatchNorm.__call__ (var = mean_of_squares - "
        "jnp.square(mean): the biased batch variance)",
        "running_var_update": f"{_HK}::BatchNorm.__call__ (self.var_ema(var) with the same "
        "biased var; no n/(n-1))",
        "ema_debias": f"{_HK}::BatchNorm.__init__ builds hk.ExponentialMovingAverage(decay_rate) "
        f"with its default zero_debias=True, warmup_length=0; {_HKEMA}::"
        "ExponentialMovingAverage.__call__ (average = hidden / (one - jnp.power(decay, counter)))",
        "initial_running": f"{_HKEMA}::ExponentialMovingAverage.__call__ (hidden created with "
        "init=jnp.zeros, counter 0). `average` has no init: transform_with_state's init with "
        "is_training=True stores the first update's set_state, i.e. the init batch's own "
        "statistics, so an eval step before training normalizes with the init batch's "
        "statistics; init with is_training=False raises ValueError ('No value for average'). "
        "(0, 0) is the hidden state the first update blends into",
        "first_update": f"{_HKEMA}::ExponentialMovingAverage.__call__ blends from the first step "
        "(with the zero initial hidden state, the debiasing makes the first average equal the "
        "batch statistic)",
        "train_stats": f"{_HK}::BatchNorm.__call__ (is_training=True: batch mean and var "
        "normalize)",
        "eval_stats": f"{_HK}::BatchNorm.__call__ (is_training=False, test_local_stats=False: "
        "self.mean_ema.average, self.var_ema.average)",
        "frozen_train_stats": "haiku has no trainable flag on a module: no frozen notion",
        "variance_algorithm": f"{_HK}::BatchNorm.__call__ (var = mean_of_squares - "
        "jnp.square(mean), not clamped at 0)",
        "compute_dtype": f"{_HK}::BatchNorm.__call__ (jnp.mean of the input; {_JNP_MEAN} "
        "accumulates float16/bfloat16 in float32 but rounds each mean to the input dtype, and "
        "the subtraction and normalization run in the input dtype)",
        "normalize_dtype": f"{_HK}::BatchNorm.__call__ ((inputs - mean) * inv + offset, all in "
        "the input dtype)",
        "output_dtype": f"{_HK}::BatchNorm.__call__ (scale and offset created with w_dtype = "
        "inputs.dtype, so the output keeps the input's dtype)",
        "state_dtype": f"{_HKEMA}::ExponentialMovingAverage.__call__ (hidden state created with "
        "value.dtype: the input's dtype)",
        "single_value": f"{_HK}::BatchNorm.__call__: no check; one value per channel gives var 0",
    },
    confirmed="tests/test_adapter_haiku_equinox.py runs haiku.BatchNorm against this profile "
    "(train/eval steps, gradients, affine off, float64/32/16, bfloat16, both data formats)",
    state_names={"running_mean": "batch_norm/~/mean_ema/average",
                 "running_var": "batch_norm/~/var_ema/average",
                 "hidden_mean": "batch_norm/~/mean_ema/hidden",
                 "hidden_var": "batch_norm/~/var_ema/hidden",
                 "counter": "batch_norm/~/mean_ema/counter",
                 "gamma": "batch_norm/scale", "beta": "batch_norm/offset"},
)

PROFILES = [HAIKU]
