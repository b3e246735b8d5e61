"""Haiku profile. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.flax import FLAX_LINEN

_HK = "haiku/_src/batch_norm.py"
_HKEMA = "haiku/_src/moving_averages.py"

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

PROFILES = [HAIKU]
