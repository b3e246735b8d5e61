"""Equinox profiles. Paths are relative to site-packages (equinox 0.13.8, jax 0.10.2)."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_EQX = "equinox/nn/_batch_norm.py"
_CALL = f"{_EQX}::BatchNorm.__call__"

_EQX_BASE = Semantics(
    eps=1e-5,
    eps_placement="inside_sqrt",
    eps_floor=None,
    momentum=0.99,
    momentum_weights="running",
    normalize_var="biased",
    running_var_update="biased",
    ema_debias=False,
    initial_running=(0.0, 0.0),
    first_update="ema",
    train_stats="batch",
    eval_stats="running",
    frozen_train_stats=None,
    variance_algorithm="two_pass",
    compute_dtype="input",
    normalize_dtype="compute",
    output_dtype="parameters",
    state_dtype="parameters",
    single_value="allowed",
    affine_form="centered",
)
_EQX_CITE = {
    "affine_form": f"{_CALL}._norm (out = (y - m) / jnp.sqrt(v + self.eps); out * w + b): centered",
    "eps": f"{_EQX}::BatchNorm.__init__ (eps: float = 1e-5)",
    "eps_placement": f"{_CALL}._norm ((y - m) / jnp.sqrt(v + self.eps))",
    "eps_floor": f"{_CALL}._norm: self.eps used as given",
    "momentum": f"{_EQX}::BatchNorm.__init__ (momentum: float = 0.99)",
    "running_update": "every training step blends the batch statistics into the running "
                      "ones: the update cited under momentum_weights",
    "momentum_weights": f"{_CALL} (mode='ema': (1 - momentum) * batch_mean + momentum * "
    "running_mean; mode='batch': hidden_mean * self.momentum + mean * (1 - self.momentum))",
    "normalize_var": f"{_CALL}._stats (var = jnp.mean((y - mean) * jnp.conj(y - mean)), "
    "then lax.pmean over the batch axis: the biased variance)",
    "running_var_update": f"{_CALL} feeds _stats' biased var into the running variance (the "
    "class docstring says inference uses the 'unbiased variance' in mode='batch'; the code "
    "does not apply n/(n-1))",
    "eval_stats": f"{_CALL} (inference=True: the running statistics)",
    "frozen_train_stats": "equinox has no trainable flag on a module: no frozen notion",
    "variance_algorithm": f"{_CALL}._stats (mean of squared deviations from the pmean'd "
    "mean, then jnp.maximum(0.0, var), a no-op for a two-pass variance)",
    "compute_dtype": f"{_CALL}._stats (jnp.mean of the input; jax/_src/numpy/reductions.py::"
    "_mean accumulates float16/bfloat16 in float32 but returns the input dtype)",
    "normalize_dtype": f"{_CALL}._norm (jnp type promotion of the input with the statistics)",
    "output_dtype": f"{_CALL}._norm (out * w + b promotes the input with the weights of "
    "BatchNorm(dtype=...); a less precise input is promoted to it, a more precise one makes "
    "State.set raise)",
    "state_dtype": f"{_EQX}::BatchNorm.__init__ (dtype: the running statistics and the weight "
    "and bias)",
    "single_value": f"{_CALL}._stats: no check; one value per channel gives var 0",
}

EQUINOX_EMA = Profile(
    name="equinox_ema",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='ema'): normalizes training batches with the running stats",
    semantics=_EQX_BASE.replace(first_update="replace", train_stats="running"),
    cite={
        **_EQX_CITE,
        "ema_debias": f"{_CALL} (mode='ema': the running statistics are read as stored)",
        "initial_running": f"{_EQX}::BatchNorm.__init__ (mode='ema': jnp.empty buffers, which "
        "JAX fills with zeros; read only by an eval step before any training, since the first "
        "training step replaces them)",
        "first_update": f"{_CALL} (mean = lax.select(first_time, batch_mean, mean))",
        "train_stats": f"{_CALL} (mode='ema' normalizes a training batch with the blended "
        "running statistics it just stored, and differentiates through them); equinox#659",
    },
    confirmed="tests/test_adapter_haiku_equinox.py runs equinox.nn.BatchNorm(mode='ema') "
    "against this profile (train/eval steps, gradients, affine off, float64/32/16, bfloat16)",
    state_names={"running_mean": "ema_state_index[0]", "running_var": "ema_state_index[1]",
                 "first_time": "ema_first_time_index", "gamma": "weight", "beta": "bias"},
)

EQUINOX_BATCH = Profile(
    name="equinox_batch",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='batch'): batch statistics, debiased EMA for inference",
    semantics=_EQX_BASE.replace(ema_debias=True, initial_running=(0.0, 1.0)),
    cite={
        **_EQX_CITE,
        "ema_debias": f"{_CALL} (inference: scale = jnp.where(counter == 0, 1, 1 - "
        "self.momentum**counter); mean = hidden_mean / scale)",
        "initial_running": f"{_EQX}::BatchNorm.__init__ (mode='batch': init_hidden = zeros, "
        "ones; the ones are debiased too, so after t updates the inference variance carries "
        "momentum^t / (1 - momentum^t) of the initial 1: equinox#1010)",
        "first_update": f"{_CALL} (mode='batch' blends into the hidden state from the first "
        "step)",
        "train_stats": f"{_CALL} (mode='batch': mean, var = jax.vmap(_stats)(x) normalize)",
    },
    confirmed="tests/test_adapter_haiku_equinox.py runs equinox.nn.BatchNorm(mode='batch') "
    "against this profile (train/eval steps, gradients, affine off, float64/32/16, bfloat16)",
    state_names={"running_mean": "batch_state_index[0] / (1 - momentum**counter)",
                 "running_var": "batch_state_index[1] / (1 - momentum**counter)",
                 "hidden_mean": "batch_state_index[0]", "hidden_var": "batch_state_index[1]",
                 "counter": "batch_counter", "gamma": "weight", "beta": "bias"},
)

PROFILES = [EQUINOX_EMA, EQUINOX_BATCH]
