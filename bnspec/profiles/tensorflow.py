"""tf.keras (Keras 2) and TensorFlow op profiles, as installed: tensorflow-cpu 2.21, tf-keras 2.21.

Paths are relative to site-packages, except ``fused_batch_norm_op.cc`` (the kernel is compiled
into the wheel; cited from the tensorflow/tensorflow repository). Every value below is pinned by
running the framework in ``tests/test_adapter_tensorflow.py``.

Findings, checked on this install (CPU):
- There is no epsilon floor any more. ``nn_impl.py::fused_batch_norm`` once raised epsilon to
  ``min_epsilon = 1.001e-5`` (cuDNN's old CUDNN_BN_MIN_EPSILON, 0 since cuDNN 7.5; see
  tensorflow#37768); TF 2.21 passes ``epsilon`` straight to FusedBatchNormV3, and the kernel
  uses it as given: eps=1e-6 and eps=0 normalize with exactly that epsilon. The comment in
  ``tf_keras/src/layers/normalization/layer_normalization.py`` ("fused_batch_norm will silently
  raise epsilon to be at least 1.001e-5") is stale.
- TF2 exports no ``tf.nn.fused_batch_norm``: the op is ``tf.compat.v1.nn.fused_batch_norm``
  (``nn_impl.py``: ``@tf_export(v1=["nn.fused_batch_norm"])``).
- The fused path's moving variance is fed the Bessel-corrected batch variance; the non-fused
  path (and Keras 3) feed the biased one: the same layer class gives a different
  ``moving_variance`` depending on the input rank (fused=None picks fused for ranks 4 and 5).
"""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.keras import KERAS
from bnspec.semantics import Semantics

_K2 = "tf_keras/src/layers/normalization/batch_normalization.py"
_TFNN = "tensorflow/python/ops/nn_impl.py"
_TFK = "tensorflow/core/kernels/fused_batch_norm_op.cc (tensorflow/tensorflow)"
_CPU_TRAIN = f"{_TFK}::FusedBatchNorm<CPUDevice, T, U, true>"
_CONFIRMED = "tests/test_adapter_tensorflow.py"
_NO_FLOOR = (
    "no floor: TF 2.21 dropped nn_impl.py's min_epsilon = 1.001e-5 (tensorflow#37768); "
    "eps=1e-6 and eps=0 run as given (test_fused_op_applies_no_epsilon_floor)"
)

_OP_STATE_NAMES = {"running_mean": "mean", "running_var": "variance", "gamma": "scale",
                   "beta": "offset"}

_KERAS2_COMMON = {
    "eps": f"{_K2}::BatchNormalizationBase.__init__ (epsilon=1e-3)",
    "eps_placement": f"{_K2}::BatchNormalizationBase.call -> {_TFNN}::batch_normalization "
    "(rsqrt(variance + variance_epsilon))",
    "momentum": f"{_K2}::BatchNormalizationBase.__init__ (momentum=0.99)",
    "running_update": "every training step blends the batch statistics into the running "
                      "ones: the update cited under momentum_weights",
    "momentum_weights": f"{_K2}::BatchNormalizationBase._assign_moving_average "
    "(variable - (variable - value) * (1 - momentum))",
    "ema_debias": f"{_K2}::BatchNormalizationBase._assign_moving_average: no debiasing",
    "initial_running": f"{_K2}::BatchNormalizationBase.__init__ "
    "(moving_mean_initializer='zeros', moving_variance_initializer='ones')",
    "first_update": f"{_K2}: the moving statistics are blended from the first step",
    "train_stats": f"{_K2}::BatchNormalizationBase.call (training: the batch moments)",
    "eval_stats": f"{_K2}::BatchNormalizationBase.call (training False: moving_mean, "
    "moving_variance)",
    "frozen_train_stats": f"{_K2}::BatchNormalizationBase._get_training_value ('if not "
    "self.trainable: training = False' under _USE_V2_BEHAVIOR): a frozen layer runs in "
    "inference mode and does not update",
    "output_dtype": f"{_K2}::BatchNormalizationBase.call (inputs cast to the layer's compute "
    "dtype; the adapter builds the layer with dtype = the input dtype, so y has the input's "
    "dtype; a float32 layer fed float16 returns float32)",
    "state_dtype": f"{_K2}::BatchNormalizationBase._param_dtype (float16/bfloat16 layers keep "
    "float32 weights, else the layer dtype)",
    "single_value": f"{_K2}: no check; one value per channel gives batch variance 0, y = beta",
}

