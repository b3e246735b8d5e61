"""Keras 3 profiles.

Draft values from reading the sources; each is re-checked by the adapter tests against the
installed framework. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_K3 = "keras/src/layers/normalization/batch_normalization.py"
_K3TF = "keras/src/backend/tensorflow/nn.py"

KERAS = Profile(
    name="keras",
    framework="keras",
    title="keras.layers.BatchNormalization (Keras 3; TensorFlow backend, eager and XLA)",
    semantics=Semantics(
        eps=1e-3,
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
        frozen_train_stats="running",
        variance_algorithm="two_pass",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="parameters",
        state_dtype="parameters",
        single_value="allowed",
        affine_form="folded",
    ),
    cite={
        "affine_form": f"{_K3TF}::batch_normalization -> tensorflow/python/ops/nn_impl.py::"
        "batch_normalization (x * inv + (offset - mean * inv), inv = rsqrt(var + eps) * scale): folded",
        "eps": f"{_K3}::BatchNormalization.__init__ (epsilon=1e-3)",
        "eps_placement": f"{_K3TF}::batch_normalization -> tf.nn.batch_normalization "
        "(rsqrt(variance + epsilon))",
        "eps_floor": f"{_K3}::BatchNormalization.call passes epsilon unchanged",
        "momentum": f"{_K3}::BatchNormalization.__init__ (momentum=0.99)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_K3}::BatchNormalization.call (moving_mean * momentum + mean * "
        "(1 - momentum))",
        "normalize_var": f"{_K3TF}::moments -> tf.nn.moments (population variance)",
        "running_var_update": f"{_K3}::BatchNormalization.call feeds the moments' variance "
        "unchanged into moving_variance",
        "ema_debias": f"{_K3}::BatchNormalization.call: no debiasing",
        "initial_running": f"{_K3}::BatchNormalization.__init__ (moving_mean_initializer='zeros', "
        "moving_variance_initializer='ones')",
        "first_update": f"{_K3}::BatchNormalization.call blends from the first step",
        "train_stats": f"{_K3}::BatchNormalization.call (training and self.trainable: moments)",
        "eval_stats": f"{_K3}::BatchNormalization.call (else: moving statistics)",
        "frozen_train_stats": f"{_K3}::BatchNormalization.call ('if training and self.trainable'); "
        "keras.io BatchNormalization: 'trainable=False ... the layer will run in inference mode'",
        "variance_algorithm": f"{_K3TF}::moments -> tensorflow/python/ops/nn_impl.py::moments "
        "(squared_difference from the mean: two-pass)",
        "compute_dtype": f"{_K3}::BatchNormalization.call (compute_dtype = result_type(inputs, "
        "'float32')): float16/bfloat16 are upcast; float64 stays float64 on the TensorFlow backend "
        "only (keras/src/backend/common/dtypes.py::BIT64_TO_BIT32_DTYPE)",
        "normalize_dtype": f"{_K3}::BatchNormalization.call normalizes in that compute dtype",
        "output_dtype": f"{_K3}::BatchNormalization.call (ops.cast(outputs, self.compute_dtype): "
        "the layer's dtype policy, float32 by default)",
        "state_dtype": f"{_K3}::BatchNormalization.build (moving statistics are layer weights in the "
        "layer's variable dtype)",
        "single_value": f"{_K3TF}::moments: no check; a single value gives variance 0",
    },
    confirmed="tests/test_adapter_keras.py runs the layer on the TensorFlow backend, eager "
    "and under tf.function(jit_compile=True)",
    state_names={"running_mean": "moving_mean", "running_var": "moving_variance",
                 "gamma": "gamma", "beta": "beta"},
)

_K3DT = "keras/src/backend/common/dtypes.py"
_FLOAT32_COMPUTE = (
    f"{_K3}::BatchNormalization.call (compute_dtype = backend.result_type(inputs.dtype, "
    f"'float32')) and {_K3DT}::_lattice_result_type, which maps float64 to float32 on every "
    "backend but TensorFlow (BIT64_TO_BIT32_DTYPE, 'aligned with JAX's default behavior'), "
    "even with JAX_ENABLE_X64=1: a float64 layer normalizes and updates its float64 moving "
    "statistics in float32"
)

KERAS_JAX = Profile(
    name="keras_jax",
    framework="keras",
    title="keras.layers.BatchNormalization on the JAX backend (Keras 3)",
    semantics=KERAS.semantics.replace(compute_dtype="float32"),
    cite={
        **KERAS.cite,
        "affine_form": "keras/src/backend/jax/nn.py::batch_normalization (jnp.add(x * inv, res), "
        "res = offset - mean * inv): folded",
        "variance_algorithm": "keras/src/backend/jax/nn.py::moments (jnp.var: two-pass)",
        "compute_dtype": _FLOAT32_COMPUTE,
    },
    confirmed="tests/test_adapter_keras.py runs the layer on the JAX backend (JAX_ENABLE_X64=1): "
    "float64 cases have float32 errors",
    state_names=KERAS.state_names,
)

KERAS_TORCH = Profile(
    name="keras_torch",
    framework="keras",
    title="keras.layers.BatchNormalization on the PyTorch backend (Keras 3)",
    semantics=KERAS.semantics.replace(variance_algorithm="one_pass", compute_dtype="float32",
                                     affine_form="centered"),
    cite={
        **KERAS.cite,
        "affine_form": "keras/src/backend/torch/nn.py::batch_normalization (x.subtract(mean)"
        ".mul_(rsqrt(variance + epsilon) * scale).add_(offset)): centered",
        "variance_algorithm": "keras/src/backend/torch/nn.py::moments ('The variance is computed "
        "using Var = E[|x|^2] - |E[x]|^2', not clamped at 0)",
        "compute_dtype": _FLOAT32_COMPUTE,
    },
    confirmed="tests/test_adapter_keras.py runs the layer on the PyTorch backend: float64 cases "
    "have float32 errors; mean 1e4, std 1 in float32 loses the variance's digits",
    state_names=KERAS.state_names,
)

PROFILES = [KERAS, KERAS_JAX, KERAS_TORCH]
