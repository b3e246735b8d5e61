"""Data-parallel profiles: Keras 3 (TensorFlow backend) and tf.keras (Keras 2) BatchNormalization
under ``tf.distribute.MirroredStrategy``, as installed: keras 3.15, tf-keras 2.21, tensorflow-cpu 2.21.

Each is the framework's single-device profile with the replica knobs it decides, each cited
(paths relative to site-packages) and each confirmed by running the layer over logical CPU
devices in ``tests/test_adapter_tf_data_parallel.py`` (adapters/tf_data_parallel.py).

Found by running, not expressible by a knob (see the adapter's docstring for the numbers):
- Keras 3 ``synchronized=True`` with a ``mask``: the mask branch of ``BatchNormalization._moments``
  never calls the synchronized moments: masked statistics are each replica's own.
- tf.keras ``synchronized=True`` with an empty shard: that replica skips its moving-statistics
  update (``inputs_size > 0`` guard), so its copy parts from the others'.
- Keras 3 ``synchronized=False`` with an empty shard: NaN moments, a NaN moving copy on that
  replica and a NaN all-reduced dgamma.
- tf.keras reads a moving statistic at model level as the mean of the replicas' copies (ON_READ,
  MEAN): ``replica_running`` says what each copy holds (own), not what a checkpoint saves.
"""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.keras import KERAS
from bnspec.profiles.tensorflow import TF_KERAS_NONFUSED

_K3 = "keras/src/layers/normalization/batch_normalization.py"
_K3TF = "keras/src/backend/tensorflow/nn.py"
_K3OPT = "keras/src/backend/tensorflow/optimizer.py::TFOptimizer._all_reduce_sum_gradients"
_K3VAR = "keras/src/backend/tensorflow/core.py::Variable._initialize"
_K2 = "tf_keras/src/layers/normalization/batch_normalization.py"
_K2OPT = "tf_keras/src/optimizers/utils.py::all_reduce_sum_gradients"
_DIST = "tensorflow/python/distribute"
_TESTS = "tests/test_adapter_tf_data_parallel.py"

_GLOBAL_GRAD = (
    f"{_DIST}/distribute_lib.py::ReplicaContext.all_reduce (custom_gradient: 'The gradient of an "
    "all-sum is itself an all-sum'): each replica's dx takes every replica's share of the loss "
    "through the all-reduced sums"
)
_NOT_OBSERVABLE_COUNT = (
    "no n/(n-1) anywhere (the moments' variance is biased and fed to the moving variance as is): "
    "replica_count cannot be observed; left at its default"
)


def _sync_moments(path: str, fn: str) -> dict[str, str]:
    return {
        "replica_stats": f"{path}::{fn}: replica_ctx.all_reduce(SUM) of each replica's sum, sum of "
        "squares and count; mean = divide_no_nan(sum, count): BatchNorm on the concatenated batch",
        "replica_var": f"{path}::{fn}: variance = maximum(E[x^2] - E[x]^2, 0) from the all-reduced "
        "sums: one pass (clamped at 0)",
        "replica_count": _NOT_OBSERVABLE_COUNT,
        "replica_grad": _GLOBAL_GRAD,
    }


_K3_OWN_COPIES = (
    f"{_K3}::BatchNormalization.build adds moving_mean/moving_variance with add_weight's default "
    f"aggregation='none' (keras/src/layers/layer.py::Layer.add_weight); {_K3VAR} makes a "
    f"tf.Variable with VariableAggregation.NONE, a MirroredVariable under the strategy, and "
    f"{_DIST}/values.py::_on_write_update_replica updates only the replica's own component for "
    "NONE: each replica assigns its own copy, and nothing reconciles them (a model-level read "
    "returns the primary, replica 0's copy)"
)
_K2_OWN_COPIES = (
    f"{_K2}::BatchNormalizationBase.build: moving_mean/moving_variance are "
    "synchronization=ON_READ, aggregation=MEAN: SyncOnReadVariables whose replica-context "
    f"assign_sub ({_K2}::BatchNormalizationBase._assign_moving_average) writes only that replica's "
    f"copy; {_DIST}/values.py::SyncOnReadVariable reads the mean of the copies in cross-replica "
    "context (a model-level read, a checkpoint) but never writes it back"
)

