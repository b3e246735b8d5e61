"""TensorFlow ops and tf.keras (Keras 2, the ``tf-keras`` distribution, imported as ``tf_keras``).

Four adapters, each its own worker (the profiles are in ``bnspec/profiles/tensorflow.py``):

- ``tf_nn_fused``: ``tf.compat.v1.nn.fused_batch_norm`` (TF2 exports no ``tf.nn.fused_batch_norm``),
  the FusedBatchNormV3 kernel; the adapter carries the running statistics between calls through
  the op's ``mean``/``variance`` inputs and outputs, with ``exponential_avg_factor`` = the weight
  of the batch statistic (``case.momentum`` as is; 1/t for the cumulative average).
- ``tf_nn_moments``: ``tf.nn.moments`` + ``tf.nn.batch_normalization``; the adapter keeps a
  tf.keras-style EMA (``r - (r - b) * (1 - momentum)``) in the input dtype.
- ``tf_keras_fused`` / ``tf_keras_nonfused``: ``tf_keras.layers.BatchNormalization`` with
  ``fused=True`` (ranks 4 and 5 only) / ``fused=False``.

TensorFlow normalizes the last axis: (N, C, *spatial) is moved to (N, *spatial, C) and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import round_to
from bnspec.errors import UnsupportedFeature

_HALF = ("float16", "bfloat16")


def _tensor(a: np.ndarray, dtype: str) -> Any:
    """A tf tensor of ``dtype`` holding ``a`` (whose values are exactly representable in it)."""
    import tensorflow as tf

    wide = "float64" if dtype == "float64" else "float32"
    return tf.cast(tf.constant(np.asarray(a, dtype=wide)), dtype)


def _numpy(t: Any) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(tf.cast(t, tf.float64).numpy(), dtype=np.float64)


def _check_param_values(case: Case, dtype: str, why: str) -> None:
    """The framework keeps gamma/beta/running statistics in ``dtype``: the case's values must
    be exactly representable there."""
    for name in ("gamma", "beta", "running_mean", "running_var"):
        v = getattr(case, name)
        if v is not None and not np.array_equal(round_to(v, dtype), v):
            raise UnsupportedFeature(
                f"{name} in {case.param_dtype} is not exact in {dtype} ({why})"
            )


def _grad_output(step: Any, rank: int) -> Any:
    return None if step.grad_output is None else channels_last(step.grad_output, rank)


def _lines_for_array(name: str, a: np.ndarray, dtype: str) -> str:
    return f"{name} = tf.cast(np.array({a.tolist()!r}), {dtype!r})"


@dataclass
class _TensorFlowAdapter(Adapter):
    def setup(self) -> None:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):  # CUDA_VISIBLE_DEVICES="" hides any
            raise RuntimeError("the TensorFlow adapters are pinned to the CPU kernels")


# --------------------------------------------------------------------------------------------
# tf.compat.v1.nn.fused_batch_norm


@dataclass
class TFFusedOpAdapter(_TensorFlowAdapter):
    def run(self, case: Case) -> Result:
        import tensorflow as tf

        self.check_supported(case)
        # FusedBatchNormV3: T in {half, bfloat16, float}, U (scale, offset, mean, variance) = float
        _check_param_values(case, "float32", "the op's scale/offset/mean/variance are float32")
        rank = case.rank
        fmt = "NHWC" if rank == 4 else "NDHWC"
        c = case.num_features
        scale = _tensor(case.gamma if case.gamma is not None else np.ones(c), "float32")
        offset = _tensor(case.beta if case.beta is not None else np.zeros(c), "float32")
        running_mean = _tensor(case.running_mean, "float32")
        running_var = _tensor(case.running_var, "float32")
        updates = 0
        steps: list[StepResult] = []
        for step in case.steps:
            training = step.mode == "train"
            factor = 1.0
            if training:
                updates += 1
                factor = 1.0 / updates if case.momentum is None else float(case.momentum)
            x = _tensor(channels_last(step.x, rank), case.dtype)
            g = _grad_output(step, rank)
            with tf.GradientTape(persistent=False) as tape:
                tape.watch([x, scale, offset])
                y, new_mean, new_var = tf.compat.v1.nn.fused_batch_norm(
                    x, scale, offset, mean=running_mean, variance=running_var,
                    epsilon=case.eps, data_format=fmt, is_training=training,
                    exponential_avg_factor=factor,
                )
                loss = None if g is None else tf.reduce_sum(tf.cast(y, tf.float64) * g)
            if training:  # the op returns the blended running statistics (Bessel-corrected var)
                running_mean, running_var = new_mean, new_var
            res = StepResult(
                y=channels_first(_numpy(y), rank),
                running_mean=_numpy(running_mean),
                running_var=_numpy(running_var),
                y_dtype=y.dtype.name,
                running_dtype=running_mean.dtype.name,
            )
            if loss is not None:
                dx, dscale, doffset = tape.gradient(loss, [x, scale, offset])
                res.dx = channels_first(_numpy(dx), rank)
                if case.affine:
                    res.dgamma, res.dbeta = _numpy(dscale), _numpy(doffset)
            steps.append(res)
        return Result(steps, {"tf_op": "tf.compat.v1.nn.fused_batch_norm", "data_format": fmt})

    def snippet(self, case: Case) -> str:
        rank, c = case.rank, case.num_features
        fmt = "NHWC" if rank == 4 else "NDHWC"
        gamma = case.gamma if case.gamma is not None else np.ones(c)
        beta = case.beta if case.beta is not None else np.zeros(c)
        lines = [
            "import numpy as np",
            "import tensorflow as tf",
            "",
            _lines_for_array("scale", gamma, "float32"),
            _lines_for_array("offset", beta, "float32"),
            _lines_for_array("mean", case.running_mean, "float32"),
            _lines_for_array("variance", case.running_var, "float32"),
            "# arrays are channels-last: (N, *spatial, C)",
        ]
        updates = 0
        for i, step in enumerate(case.steps):
            training = step.mode == "train"
            factor = 1.0
            if training:
                updates += 1
                factor = 1.0 / updates if case.momentum is None else float(case.momentum)
            lines.append(_lines_for_array(f"x{i}", channels_last(step.x, rank), case.dtype))
            lines.append(
                f"y{i}, m, v = tf.compat.v1.nn.fused_batch_norm(x{i}, scale, offset, mean=mean, "
                f"variance=variance, epsilon={case.eps!r}, data_format={fmt!r}, "
                f"is_training={training}, exponential_avg_factor={factor!r})"
            )
            if training:
                lines.append("mean, variance = m, v")
            lines.append(f"print('step {i}', y{i}.numpy(), mean.numpy(), variance.numpy())")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# tf.nn.moments + tf.nn.batch_normalization


@dataclass
class TFMomentsAdapter(_TensorFlowAdapter):
    def run(self, case: Case) -> Result:
        import tensorflow as tf

        self.check_supported(case)
        if case.momentum is None:
            raise UnsupportedFeature("momentum=None: the adapter's tf.keras-style EMA has none")
        dt = case.dtype
        # batch_normalization computes rsqrt(variance + eps) * scale in the statistics' dtype and
        # casts it to x's: the statistics and parameters all live in the input dtype here.
        _check_param_values(case, dt, "ops on one dtype: parameters and state in the input dtype")
        rank = case.rank
        axes = list(range(rank - 1))
        scale = _tensor(case.gamma, dt) if case.gamma is not None else None
        offset = _tensor(case.beta, dt) if case.beta is not None else None
        running_mean, running_var = _tensor(case.running_mean, dt), _tensor(case.running_var, dt)
        decay = tf.constant(1.0 - (1.0 - case.momentum), dtype=dt)  # tf.keras: 1 - its momentum
        steps: list[StepResult] = []
        for step in case.steps:
            training = step.mode == "train"
            x = _tensor(channels_last(step.x, rank), dt)
            g = _grad_output(step, rank)
            watched = [x] + [w for w in (scale, offset) if w is not None]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                if training:
                    mean, var = tf.nn.moments(x, axes=axes)
                else:
                    mean, var = running_mean, running_var
                y = tf.nn.batch_normalization(x, mean, var, offset, scale, case.eps)
                loss = None if g is None else tf.reduce_sum(tf.cast(y, tf.float64) * g)
            res = StepResult(y=channels_first(_numpy(y), rank), y_dtype=y.dtype.name)
            if training:
                res.batch_mean, res.batch_var = _numpy(mean), _numpy(var)
                # tf_keras' _assign_moving_average: variable - (variable - value) * (1 - momentum)
                running_mean = running_mean - (running_mean - tf.stop_gradient(mean)) * decay
                running_var = running_var - (running_var - tf.stop_gradient(var)) * decay
            res.running_mean, res.running_var = _numpy(running_mean), _numpy(running_var)
            res.running_dtype = running_mean.dtype.name
            if loss is not None:
                grads = tape.gradient(loss, watched)
                res.dx = channels_first(_numpy(grads[0]), rank)
                if case.affine:
                    res.dgamma, res.dbeta = _numpy(grads[1]), _numpy(grads[2])
            steps.append(res)
        return Result(steps, {"tf_op": "tf.nn.moments + tf.nn.batch_normalization"})

    def snippet(self, case: Case) -> str:
        rank, dt = case.rank, case.dtype
        momentum = None if case.momentum is None else 1.0 - case.momentum
        lines = [
            "import numpy as np",
            "import tensorflow as tf",
            "",
            f"momentum = {momentum!r}  # tf.keras convention: the weight of the running statistic",
            _lines_for_array("scale", case.gamma, dt) if case.gamma is not None else "scale = None",
            _lines_for_array("offset", case.beta, dt) if case.beta is not None else "offset = None",
            _lines_for_array("moving_mean", case.running_mean, dt),
            _lines_for_array("moving_var", case.running_var, dt),
            f"decay = tf.constant(1.0 - momentum, {dt!r})",
            "# arrays are channels-last: (N, *spatial, C)",
        ]
        for i, step in enumerate(case.steps):
            lines.append(_lines_for_array(f"x{i}", channels_last(step.x, rank), dt))
            if step.mode == "train":
                lines += [
                    f"mean, var = tf.nn.moments(x{i}, axes={list(range(rank - 1))!r})",
                    f"y{i} = tf.nn.batch_normalization(x{i}, mean, var, offset, scale, "
                    f"{case.eps!r})",
                    "moving_mean = moving_mean - (moving_mean - mean) * decay",
                    "moving_var = moving_var - (moving_var - var) * decay",
                ]
            else:
                lines.append(
                    f"y{i} = tf.nn.batch_normalization(x{i}, moving_mean, moving_var, offset, "
                    f"scale, {case.eps!r})"
                )
            lines.append(
                f"print('step {i}', y{i}.numpy(), moving_mean.numpy(), moving_var.numpy())"
            )
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# tf_keras.layers.BatchNormalization


def _keras2_param_dtype(dtype: str) -> str:
    # tf_keras BatchNormalizationBase._param_dtype: float16/bfloat16 layers keep float32 weights
    return "float32" if dtype in _HALF else dtype


@dataclass
class TFKerasAdapter(_TensorFlowAdapter):
    """``tf_keras.layers.BatchNormalization(axis=-1, fused=...)`` with the layer's dtype = the
    case's input dtype (so float16 inputs run the layer's float16 path, weights in float32)."""

    fused: bool = False

    def setup(self) -> None:
        super().setup()
        import tf_keras  # noqa: F401

    def _check_params(self, case: Case) -> None:
        weights = _keras2_param_dtype(case.dtype)
        if self.fused:
            # The fused kernel takes float32 scale/offset/mean/variance only (state float32).
            _check_param_values(case, weights, "the fused layer keeps its weights in float32")
        elif case.param_dtype != weights:
            raise UnsupportedFeature(
                f"param_dtype {case.param_dtype} with {case.dtype} inputs: a tf_keras "
                f"BatchNormalization of dtype {case.dtype} keeps its weights in {weights}"
            )

    def _layer(self, case: Case) -> Any:
        import tf_keras

        return tf_keras.layers.BatchNormalization(
            axis=-1,
            momentum=1.0 - float(case.momentum),  # type: ignore[arg-type]
            epsilon=case.eps,
            center=case.affine,
            scale=case.affine,
            beta_initializer="zeros",
            gamma_initializer="ones",
            moving_mean_initializer="zeros",
            moving_variance_initializer="ones",
            renorm=False,
            fused=self.fused,
            virtual_batch_size=None,
            adjustment=None,
            synchronized=False,
            dtype=case.dtype,
        )

    def run(self, case: Case) -> Result:
        import tensorflow as tf

        self.check_supported(case)
        if case.momentum is None:
            raise UnsupportedFeature("momentum=None: tf.keras has no cumulative average")
        self._check_params(case)
        rank = case.rank
        layer = self._layer(case)
        layer.build(channels_last(case.steps[0].x, rank).shape)
        if bool(layer.fused) != self.fused:
            raise RuntimeError(f"layer.fused is {layer.fused} after build, asked {self.fused}")
        wdt = layer.moving_mean.dtype.name
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            layer.gamma.assign(_tensor(case.gamma, wdt))
            layer.beta.assign(_tensor(case.beta, wdt))
        layer.moving_mean.assign(_tensor(case.running_mean, wdt))
        layer.moving_variance.assign(_tensor(case.running_var, wdt))
        steps: list[StepResult] = []
        for step in case.steps:
            x = _tensor(channels_last(step.x, rank), case.dtype)
            g = _grad_output(step, rank)
            weights = [w for w in (layer.gamma, layer.beta) if w is not None]
            layer.trainable = not step.frozen
            try:
                with tf.GradientTape() as tape:
                    tape.watch([x, *weights])  # a frozen layer's weights are not watched
                    y = layer(x, training=step.mode == "train")
                    loss = None if g is None else tf.reduce_sum(tf.cast(y, tf.float64) * g)
            finally:
                layer.trainable = True
            res = StepResult(
                y=channels_first(_numpy(y), rank),
                running_mean=_numpy(layer.moving_mean),
                running_var=_numpy(layer.moving_variance),
                y_dtype=y.dtype.name,
                running_dtype=layer.moving_mean.dtype.name,
            )
            if loss is not None:
                grads = tape.gradient(loss, [x, *weights])
                res.dx = channels_first(_numpy(grads[0]), rank)
                if case.affine:
                    res.dgamma, res.dbeta = _numpy(grads[1]), _numpy(grads[2])
            steps.append(res)
        return Result(steps, {"fused": self.fused})

    def snippet(self, case: Case) -> str:
        rank = case.rank
        momentum = None if case.momentum is None else 1.0 - case.momentum
        wdt = _keras2_param_dtype(case.dtype)
        lines = [
            "import numpy as np",
            "import tensorflow as tf",
            "import tf_keras",
            "",
            "layer = tf_keras.layers.BatchNormalization(",
            f"    axis=-1, momentum={momentum!r}, epsilon={case.eps!r}, center={case.affine}, "
            f"scale={case.affine},",
            f"    fused={self.fused}, dtype={case.dtype!r})",
            f"layer.build({tuple(channels_last(case.steps[0].x, rank).shape)!r})",
        ]
        if case.gamma is not None and case.beta is not None:
            lines.append(f"layer.gamma.assign(tf.cast(np.array({case.gamma.tolist()!r}), {wdt!r}))")
            lines.append(f"layer.beta.assign(tf.cast(np.array({case.beta.tolist()!r}), {wdt!r}))")
        lines.append(
            f"layer.moving_mean.assign(tf.cast(np.array({case.running_mean.tolist()!r}), {wdt!r}))"
        )
        lines.append(
            "layer.moving_variance.assign("
            f"tf.cast(np.array({case.running_var.tolist()!r}), {wdt!r}))"
        )
        lines.append("# arrays are channels-last: (N, *spatial, C)")
        for i, step in enumerate(case.steps):
            lines.append(_lines_for_array(f"x{i}", channels_last(step.x, rank), case.dtype))
            lines.append(f"layer.trainable = {not step.frozen}")
            lines.append(f"y{i} = layer(x{i}, training={step.mode == 'train'})")
            lines.append(
                f"print('step {i}', y{i}.numpy(), layer.moving_mean.numpy(), "
                "layer.moving_variance.numpy())"
            )
        return "\n".join(lines) + "\n"


_GRAD_NOTE = (
    "gradients by tf.GradientTape; TF_ENABLE_ONEDNN_OPTS left at TensorFlow's default (on for "
    "x86 Linux, so eager ops may run oneDNN kernels; with it off the semantics are the same)"
)

TF_NN_FUSED = TFFusedOpAdapter(
    name="tf_nn_fused",
    framework="tensorflow",
    profile="tf_nn_fused",
    description="tf.compat.v1.nn.fused_batch_norm (FusedBatchNormV3, CPU kernel), eager",
    capabilities=Capabilities(
        ranks=(4, 5),
        dtypes=("float32", "float16", "bfloat16"),
        gradients=True,
        cumulative_momentum=True,
        frozen=False,
        affine_off=True,
        notes="data_format NHWC (rank 4) / NDHWC (rank 5); the op takes no float64 (attr T in "
        "half, bfloat16, float) and float32 scale/offset/mean/variance; exponential_avg_factor = "
        "case.momentum (1/t for momentum=None), passed per call; running statistics carried by "
        "the adapter through the op's mean/variance outputs; affine off passes scale=1, "
        "offset=0; the biased batch statistics are not exposed (only the raw op's "
        "device-dependent reserve_space outputs hold them); " + _GRAD_NOTE,
    ),
)

TF_NN_MOMENTS = TFMomentsAdapter(
    name="tf_nn_moments",
    framework="tensorflow",
    profile="tf_nn_moments",
    description="tf.nn.moments + tf.nn.batch_normalization, with a tf.keras-style EMA kept by "
    "the adapter",
    capabilities=Capabilities(
        ranks=(2, 3, 4, 5),
        dtypes=("float64", "float32", "float16"),
        gradients=True,
        cumulative_momentum=False,
        frozen=False,
        affine_off=True,
        notes="parameters and running statistics in the input dtype (param_dtype must be exact "
        "in it); the EMA is r - (r - b) * (1 - k) with k = 1 - case.momentum, as tf_keras' "
        "_assign_moving_average; bfloat16 left out: moments upcasts only float16; " + _GRAD_NOTE,
    ),
)

_KERAS2_NOTES = (
    "layer dtype = the case's input dtype (float16/bfloat16 layers keep float32 weights); "
    "momentum passed as 1 - case.momentum; a frozen step sets layer.trainable = False and "
    "calls the layer with training=True; eager execution (the fused path then uses the "
    "kernel's exponential_avg_factor); " + _GRAD_NOTE
)

TF_KERAS_FUSED = TFKerasAdapter(
    name="tf_keras_fused",
    framework="tf-keras",
    profile="tf_keras_fused",
    description="tf_keras.layers.BatchNormalization(fused=True) (Keras 2), eager",
    capabilities=Capabilities(
        ranks=(4, 5),
        dtypes=("float32", "float16", "bfloat16"),
        gradients=True,
        cumulative_momentum=False,
        frozen=True,
        affine_off=True,
        notes="fused=True: ranks 4 and 5 only, no float64 (the layer raises); weights float32, "
        "so gamma/beta/running values must be exact in float32; " + _KERAS2_NOTES,
    ),
    fused=True,
)

TF_KERAS_NONFUSED = TFKerasAdapter(
    name="tf_keras_nonfused",
    framework="tf-keras",
    profile="tf_keras_nonfused",
    description="tf_keras.layers.BatchNormalization(fused=False) (Keras 2), eager",
    capabilities=Capabilities(
        ranks=(2, 3, 4, 5),
        dtypes=("float64", "float32", "float16", "bfloat16"),
        gradients=True,
        cumulative_momentum=False,
        frozen=True,
        affine_off=True,
        notes="fused=False (the layer's own choice for ranks 2 and 3, fused=None); param_dtype "
        "must be the layer's weight dtype (float32 for float16/bfloat16 inputs); " + _KERAS2_NOTES,
    ),
    fused=False,
)

__all__ = [
    "TF_KERAS_FUSED",
    "TF_KERAS_NONFUSED",
    "TF_NN_FUSED",
    "TF_NN_MOMENTS",
    "TFFusedOpAdapter",
    "TFKerasAdapter",
    "TFMomentsAdapter",
]
