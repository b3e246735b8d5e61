"""Flax (linen, nnx) profiles. Paths are relative to site-packages (flax 0.12.8, jax 0.10.2).

Confirmed by running the framework in tests/test_adapter_flax.py. Two facts no current knob
value states exactly (see the citations of ``output_dtype`` and ``state_dtype``):
- linen's output dtype is ``result_type(x, scale, bias)``: with use_scale=use_bias=False it is
  the *input's* (float16 in, float16 out), while nnx promotes with its float32 statistics too;
- (stated since by ``state_dtype="promote_float32"``) linen's ``batch_stats`` are created
  float32 but a float64 training step (jax_enable_x64) returns them as float64; nnx casts every
  update back into its float32 BatchStat.
"""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_LINEN = "flax/linen/normalization.py"
_NNX = "flax/nnx/nn/normalization.py"
_CONFIRMED = "tests/test_adapter_flax.py runs {} (jitted; linen also eager) against this profile"

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
        state_dtype="promote_float32",
        single_value="allowed",
        affine_form="centered",
    ),
    cite={
        "affine_form": f"{_LINEN}::_normalize (y = x - mean; y = y * (rsqrt(var + epsilon) * scale); "
        "y += bias): centered",
        "eps": f"{_LINEN}::BatchNorm (epsilon: float = 1e-5)",
        "eps_placement": f"{_LINEN}::_normalize (mul = lax.rsqrt(var + epsilon))",
        "eps_floor": f"{_LINEN}::_normalize: epsilon used as given",
        "momentum": f"{_LINEN}::BatchNorm (momentum: float = 0.99)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_LINEN}::BatchNorm.__call__ (ra_mean.value = self.momentum * "
        "ra_mean.value + (1 - self.momentum) * mean)",
        "normalize_var": f"{_LINEN}::_compute_stats (var = mean(|x|^2) - |mean|^2, no n-1)",
        "running_var_update": f"{_LINEN}::BatchNorm.__call__ blends _compute_stats' biased var "
        "unchanged",
        "ema_debias": f"{_LINEN}::BatchNorm.__call__: batch_stats read as stored, no debiasing",
        "initial_running": f"{_LINEN}::BatchNorm.__call__ (self.variable('batch_stats', 'mean', "
        "jnp.zeros ...), ('batch_stats', 'var', jnp.ones ...))",
        "first_update": f"{_LINEN}::BatchNorm.__call__ blends from the first apply (the update "
        "is skipped only while self.is_initializing())",
        "train_stats": f"{_LINEN}::BatchNorm.__call__ (use_running_average=False: "
        "_compute_stats of the batch)",
        "eval_stats": f"{_LINEN}::BatchNorm.__call__ (use_running_average=True: ra_mean.value, "
        "ra_var.value)",
        "frozen_train_stats": "flax modules have no trainable flag: no frozen notion",
        "variance_algorithm": f"{_LINEN}::_compute_stats (use_fast_variance=True: "
        "var = jnp.maximum(0.0, mu2 - _abs_sq(mu)), mu and mu2 in one fusion)",
        "compute_dtype": f"{_LINEN}::_compute_stats (dtype = jnp.promote_types(result_type(x), "
        "jnp.float32) with force_float32_reductions=True: float16/bfloat16 reduce in float32, "
        "float64 stays float64 under jax_enable_x64)",
        "normalize_dtype": f"{_LINEN}::_normalize (y = x - mean with mean in the promoted "
        "dtype; rsqrt and scale in that dtype; one cast at the end)",
        "output_dtype": f"{_LINEN}::_normalize (dtypes.canonicalize_dtype(x, scale, bias, "
        "dtype=None) = result_type of the input and the affine parameters: the parameters' "
        "dtype when they are at least as precise as the input; with use_scale=use_bias=False "
        "it is the INPUT's dtype, which 'parameters' does not state)",
        "state_dtype": f"{_LINEN}::BatchNorm.__call__ (batch_stats created with jnp.float32 "
        "when force_float32_reductions=True, and float16/bfloat16/float32 updates keep them "
        "float32; under jax_enable_x64 a float64 training step returns them as float64, since "
        "the blend promotes and the mutable collection keeps the result)",
        "single_value": f"{_LINEN}::_compute_stats: no check; the variance of one value is 0 "
        "and the running variance is biased, so nothing divides by n-1",
    },
    confirmed=_CONFIRMED.format("flax.linen.BatchNorm"),
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
          "var = mean(_abs_sq(x - expand_dims(mu)))"},
    confirmed=_CONFIRMED.format("flax.linen.BatchNorm(use_fast_variance=False)"),
    state_names=FLAX_LINEN.state_names,
)