_PARAM_GRAD_SUM = {
    "keras": f"{_K3OPT}: apply_gradients in replica context all-reduces the per-replica "
    "gradients with ReduceOp.SUM (the adapter reports what keras.optimizers.SGD(1.0) applies)",
    "tf_keras": f"{_K2OPT}: apply_gradients in replica context all-reduces with ReduceOp.SUM "
    "(the adapter reports what tf_keras.optimizers.SGD(1.0) applies)",
}

KERAS_SYNC = Profile(
    name="keras_sync",
    framework="keras",
    title="keras.layers.BatchNormalization(synchronized=True) under tf.distribute.MirroredStrategy "
    "(Keras 3, TensorFlow backend)",
    semantics=KERAS.semantics.replace(replica_stats="count_weighted", replica_var="one_pass",
                                      replica_running="synchronized"),
    cite={
        **KERAS.cite,
        **_sync_moments(_K3TF, "_compute_moments_sync (via moments(synchronized=True) from "
                        f"{_K3}::BatchNormalization._moments)"),
        "replica_running": f"every replica assigns moving = moving * momentum + mean * (1 - "
        f"momentum) ({_K3}::BatchNormalization.call) from the same all-reduced moments, an empty "
        f"replica too (its count is 0, the combined count is not); {_K3_OWN_COPIES}",
        "replica_param_grad": _PARAM_GRAD_SUM["keras"],
    },
    confirmed=f"{_TESTS} runs the layer over 2 and 3 logical CPU devices, even and uneven shards "
    "(a one-sample and an empty one), float64 and float32",
    state_names=KERAS.state_names,
)

KERAS_MIRRORED = Profile(
    name="keras_mirrored",
    framework="keras",
    title="keras.layers.BatchNormalization(synchronized=False) under "
    "tf.distribute.MirroredStrategy (Keras 3, TensorFlow backend)",
    semantics=KERAS.semantics,
    cite={
        **KERAS.cite,
        "replica_stats": f"{_K3}::BatchNormalization._moments -> {_K3TF}::moments(synchronized="
        "False) -> _compute_moments (tf.nn.moments of the replica's own input)",
        "replica_running": f"each replica blends its own moments into its own copy; {_K3_OWN_COPIES}",
        "replica_param_grad": _PARAM_GRAD_SUM["keras"],
    },
    confirmed=f"{_TESTS} runs the layer over 2 and 3 logical CPU devices, even and uneven shards; an "
    "empty shard gives NaN moments (a NaN copy and a NaN summed dgamma): not this profile",
    state_names=KERAS.state_names,
)

# What Keras 3 does with a mask under synchronized=True, as found: not a registered profile (the
# masked adapter declares keras_sync, what synchronized=True promises, and this is the divergence).
KERAS_SYNC_MASKED = Profile(
    name="keras_sync_masked",
    framework="keras",
    title="keras.layers.BatchNormalization(synchronized=True) called with a mask (padded shards) "
    "under tf.distribute.MirroredStrategy (Keras 3): per-replica statistics",
    semantics=KERAS.semantics,
    cite={
        **KERAS.cite,
        "replica_stats": f"{_K3}::BatchNormalization._moments: with a mask it computes masked sums "
        "over the replica's own input (mean = masked_sum / (count + backend.epsilon())) and never "
        f"reads self.synchronized: no all-reduce, despite synchronized=True",
        "replica_running": f"each replica blends its own masked moments into its own copy; "
        f"{_K3_OWN_COPIES}",
        "replica_param_grad": _PARAM_GRAD_SUM["keras"],
    },
    confirmed=f"{_TESTS} runs the layer with zero-padded shards and a mask over 2 and 3 logical CPU "
    "devices: float32 conforms; float64 does not (the count + 1e-7 in the divisor is a relative "
    "error of 1e-7/n, no knob)",
    state_names=KERAS.state_names,
)

