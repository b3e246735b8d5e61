"""Equinox profiles. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.flax import FLAX_LINEN

_EQX = "equinox/nn/_batch_norm.py"

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

PROFILES = [EQUINOX_EMA, EQUINOX_BATCH]
