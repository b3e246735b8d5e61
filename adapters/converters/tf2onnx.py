"""Keras 3 and tf.keras (Keras 2) ``BatchNormalization`` -> ``tf2onnx`` -> ONNX Runtime (CPU).

Runs in ``envs/tf2onnx`` (tf2onnx is not in the main environment; TensorFlow is the CPU wheel).
Eval steps run on the export a deployment takes: ``tf2onnx.convert.from_keras`` of a one-layer
model (which traces ``training=False``). Train steps run on ``tf2onnx.convert.from_function`` of
``layer(x, training=True)`` (with ``layer.trainable = False`` for a frozen step): what a Keras
BatchNorm in training becomes in the ONNX graph. Statistics are carried between steps where the
graph has a BatchNormalization whose running statistics are constants; where tf2onnx lowers the
layer to arithmetic (Keras 3, tf.keras ``fused=False``) they are folded into constants that the
graph cannot update or expose, and the steps report none (``state_readable`` False in meta).

- ``keras3_tf2onnx``: ``keras.layers.BatchNormalization`` (TensorFlow backend), profile ``keras``.
  ``from_keras`` fails on a Keras 3 model in tf2onnx 1.17 (the error is kept in meta); the eval
  export is then ``from_function`` of ``layer(x, training=False)``, what a user falls back to.
- ``tf_keras_tf2onnx``: ``tf_keras.layers.BatchNormalization(fused=True)``, profile
  ``tf_keras_fused`` (ranks 4 and 5).
- ``tf_keras_nonfused_tf2onnx``: ``fused=False``, profile ``tf_keras_nonfused``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bnspec.adapter import Capabilities, channels_last
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    capabilities,
    conversion_checks,
    hyperparameters_preserved,
    read_batchnorm,
    run_onnx_plan,
    state_matches,
    trainable_initializers,
)
from bnspec.case import Case, Result
from bnspec.errors import UnsupportedFeature

_ENV = {"KERAS_BACKEND": "tensorflow"}  # threads: bnspec.worker.DEFAULT_ENV
_NOTES = (
    "source: a Keras BatchNormalization(axis=-1) (channels-last, momentum passed as "
    "1 - case.momentum); eval steps on tf2onnx.convert.from_keras (training=False), train steps "
    "on tf2onnx.convert.from_function(layer(x, training=True)); a frozen step sets "
    "layer.trainable = False before that export. ONNX Runtime CPU provider (envs/tf2onnx)."
)


@dataclass
class Tf2OnnxAdapter(ConverterAdapter):
    api: Literal["keras3", "tf_keras"] = "keras3"
    fused: bool | None = None  # tf_keras only
    capabilities: Capabilities = field(default_factory=lambda: capabilities(
        dtypes=("float32",), cumulative_momentum=False, untracked=False, frozen=True,
        notes=_NOTES))
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_ENV))
    # Keras 3 only: why from_keras failed, once it has (the eval export then falls back).
    _from_keras_error: str | None = field(default=None, init=False, repr=False, compare=False)

    def setup(self) -> None:
        import onnxruntime  # noqa: F401
        import tensorflow as tf
        import tf2onnx  # noqa: F401

        tf.config.threading.set_intra_op_parallelism_threads(1)
        logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # its warnings are findings in meta

    # -- the source --
    def _layer(self, case: Case) -> Any:
        assert case.momentum is not None
        common = dict(axis=-1, momentum=1.0 - case.momentum, epsilon=case.eps,
                      center=case.affine, scale=case.affine, moving_mean_initializer="zeros",
                      moving_variance_initializer="ones", dtype=case.dtype)
        if self.api == "keras3":
            import keras

            return keras.layers.BatchNormalization(**common)
        import tf_keras

        return tf_keras.layers.BatchNormalization(fused=self.fused, **common)

    def _model(self, layer: Any, shape: tuple[int, ...]) -> Any:
        if self.api == "keras3":
            import keras as k
        else:
            import tf_keras as k  # type: ignore[no-redef]
        return k.Sequential([k.Input(shape[1:], batch_size=shape[0]), layer])

    @staticmethod
    def _weights(layer: Any) -> dict[str, np.ndarray]:
        return {w.path if hasattr(w, "path") else w.name: np.array(w.numpy()) for w in layer.weights}

    def run(self, case: Case) -> Result:
        import tensorflow as tf
        import tf2onnx

        self.check_convertible(case, traced=False)
        if case.momentum is None:
            raise UnsupportedFeature("momentum=None: Keras has no cumulative average")
        layer = self._layer(case)
        shape0 = tuple(channels_last(case.steps[0].x, case.rank).shape)
        layer.build(shape0)
        if self.api == "tf_keras" and bool(layer.fused) != bool(self.fused):
            raise UnsupportedFeature(f"fused={self.fused} at rank {case.rank}: the layer has "
                                     f"fused={layer.fused}")
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            layer.gamma.assign(np.asarray(case.gamma, np.float32))
            layer.beta.assign(np.asarray(case.beta, np.float32))
        layer.moving_mean.assign(np.asarray(case.running_mean, np.float32))
        layer.moving_variance.assign(np.asarray(case.running_var, np.float32))
        before = self._weights(layer)
        trainable_before = layer.trainable
        artifacts: dict[tuple[str, bool, tuple[int, ...]], Any] = {}
        exporters: dict[str, str] = {}

        def export_function(shape: tuple[int, ...], training: bool) -> Any:
            fn = tf.function(lambda x: layer(x, training=training))
            spec = (tf.TensorSpec(shape, tf.float32, name="x"),)
            return tf2onnx.convert.from_function(fn, input_signature=spec)[0]

        def artifact(mode: str, shape: tuple[int, ...], frozen: bool = False) -> Any:
            key = ("train" if mode == "train" else "eval", frozen and mode == "train", shape)
            if key in artifacts:
                return artifacts[key]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if key[0] == "eval":
                    artifacts[key] = self._export_eval(layer, shape, export_function, exporters)
                else:
                    layer.trainable = not key[1]
                    try:
                        artifacts[key] = export_function(shape, True)
                    finally:
                        layer.trainable = trainable_before
                    exporters["train"] = "from_function(training=True)"
            return artifacts[key]

        steps = run_onnx_plan(case, artifact, layout="channels_last", frozen_aware=True)
        meta: dict[str, Any] = {"tensorflow": tf.__version__, "api": self.api,
                                "exporters": exporters}
        if self._from_keras_error is not None:
            meta["from_keras_error"] = self._from_keras_error
        infos = {}
        converted: dict[str, Any] = {}
        for (mode, frozen, _), model in artifacts.items():
            info = read_batchnorm(model)
            label = "frozen" if frozen else mode
            infos[label] = info
            converted[label] = {**info.describe(), "ops": sorted({n.op_type for n in model.graph.node})}
        state_readable = all(i.nodes == 1 and i.has_state for i in infos.values())
        meta["state_readable"] = state_readable
        # None where the layer is lowered to arithmetic: eps and momentum are not attributes any more.
        hyperparameters = (all(hyperparameters_preserved(case, c["eps"], c["momentum"]) for c in converted.values())
                           if all(i.nodes == 1 for i in infos.values()) else None)
        first = next(iter(infos.values()))
        changed = sorted(k for k, v in self._weights(layer).items()
                         if k not in before or before[k].tobytes() != v.tobytes())
        if layer.trainable != trainable_before:
            changed.append("<trainable>")
        eval_models = [m for (mode, _, _), m in artifacts.items() if mode == "eval"]
        converted_model = eval_models[0] if eval_models else next(iter(artifacts.values()))
        checks = conversion_checks(
            converted=converted, hyperparameters_preserved=hyperparameters,
            state_preserved=state_matches(case, first.running, np.float32) if state_readable else None,
            source_changes=changed,
            trainable_source={w.path if hasattr(w, "path") else w.name: int(np.prod(w.shape))
                              for w in layer.trainable_weights},
            # A BatchNormalization's scale/B initializers are what a training runtime would train;
            # folded Mul/Add constants (gamma * rsqrt(var + eps)) are not gamma and beta any more.
            trainable_converted=trainable_initializers(converted_model))
        return Result(steps, meta, checks)

    def _export_eval(self, layer: Any, shape: tuple[int, ...], export_function: Any,
                     exporters: dict[str, str]) -> Any:
        import tensorflow as tf
        import tf2onnx

        spec = (tf.TensorSpec(shape, tf.float32, name="x"),)
        try:
            model = tf2onnx.convert.from_keras(self._model(layer, shape), input_signature=spec)[0]
            exporters["eval"] = "from_keras"
            return model
        except Exception as e:  # noqa: BLE001 - the converter's failure is the finding
            if self.api != "keras3":
                raise
            self._from_keras_error = f"{type(e).__name__}: {e}"
        exporters["eval"] = "from_function(training=False)"
        return export_function(shape, False)


KERAS3_TF2ONNX = Tf2OnnxAdapter(
    name="keras3_tf2onnx", framework="tf2onnx", profile="keras",
    family="tf2onnx", api="keras3", extra_frameworks=("keras", "tensorflow-cpu"),
    description="keras.layers.BatchNormalization (Keras 3, TensorFlow backend) -> tf2onnx "
    "(from_function; from_keras fails on Keras 3) -> ONNX Runtime (envs/tf2onnx)",
)
TF_KERAS_TF2ONNX = Tf2OnnxAdapter(
    name="tf_keras_tf2onnx", framework="tf2onnx", profile="tf_keras_fused",
    family="tf2onnx", api="tf_keras", fused=True, extra_frameworks=("tf-keras", "tensorflow-cpu"),
    capabilities=capabilities(ranks=(4, 5), dtypes=("float32",), cumulative_momentum=False,
                              untracked=False, frozen=True, notes=_NOTES + " fused=True."),
    description="tf_keras.layers.BatchNormalization(fused=True) (Keras 2) -> tf2onnx "
    "(from_keras for eval, from_function(training=True) for train) -> ONNX Runtime",
)
TF_KERAS_NONFUSED_TF2ONNX = Tf2OnnxAdapter(
    name="tf_keras_nonfused_tf2onnx", framework="tf2onnx", profile="tf_keras_nonfused",
    family="tf2onnx", api="tf_keras", fused=False,
    extra_frameworks=("tf-keras", "tensorflow-cpu"),
    capabilities=capabilities(dtypes=("float32",), cumulative_momentum=False, untracked=False,
                              frozen=True, notes=_NOTES + " fused=False."),
    description="tf_keras.layers.BatchNormalization(fused=False) (Keras 2) -> tf2onnx "
    "(from_keras for eval, from_function(training=True) for train) -> ONNX Runtime",
)