FLAX_NNX = Profile(
    name="flax_nnx",
    framework="flax",
    title="flax.nnx.BatchNorm (use_fast_variance=True, the default)",
    semantics=FLAX_LINEN.semantics.replace(state_dtype="float32"),
    cite={
        "affine_form": f"{_NNX}::_normalize (y = x - mean; y = y * (rsqrt(var + epsilon) * scale); "
        "y += bias): centered",
        "eps": f"{_NNX}::BatchNorm.__init__ (epsilon: float = 1e-5)",
        "eps_placement": f"{_NNX}::_normalize (mul = lax.rsqrt(var + epsilon))",
        "eps_floor": f"{_NNX}::_normalize: epsilon used as given",
        "momentum": f"{_NNX}::BatchNorm.__init__ (momentum: float = 0.99)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_NNX}::BatchNorm.__call__ (self.mean[...] = self.momentum * "
        "self.mean[...] + (1 - self.momentum) * mean)",
        "normalize_var": f"{_NNX}::_compute_stats (var = mean(|x|^2) - |mean|^2, no n-1)",
        "running_var_update": f"{_NNX}::BatchNorm.__call__ blends _compute_stats' biased var "
        "unchanged",
        "ema_debias": f"{_NNX}::BatchNorm.__call__: BatchStat read as stored, no debiasing",
        "initial_running": f"{_NNX}::BatchNorm.__init__ (nnx.BatchStat(jnp.zeros(..., "
        "jnp.float32)), nnx.BatchStat(jnp.ones(..., jnp.float32)))",
        "first_update": f"{_NNX}::BatchNorm.__call__ blends on every training call (nnx has "
        "no init phase)",
        "train_stats": f"{_NNX}::BatchNorm.__call__ (use_running_average=False, the "
        "constructor's default: _compute_stats of the batch)",
        "eval_stats": f"{_NNX}::BatchNorm.__call__ (use_running_average=True, or "
        "model.eval() through set_view: the stored BatchStats)",
        "frozen_train_stats": "flax modules have no trainable flag: no frozen notion",
        "variance_algorithm": f"{_NNX}::_compute_stats (use_fast_variance=True default: "
        "var = jnp.maximum(0.0, mu2 - _abs_sq(mu)))",
        "compute_dtype": f"{_NNX}::BatchNorm.__call__ (self.promote_dtype((x, mean, var, scale, "
        "bias), dtype=None) promotes x with the float32 BatchStats) and _compute_stats "
        "(jnp.promote_types(dtype, jnp.float32), unconditionally: nnx has no "
        "force_float32_reductions)",
        "normalize_dtype": f"{_NNX}::_normalize (everything already promoted; one cast at the "
        "end)",
        "output_dtype": f"{_NNX}::_normalize (dtypes.canonicalize_dtype(x, scale, bias) of the "
        "*promoted* x, i.e. result_type(input, float32 statistics, parameters): at least "
        "float32 even with use_scale=use_bias=False, unlike linen)",
        "state_dtype": f"{_NNX}::BatchNorm.__init__ (BatchStats created float32) and "
        "flax/nnx/variablelib.py::Variable.set_value (self.mean[...] = v with another dtype "
        "goes through _raw_value.at[...].set(v), which casts back to float32): float32 even "
        "for float64 inputs under jax_enable_x64",
        "single_value": f"{_NNX}::_compute_stats: no check; the variance of one value is 0",
    },
    confirmed=_CONFIRMED.format("flax.nnx.BatchNorm"),
    state_names={"running_mean": "mean", "running_var": "var", "gamma": "scale", "beta": "bias"},
)

PROFILES = [FLAX_LINEN, FLAX_LINEN_TWO_PASS, FLAX_NNX]