TF_KERAS_SYNC = Profile(
    name="tf_keras_sync",
    framework="tf_keras",
    title="tf_keras.layers.BatchNormalization(synchronized=True) under "
    "tf.distribute.MirroredStrategy (Keras 2; the SyncBatchNormalization path, never fused)",
    semantics=TF_KERAS_NONFUSED.semantics.replace(replica_stats="count_weighted",
                                                  replica_var="one_pass",
                                                  replica_running="synchronized"),
    cite={
        **TF_KERAS_NONFUSED.cite,
        **_sync_moments(_K2, "BatchNormalizationBase._sync_calculate_mean_and_var"),
        "replica_running": f"every non-empty replica assign_subs (moving - value) * (1 - momentum) "
        f"({_K2}::BatchNormalizationBase._assign_moving_average) with the same all-reduced "
        f"moments; {_K2_OWN_COPIES}. An empty replica skips its update (inputs_size > 0, "
        f"_support_zero_size_input: MirroredStrategy sets experimental_enable_get_next_as_optional, "
        f"{_DIST}/mirrored_strategy.py::MirroredExtended.__init__): not synchronized there",
        "replica_param_grad": _PARAM_GRAD_SUM["tf_keras"],
    },
    confirmed=f"{_TESTS} runs the layer over 2 and 3 logical CPU devices, even and uneven shards, "
    "float64 and float32",
    state_names=TF_KERAS_NONFUSED.state_names,
)

TF_KERAS_MIRRORED = Profile(
    name="tf_keras_mirrored",
    framework="tf_keras",
    title="tf_keras.layers.BatchNormalization(synchronized=False, fused=False) under "
    "tf.distribute.MirroredStrategy (Keras 2)",
    semantics=TF_KERAS_NONFUSED.semantics,
    cite={
        **TF_KERAS_NONFUSED.cite,
        "replica_stats": f"{_K2}::BatchNormalizationBase._no_sync_calculate_mean_and_var "
        "(tf.nn.moments of the replica's own input)",
        "replica_running": f"each replica blends its own moments into its own copy; {_K2_OWN_COPIES}; "
        "an empty replica keeps its copy (the inputs_size > 0 guard)",
        "replica_param_grad": _PARAM_GRAD_SUM["tf_keras"],
    },
    confirmed=f"{_TESTS} runs the layer over 2 and 3 logical CPU devices, even and uneven shards, an "
    "empty one too",
    state_names=TF_KERAS_NONFUSED.state_names,
)

TF_KERAS_SYNC_MASKED = Profile(
    name="tf_keras_sync_masked",
    framework="tf_keras",
    title="tf_keras.layers.BatchNormalization(synchronized=True) called with a mask (padded "
    "shards) under tf.distribute.MirroredStrategy (Keras 2): masked counts all-reduced",
    semantics=TF_KERAS_SYNC.semantics,
    cite={
        **TF_KERAS_SYNC.cite,
        "replica_stats": f"{_K2}::BatchNormalizationBase._sync_calculate_mean_and_var: y *= "
        "mask_weights and local_count = the mask, then the same all-reduced sums and counts: "
        "masked statistics combine by count",
        "replica_running": f"{TF_KERAS_SYNC.cite['replica_running']}; a padded shard is never "
        "empty, so an all-masked replica updates too (with the combined moments)",
    },
    confirmed=f"{_TESTS} runs the layer with zero-padded shards and a mask over 2 and 3 logical CPU "
    "devices, float64",
    state_names=TF_KERAS_NONFUSED.state_names,
)

PROFILES = [KERAS_SYNC, KERAS_MIRRORED, TF_KERAS_SYNC, TF_KERAS_MIRRORED, TF_KERAS_SYNC_MASKED]