TF_KERAS_FUSED = Profile(
    name="tf_keras_fused",
    framework="tf_keras",
    title="tf.keras (Keras 2) BatchNormalization on its fused path (rank 4 and 5)",
    semantics=KERAS.semantics.replace(
        eps_floor=None,
        running_var_update="unbiased",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="float32",
        single_value="allowed",
        affine_form="centered",
    ),
    cite={
        **_KERAS2_COMMON,
        "affine_form": "tensorflow/core/kernels/fused_batch_norm_op.cc::FusedBatchNorm<CPUDevice> "
        "(x_centered * scaling_factor + offset): centered",
        "eps_floor": f"{_K2}::BatchNormalizationBase._fused_batch_norm passes self.epsilon to "
        f"tf.compat.v1.nn.fused_batch_norm ({_TFNN}::fused_batch_norm), which passes it to "
        f"FusedBatchNormV3 unchanged; {_NO_FLOOR}",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_K2}::BatchNormalizationBase._fused_batch_norm (eager: "
        "exponential_avg_factor = 1.0 - self.momentum, the op's blended statistics are "
        "assigned; graph: _assign_moving_average)",
        "normalize_var": f"{_CPU_TRAIN}: (batch_variance + epsilon).rsqrt() with batch_variance "
        "= sum(x_centered^2) * (1/n), the biased variance",
        "running_var_update": f"{_CPU_TRAIN}: new_variance = (1 - factor) * old_variance + "
        "factor * n / max(n - 1, 1) * batch_variance; "
        f"{_K2}::BatchNormalizationBase._fused_batch_norm keeps it: "
        "_bessels_correction_test_only = True makes _maybe_add_or_remove_bessels_correction the "
        "identity (test_fused_keras_moving_variance_is_unbiased)",
        "variance_algorithm": f"{_CPU_TRAIN}: mean first, then the mean of (x - mean)^2",
        "compute_dtype": f"{_CPU_TRAIN}: x cast to U = float for the reductions (T = half, "
        "bfloat16 or float); the layer raises for float64 (_raise_if_fused_cannot_be_used)",
        "normalize_dtype": f"{_CPU_TRAIN}: the scaling factor and x - mean stay in U = float; "
        "only y is cast to T",
        "state_dtype": f"{_K2}::BatchNormalizationBase._param_dtype: the fused path's layers are "
        "float16/bfloat16/float32, so its weights are always float32",
        "single_value": f"{_CPU_TRAIN}: rest_size_minus_one = max(n - 1, 1), so one value gives "
        "running variance (1 - factor) * old (test_one_value_per_channel_is_allowed...)",
    },
    confirmed=f"{_CONFIRMED} runs tf_keras.layers.BatchNormalization(fused=True) on rank-4 and "
    "rank-5 inputs, float32/float16/bfloat16",
    state_names=KERAS.state_names,
)

TF_KERAS_NONFUSED = Profile(
    name="tf_keras_nonfused",
    framework="tf_keras",
    title="tf.keras (Keras 2) BatchNormalization on its non-fused path (fused=False; the "
    "default for ranks 2 and 3)",
    semantics=KERAS.semantics.replace(
        eps_floor=None,
        running_var_update="biased",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="parameters",
        single_value="allowed",
    ),
    cite={
        **_KERAS2_COMMON,
        "affine_form": f"{_K2}::BatchNormalizationBase.call -> {_TFNN}::batch_normalization "
        "(x * inv + (offset - mean * inv)): folded",
        "eps_floor": f"{_K2}::BatchNormalizationBase.call passes self.epsilon to "
        f"{_TFNN}::batch_normalization unchanged (no floor)",
        "normalize_var": f"{_K2}::BatchNormalizationBase._calculate_mean_and_var -> "
        f"{_TFNN}::moments ('sample variance, not unbiased variance')",
        "running_var_update": f"{_K2}::BatchNormalizationBase.call: _do_update(moving_variance, "
        "new_variance) with the moments' biased variance "
        "(test_nonfused_keras_moving_variance_is_biased)",
        "variance_algorithm": f"{_TFNN}::moments (reduce_mean of squared_difference from "
        "stop_gradient(mean))",
        "compute_dtype": f"{_K2}::BatchNormalizationBase.call (float16/bfloat16 inputs cast to "
        "float32; moments on tf.cast(inputs, self._param_dtype))",
        "normalize_dtype": f"{_K2}::BatchNormalizationBase.call (batch_normalization runs on "
        "the float32 inputs, outputs cast back to float16/bfloat16)",
        "state_dtype": f"{_K2}::BatchNormalizationBase._param_dtype (float32 for float16/"
        "bfloat16 layers, else the layer dtype); the adapter requires param_dtype to be it",
    },
    confirmed=f"{_CONFIRMED} runs tf_keras.layers.BatchNormalization(fused=False) on ranks 2-5, "
    "float64/float32/float16",
    state_names=KERAS.state_names,
)

