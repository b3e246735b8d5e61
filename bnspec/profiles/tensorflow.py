"""tf.keras (Keras 2) and TensorFlow op profiles. Paths are relative to site-packages."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.keras import KERAS

_K2 = "tf_keras/src/layers/normalization/batch_normalization.py"
_TFNN = "tensorflow/python/ops/nn_impl.py"
_TFK = "tensorflow/core/kernels/fused_batch_norm_op.cc"

TF_KERAS_FUSED = Profile(
    name="tf_keras_fused",
    framework="tf_keras",
    title="tf.keras (Keras 2) BatchNormalization on its fused path (rank 4 and 5)",
    semantics=KERAS.semantics.replace(
        running_var_update="unbiased",
        eps_floor=1.001e-5,
        output_dtype="input",
        single_value="allowed",
    ),
    cite={
        **KERAS.cite,
        "eps": f"{_K2}::BatchNormalization.__init__ (epsilon=1e-3)",
        "eps_floor": f"{_TFNN}::fused_batch_norm (min_epsilon = 1.001e-5: cuDNN's minimum, "
        "applied on every device)",
        "momentum_weights": f"{_K2}::_fused_batch_norm (exponential_avg_factor = 1 - momentum)",
        "running_var_update": f"{_K2}::_fused_batch_norm: _bessels_correction_test_only = True "
        "keeps the fused kernel's Bessel-corrected variance; "
        f"{_TFK} (batch variance * n / (n - 1) in training)",
        "normalize_var": f"{_TFK} normalizes with the biased batch variance",
        "frozen_train_stats": f"{_K2}::BatchNormalization._get_training_value (trainable=False "
        "forces training=False in TF2)",
        "variance_algorithm": f"{_TFK} (CPU: FusedBatchNorm<CPUDevice> two-pass over the batch)",
        "compute_dtype": f"{_TFK} (U = float for half inputs)",
        "output_dtype": f"{_TFK} (y has the input's dtype T)",
        "single_value": f"{_TFK}: Bessel factor uses max(n - 1, 1)",
    },
    confirmed="tests/test_adapter_tf.py runs tf_keras on rank-4 inputs",
    state_names=KERAS.state_names,
)

TF_KERAS_NONFUSED = Profile(
    name="tf_keras_nonfused",
    framework="tf_keras",
    title="tf.keras (Keras 2) BatchNormalization on its non-fused path (rank 2, 3)",
    semantics=KERAS.semantics.replace(output_dtype="input"),
    cite={
        **KERAS.cite,
        "eps": f"{_K2}::BatchNormalization.__init__ (epsilon=1e-3)",
        "momentum_weights": f"{_K2}::BatchNormalization._assign_moving_average "
        "(variable - (variable - value) * (1 - momentum))",
        "normalize_var": f"{_K2}::BatchNormalization._moments -> tf.nn.moments",
        "running_var_update": f"{_K2}::BatchNormalization.call (non-fused): moments' variance, "
        "no Bessel correction",
        "frozen_train_stats": f"{_K2}::BatchNormalization._get_training_value",
        "variance_algorithm": f"{_TFNN}::moments (squared_difference from stop_gradient(mean))",
        "output_dtype": f"{_K2}: the layer autocasts to its compute dtype; float32 policy",
    },
    confirmed="tests/test_adapter_tf.py runs tf_keras on rank-2 inputs",
    state_names=KERAS.state_names,
)

TF_NN_FUSED = Profile(
    name="tf_nn_fused",
    framework="tensorflow",
    title="tf.nn.fused_batch_norm (TF2 API) with exponential_avg_factor",
    semantics=TF_KERAS_FUSED.semantics.replace(frozen_train_stats=None),
    cite={
        **TF_KERAS_FUSED.cite,
        "eps": f"{_TFNN}::fused_batch_norm (epsilon=0.001)",
        "momentum": f"{_TFNN}::fused_batch_norm (exponential_avg_factor=1.0: replace)",
        "momentum_weights": f"{_TFNN}::fused_batch_norm: running = (1 - factor) * running + "
        "factor * batch; the adapter passes factor = 1 - keras momentum",
        "frozen_train_stats": "an op, not a layer: no frozen notion",
    },
    confirmed="tests/test_adapter_tf.py runs tf.nn.fused_batch_norm",
)

TF_NN_MOMENTS = Profile(
    name="tf_nn_moments",
    framework="tensorflow",
    title="tf.nn.moments + tf.nn.batch_normalization (running statistics kept by the caller)",
    semantics=KERAS.semantics.replace(frozen_train_stats=None, output_dtype="input",
                                      compute_dtype="input", state_dtype="input"),
    cite={
        **KERAS.cite,
        "eps": f"{_TFNN}::batch_normalization (variance_epsilon has no default: passed explicitly)",
        "momentum": "ops, not a layer: the adapter keeps a Keras-convention EMA (0.99)",
        "momentum_weights": "the adapter's EMA follows tf.keras' convention",
        "normalize_var": f"{_TFNN}::moments (reduce_mean of squared_difference)",
        "variance_algorithm": f"{_TFNN}::moments (squared_difference from stop_gradient(mean))",
        "compute_dtype": f"{_TFNN}::moments (float16 inputs are upcast to float32 inside moments)",
        "output_dtype": f"{_TFNN}::batch_normalization computes in the input's dtype",
        "state_dtype": "the adapter keeps the state in the input's dtype",
        "frozen_train_stats": "ops, not a layer: no frozen notion",
    },
    confirmed="tests/test_adapter_tf.py runs tf.nn.moments + tf.nn.batch_normalization",
)

PROFILES = [TF_KERAS_FUSED, TF_KERAS_NONFUSED, TF_NN_FUSED, TF_NN_MOMENTS]
