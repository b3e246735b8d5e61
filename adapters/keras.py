"""Keras 3 ``keras.layers.BatchNormalization`` on its TensorFlow, JAX and PyTorch backends, and
on TensorFlow under XLA (``tf.function(jit_compile=True)``).

Keras normalizes the last axis: the canonical (N, C, *spatial) arrays are moved to
(N, *spatial, C) and back. ``KERAS_BACKEND`` is read once per process, so each backend is its
own adapter, and so its own worker process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, StepResult

_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _capabilities(notes: str) -> Capabilities:
    return Capabilities(
        dtypes=_DTYPES,
        gradients=True,
        cumulative_momentum=False,  # Keras has no cumulative average
        frozen=True,  # layer.trainable = False, called with training=True
        affine_off=True,  # center=False, scale=False
        untracked=False,  # moving statistics always exist
        notes=notes,
    )


_COMMON_NOTES = (
    "momentum passed as 1 - case.momentum (Keras weights the running statistic); the layer's "
    "dtype is the case's param_dtype (float16/bfloat16 inputs with float32 parameters run a "
    "float32 layer fed half-precision tensors); a frozen step sets layer.trainable = False and "
    "calls the layer with training=True"
)


@dataclass
class KerasAdapter(Adapter):
    """``keras.layers.BatchNormalization(axis=-1)``; ``backend`` picks KERAS_BACKEND."""

    backend: str = "tensorflow"
    jit_compile: bool = False  # TensorFlow only: run each call inside tf.function(jit_compile=True)

    def setup(self) -> None:
        import keras

        if keras.backend.backend() != self.backend:
            raise RuntimeError(
                f"adapter {self.name!r} needs KERAS_BACKEND={self.backend!r}, "
                f"the worker runs {keras.backend.backend()!r}"
            )
        if self.backend == "torch":
            import torch

            torch.set_num_threads(1)
        elif self.backend == "jax":
            import jax

            if not jax.config.read("jax_enable_x64"):
                raise RuntimeError("keras_jax needs JAX_ENABLE_X64=1 for float64 cases")

    # -- the one call --
    def run(self, case: Case) -> Result:
        import keras

        self.check_supported(case)
        if case.momentum is None:  # also guarded by the capabilities
            from bnspec.errors import UnsupportedFeature

            raise UnsupportedFeature("momentum=None: Keras has no cumulative average")
        rank = case.rank
        layer = keras.layers.BatchNormalization(
            axis=-1,
            momentum=1.0 - case.momentum,
            epsilon=case.eps,
            center=case.affine,
            scale=case.affine,
            moving_mean_initializer="zeros",
            moving_variance_initializer="ones",
            dtype=case.param_dtype,
        )
        layer.build(channels_last(case.steps[0].x, rank).shape)
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            layer.gamma.assign(self._tensor(case.gamma, case.param_dtype))
            layer.beta.assign(self._tensor(case.beta, case.param_dtype))
        layer.moving_mean.assign(self._tensor(case.running_mean, case.param_dtype))
        layer.moving_variance.assign(self._tensor(case.running_var, case.param_dtype))

        call = {
            "tensorflow": self._call_tensorflow,
            "jax": self._call_jax,
            "torch": self._call_torch,
        }[self.backend]
        steps: list[StepResult] = []
        for step in case.steps:
            x = self._tensor(channels_last(step.x, rank), case.dtype)
            g = None if step.grad_output is None else channels_last(step.grad_output, rank)
            layer.trainable = not step.frozen
            try:
                y, grads = call(layer, x, step.mode == "train", g)
            finally:
                layer.trainable = True
            res = StepResult(
                y=channels_first(_numpy(y), rank),
                running_mean=_numpy(layer.moving_mean.value),
                running_var=_numpy(layer.moving_variance.value),
                y_dtype=keras.backend.standardize_dtype(y.dtype),
                running_dtype=keras.backend.standardize_dtype(layer.moving_mean.dtype),
            )
            if grads is not None:
                dx, dgamma, dbeta = grads
                res.dx = channels_first(_numpy(dx), rank)
                if case.affine:
                    res.dgamma, res.dbeta = _numpy(dgamma), _numpy(dbeta)
            steps.append(res)
        meta: dict[str, Any] = {"keras_backend": self.backend}
        if self.jit_compile:
            meta["jit_compile"] = True
        return Result(steps, meta)

    def _tensor(self, a: np.ndarray, dtype: str) -> Any:
        """A backend tensor of ``dtype`` holding ``a`` (exactly representable in it)."""
        import keras

        wide = "float64" if dtype == "float64" else "float32"  # exact for narrower values
        t = keras.ops.convert_to_tensor(np.asarray(a, dtype=wide), dtype=wide)
        return t if dtype == wide else keras.ops.cast(t, dtype)

    # -- one backend each: (layer, x, training, grad_output | None) -> (y, grads | None) --
    def _call_tensorflow(self, layer: Any, x: Any, training: bool, g: np.ndarray | None) -> Any:
        import tensorflow as tf

        def forward(x: Any, g: Any) -> Any:
            if g is None:
                return layer(x, training=training), None
            weights = [w.value for w in (layer.gamma, layer.beta) if w is not None]
            with tf.GradientTape() as tape:
                tape.watch(x)
                tape.watch(weights)  # a frozen layer's weights are not watched by default
                y = layer(x, training=training)
                loss = tf.reduce_sum(y * tf.cast(g, y.dtype))
            grads = tape.gradient(loss, [x, *weights])
            return y, (grads[0], *(grads[1:] or (None, None)))

        g_t = None if g is None else tf.constant(g, dtype=tf.float64)
        if not self.jit_compile:
            return forward(x, g_t)
        # A fresh compiled function per call: layer.trainable is read at trace time.
        compiled = tf.function(forward, jit_compile=True, reduce_retracing=False)
        return compiled(x, g_t)

    def _call_jax(self, layer: Any, x: Any, training: bool, g: np.ndarray | None) -> Any:
        if g is None:
            return layer(x, training=training), None
        import jax
        import jax.numpy as jnp

        trainable = list(layer.trainable_variables)
        non_trainable = list(layer.non_trainable_variables)

        def forward(x: Any, tv: list[Any], ntv: list[Any]) -> Any:
            y, new_ntv = layer.stateless_call(tv, ntv, x, training=training)
            return y, new_ntv

        y, vjp, new_ntv = jax.vjp(
            forward, x, [v.value for v in trainable], [v.value for v in non_trainable],
            has_aux=True,
        )
        dx, dtv, dntv = vjp(jnp.asarray(g, dtype=y.dtype))
        for var, value in zip(non_trainable, new_ntv, strict=True):
            var.assign(value)
        by_id = {id(v): d for v, d in zip(trainable + non_trainable, dtv + dntv, strict=True)}
        dgamma = by_id.get(id(layer.gamma)) if layer.gamma is not None else None
        dbeta = by_id.get(id(layer.beta)) if layer.beta is not None else None
        return y, (dx, dgamma, dbeta)

    def _call_torch(self, layer: Any, x: Any, training: bool, g: np.ndarray | None) -> Any:
        import torch

        if g is None:
            with torch.no_grad():
                return layer(x, training=training), None
        x = x.detach().requires_grad_(True)
        weights = [w.value for w in (layer.gamma, layer.beta) if w is not None]
        saved = [w.requires_grad for w in weights]
        for w in weights:  # a frozen layer's parameters do not require grad
            w.requires_grad_(True)
        try:
            y = layer(x, training=training)
            loss = (y * torch.as_tensor(g, device=y.device).to(y.dtype)).sum()
            grads = torch.autograd.grad(loss, [x, *weights])
        finally:
            for w, s in zip(weights, saved, strict=True):
                w.requires_grad_(s)
        return y.detach(), (grads[0], *(grads[1:] or (None, None)))

    # -- the repro --
    def snippet(self, case: Case) -> str:
        rank = case.rank
        lines = [
            "import os",
            f"os.environ['KERAS_BACKEND'] = {self.backend!r}",
        ]
        if self.backend == "jax":
            lines.append("os.environ['JAX_ENABLE_X64'] = '1'")
        lines += [
            "import numpy as np",
            "import keras",
            "",
            "layer = keras.layers.BatchNormalization(",
            f"    axis=-1, momentum={_keras_momentum(case)!r}, epsilon={case.eps!r},",
            f"    center={case.affine}, scale={case.affine}, dtype={case.param_dtype!r})",
            f"layer.build({tuple(channels_last(case.steps[0].x, rank).shape)!r})",
        ]
        if case.gamma is not None and case.beta is not None:
            lines.append(f"layer.gamma.assign(np.array({case.gamma.tolist()!r}))")
            lines.append(f"layer.beta.assign(np.array({case.beta.tolist()!r}))")
        lines.append(f"layer.moving_mean.assign(np.array({case.running_mean.tolist()!r}))")
        lines.append(f"layer.moving_variance.assign(np.array({case.running_var.tolist()!r}))")
        if self.jit_compile:
            lines += [
                "import tensorflow as tf",
                "def call(x, training):",
                "    return tf.function(lambda x: layer(x, training=training), "
                "jit_compile=True)(x)",
            ]
        else:
            lines += ["def call(x, training):", "    return layer(x, training=training)"]
        lines.append("# arrays are channels-last: (N, *spatial, C)")
        for i, step in enumerate(case.steps):
            x = channels_last(step.x, rank)
            lines.append(
                f"x{i} = keras.ops.cast(np.array({x.tolist()!r}), {case.dtype!r})"
            )
            lines.append(f"layer.trainable = {not step.frozen}")
            lines.append(f"y{i} = call(x{i}, training={step.mode == 'train'})")
            lines.append(
                f"print('step {i}', keras.ops.convert_to_numpy(y{i}), "
                "keras.ops.convert_to_numpy(layer.moving_mean), "
                "keras.ops.convert_to_numpy(layer.moving_variance))"
            )
        return "\n".join(lines) + "\n"


def _keras_momentum(case: Case) -> float | None:
    return None if case.momentum is None else 1.0 - case.momentum


def _numpy(t: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float64")), dtype=np.float64)


def _env(backend: str, **extra: str) -> dict[str, str]:
    return {"KERAS_BACKEND": backend, **extra}  # threads: bnspec.worker.DEFAULT_ENV


KERAS_TF = KerasAdapter(
    name="keras_tf",
    framework="keras",
    profile="keras",
    description="keras.layers.BatchNormalization, TensorFlow backend, eager",
    capabilities=_capabilities(_COMMON_NOTES + "; gradients by tf.GradientTape"),
    worker_env=_env("tensorflow"),
    extra_frameworks=("tensorflow",),
    backend="tensorflow",
)

KERAS_TF_XLA = KerasAdapter(
    name="keras_tf_xla",
    framework="keras",
    profile="keras",
    description="keras.layers.BatchNormalization, TensorFlow backend, inside "
    "tf.function(jit_compile=True)",
    capabilities=_capabilities(
        _COMMON_NOTES + "; each call (with its tf.GradientTape) is compiled by XLA"
    ),
    worker_env=_env("tensorflow"),
    extra_frameworks=("tensorflow",),
    backend="tensorflow",
    jit_compile=True,
)

KERAS_JAX = KerasAdapter(
    name="keras_jax",
    framework="keras",
    profile="keras_jax",
    description="keras.layers.BatchNormalization, JAX backend, eager",
    capabilities=_capabilities(
        _COMMON_NOTES + "; JAX_ENABLE_X64=1 in the worker so float64 cases run in float64; "
        "gradients by jax.vjp of layer.stateless_call"
    ),
    worker_env=_env("jax", JAX_ENABLE_X64="1"),
    extra_frameworks=("jax",),
    backend="jax",
)

KERAS_TORCH = KerasAdapter(
    name="keras_torch",
    framework="keras",
    profile="keras_torch",
    description="keras.layers.BatchNormalization, PyTorch backend, eager",
    capabilities=_capabilities(_COMMON_NOTES + "; gradients by torch.autograd"),
    worker_env=_env("torch"),
    extra_frameworks=("torch",),
    backend="torch",
)

__all__ = ["KERAS_JAX", "KERAS_TF", "KERAS_TF_XLA", "KERAS_TORCH", "KerasAdapter"]