TF_NN_FUSED = Profile(
    name="tf_nn_fused",
    framework="tensorflow",
    title="tf.compat.v1.nn.fused_batch_norm (FusedBatchNormV3) with exponential_avg_factor",
    semantics=Semantics(
        eps=1e-3,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=1.0,
        momentum_weights="batch",
        normalize_var="biased",
        running_var_update="unbiased",
        ema_debias=False,
        initial_running=(0.0, 1.0),
        first_update="ema",
        train_stats="batch",
        eval_stats="running",
        frozen_train_stats=None,
        variance_algorithm="two_pass",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="float32",
        single_value="allowed",
        affine_form="centered",
    ),
    cite={
        **TF_KERAS_FUSED.cite,
        "eps": f"{_TFNN}::fused_batch_norm (epsilon=0.001)",
        "eps_floor": f"{_TFNN}::fused_batch_norm passes epsilon to gen_nn_ops.fused_batch_norm_v3 "
        f"unchanged; {_NO_FLOOR}",
        "eps_placement": f"{_CPU_TRAIN}: (batch_variance + epsilon).rsqrt()",
        "momentum": f"{_TFNN}::fused_batch_norm (exponential_avg_factor=1.0: the outputs are the "
        "batch mean and Bessel-corrected batch variance)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_CPU_TRAIN}: new_mean = (1 - factor) * old_mean + factor * "
        "batch_mean: exponential_avg_factor weighs the batch statistic (the adapter passes "
        "case.momentum as is)",
        "ema_debias": f"{_CPU_TRAIN}: no debiasing",
        "initial_running": f"{_TFNN}::fused_batch_norm: the caller passes mean/variance (required "
        "when exponential_avg_factor != 1); no default",
        "first_update": f"{_CPU_TRAIN}: every call blends with exponential_avg_factor",
        "train_stats": f"{_CPU_TRAIN} normalizes with the batch statistics",
        "eval_stats": f"{_TFK}::FusedBatchNorm<CPUDevice, T, U, false> normalizes with the "
        "estimated mean/variance passed in",
        "frozen_train_stats": "an op, not a layer: no frozen notion",
        "output_dtype": f"{_CPU_TRAIN}: y is cast to T, the input dtype",
        "state_dtype": f"{_TFNN}::fused_batch_norm: mean/variance have type U = float32 "
        "whatever T is",
    },
    confirmed=f"{_CONFIRMED} runs tf.compat.v1.nn.fused_batch_norm on rank-4 (NHWC) and rank-5 "
    "(NDHWC) inputs",
    state_names=_OP_STATE_NAMES,
)

TF_NN_MOMENTS = Profile(
    name="tf_nn_moments",
    framework="tensorflow",
    title="tf.nn.moments + tf.nn.batch_normalization (running statistics kept by the caller)",
    semantics=KERAS.semantics.replace(
        frozen_train_stats=None,
        running_var_update="biased",
        compute_dtype="input",
        normalize_dtype="input",
        output_dtype="input",
        state_dtype="input",
        single_value="allowed",
    ),
    cite={
        **_KERAS2_COMMON,
        "affine_form": f"{_TFNN}::batch_normalization (x * inv + (offset - mean * inv)): folded",
        "eps": f"{_TFNN}::batch_normalization (variance_epsilon has no default: passed "
        "explicitly)",
        "eps_placement": f"{_TFNN}::batch_normalization (rsqrt(variance + variance_epsilon))",
        "eps_floor": f"{_TFNN}::batch_normalization adds variance_epsilon as given",
        "momentum": "ops, not a layer: the adapter keeps a tf.keras-convention EMA (0.99)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"the adapter's EMA copies {_K2}::_assign_moving_average "
        "(variable - (variable - value) * (1 - momentum))",
        "ema_debias": "the adapter's EMA does not debias (as tf.keras)",
        "initial_running": "the adapter starts from the case's statistics; tf.keras' (0, 1)",
        "first_update": "the adapter's EMA blends from the first step (as tf.keras)",
        "train_stats": f"{_TFNN}::moments' outputs normalize the training batch",
        "eval_stats": "the adapter passes its running statistics to batch_normalization",
        "normalize_var": f"{_TFNN}::moments ('sample variance, not unbiased variance')",
        "running_var_update": "the adapter's EMA is fed the moments' biased variance",
        "frozen_train_stats": "ops, not a layer: no frozen notion",
        "variance_algorithm": f"{_TFNN}::moments (reduce_mean of squared_difference from "
        "stop_gradient(mean))",
        "compute_dtype": f"{_TFNN}::moments reduces float16 in float32 but returns the moments "
        "cast back to float16: the statistics carry the input dtype's rounding",
        "normalize_dtype": f"{_TFNN}::batch_normalization: inv = rsqrt(variance + eps) * scale and "
        "offset - mean * inv in the statistics' dtype, cast to x's",
        "output_dtype": f"{_TFNN}::batch_normalization returns x's dtype",
        "state_dtype": "the adapter keeps the running statistics in the input dtype",
        "single_value": f"{_TFNN}::moments: no check; one value gives variance 0",
    },
    confirmed=f"{_CONFIRMED} runs tf.nn.moments + tf.nn.batch_normalization on ranks 2-5",
    state_names=_OP_STATE_NAMES,
)

PROFILES = [TF_KERAS_FUSED, TF_KERAS_NONFUSED, TF_NN_FUSED, TF_NN_MOMENTS]
