"""Keras 3 (TensorFlow backend) and tf.keras (Keras 2) ``BatchNormalization`` under
``tf.distribute.MirroredStrategy``, one replica per logical CPU device.

The worker splits its one physical CPU into eight logical devices before TensorFlow initializes
(``tf.config.set_logical_device_configuration``); a case with R replicas runs on a strategy over
the first R (CPU-only devices: ``CollectiveAllReduce`` with RING collectives,
tensorflow/python/distribute/mirrored_strategy.py::_make_collective_ops_with_fallbacks). Each
step's shards go to their replicas through ``strategy.experimental_distribute_values_from_function``
(uneven, one-sample and empty shards as the case says), and one ``tf.function`` around
``strategy.run`` calls the layer on every replica, as a custom training loop does.

What is reported:
- y and dx: each replica's, concatenated in shard order. dx is the tape gradient of the replica's
  own loss ``sum(y * dy)`` with respect to its own shard; with ``synchronized=True`` the
  statistics' all-reduce carries an all-reduce in its gradient
  (distribute_lib.py::ReplicaContext.all_reduce), so that gradient is the global batch's.
- dgamma and dbeta: a replica's tape gradient is its own shard's share only. What an optimizer
  applies is their sum: the adapter hands each replica's gradient to ``SGD(learning_rate=1.0)``
  inside ``strategy.run`` (the optimizer all-reduces with ReduceOp.SUM in replica context), on
  scratch variables that start at zero, and reports minus what they hold after (exact: one
  subtraction from 0). ``strategy.reduce(SUM, ...)`` of the per-replica gradients is the same;
  ``meta['local_dgamma']``/``['local_dbeta']`` keep each replica's own (R, C) per step.
- the running statistics: every replica's copy of moving_mean/moving_variance, read after the
  step from the distributed variable's components (``replica_running_mean``/``_var``), and
  replica 0's as ``running_mean``/``running_var``; ``meta['model_running_mean']``/``_var`` is what
  a model-level read (``layer.moving_mean.numpy()`` outside ``strategy.run``) returns: replica
  0's copy for Keras 3 (a MirroredVariable reads its primary), the copies' mean for tf.keras
  (ON_READ, MEAN).

The masked variants pad every shard with zeros to the largest shard and pass
``mask`` (True on real samples), as a user feeding uneven shards of one static shape would; the
padded rows' outputs are dropped.

Empty shards, as observed: Keras 3 ``synchronized=True`` runs them (count 0 in the all-reduce,
the copy updated like the others); ``synchronized=False`` gives NaN moments on that replica: a NaN
copy and a NaN summed dgamma; tf.keras skips that replica's update (an ``inputs_size > 0``
guard), so under ``synchronized=True`` its copy parts from the others'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, StepResult, encode_array
from bnspec.errors import UnsupportedFeature
from bnspec.profiles import Profile
from bnspec.profiles import tf_data_parallel as profiles

MAX_REPLICAS = 8  # logical CPU devices made in setup
_STRATEGIES: dict[int, Any] = {}  # one MirroredStrategy per replica count, kept across cases


@dataclass
class MirroredAdapter(Adapter):
    """``api``: "keras" (Keras 3; KERAS_BACKEND=tensorflow) or "tf_keras" (Keras 2)."""

    api: str = "keras"
    synchronized: bool = False
    masked: bool = False
    capabilities: Capabilities = field(default_factory=lambda: _capabilities(""))

    def setup(self) -> None:
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        # before anything initializes the runtime: logical devices cannot be added after
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(MAX_REPLICAS)])
        if tf.config.list_physical_devices("GPU"):  # CUDA_VISIBLE_DEVICES="" hides any
            raise RuntimeError("the MirroredStrategy adapters run on logical CPU devices only")
        if self.api == "keras":
            import keras

            if keras.backend.backend() != "tensorflow":
                raise RuntimeError(f"{self.name!r} needs KERAS_BACKEND=tensorflow, the worker runs "
                                   f"{keras.backend.backend()!r}")
        else:
            import tf_keras  # noqa: F401

    # -- the one call --
    def run(self, case: Case) -> Result:
        import tensorflow as tf

        self.check_supported(case)
        shards = case.replicas
        if shards is None:
            raise UnsupportedFeature("no replicas: MirroredStrategy needs a case split across replicas")
        if len(shards) > MAX_REPLICAS:
            raise UnsupportedFeature(f"{len(shards)} replicas: the worker has {MAX_REPLICAS} logical CPU devices")
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature("param_dtype != dtype: the layer is built in the input's dtype")
        if case.momentum is None:  # also guarded by the capabilities
            raise UnsupportedFeature("momentum=None: Keras has no cumulative average")
        strategy = _strategy(len(shards))
        rank, pad = case.rank, max(shards)
        with strategy.scope():
            layer, weights, scratch, optimizer = self._build(case, 1.0 - case.momentum)
        functions: dict[tuple[bool, bool, bool], Any] = {}
        steps: list[StepResult] = []
        meta: dict[str, Any] = {"api": self.api, "synchronized": self.synchronized, "masked": self.masked,
                                "replicas": len(shards), "model_running_mean": [], "model_running_var": [],
                                "local_dgamma": [], "local_dbeta": []}
        devices = strategy.extended.worker_devices
        for step in case.steps:
            key = (step.mode == "train", step.frozen, step.grad_output is not None)
            if key not in functions:
                functions[key] = self._function(strategy, layer, weights, scratch, optimizer, *key)
            x = channels_last(step.x, rank)
            g = None if step.grad_output is None else channels_last(step.grad_output, rank)

            def shard(ctx: Any, x: np.ndarray = x, g: np.ndarray | None = g) -> tuple[Any, ...]:
                r = ctx.replica_id_in_sync_group
                lo, hi = case.shards[r]
                parts = [x[lo:hi]] + ([] if g is None else [g[lo:hi]])
                with tf.device(devices[r]):
                    if not self.masked:
                        return tuple(_tf(p, case.dtype) for p in parts)
                    padded = [np.concatenate([p, np.zeros((pad - len(p), *p.shape[1:]))]) for p in parts]
                    mask = np.arange(pad).reshape((pad,) + (1,) * (x.ndim - 2)) < hi - lo
                    mask = np.broadcast_to(mask, (pad, *x.shape[1:-1]))
                    return (*(_tf(p, case.dtype) for p in padded), tf.constant(mask))

            args = strategy.experimental_distribute_values_from_function(shard)
            layer.trainable = not step.frozen
            try:
                out = functions[key](*args)
            finally:
                layer.trainable = True
            steps.append(self._step_result(case, strategy, layer, out, scratch, meta))
            for s in scratch:  # the next step's optimizer update starts from zero again
                s.assign(tf.zeros_like(s))
        return Result(steps, meta)

    def _build(self, case: Case, momentum: float) -> tuple[Any, list[Any], list[Any], Any]:
        """The layer (built, its state set; ``momentum`` in Keras' convention) and, where affine,
        the optimizer and its scratch variables; under the strategy's scope."""
        import tensorflow as tf

        shape = channels_last(case.steps[0].x, case.rank).shape
        c = case.num_features
        kw: dict[str, Any] = dict(axis=-1, momentum=momentum, epsilon=case.eps, center=case.affine,
                                  scale=case.affine, moving_mean_initializer="zeros",
                                  moving_variance_initializer="ones", synchronized=self.synchronized,
                                  dtype=case.dtype)
        if self.api == "keras":
            import keras as api

            layer = api.layers.BatchNormalization(**kw)
        else:
            import tf_keras as api

            layer = api.layers.BatchNormalization(**kw, fused=False, renorm=False)
        layer.build((None, *shape[1:]))
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            layer.gamma.assign(_tf(case.gamma, case.dtype))
            layer.beta.assign(_tf(case.beta, case.dtype))
        layer.moving_mean.assign(_tf(case.running_mean, case.dtype))
        layer.moving_variance.assign(_tf(case.running_var, case.dtype))
        weights = [_var(w) for w in (layer.gamma, layer.beta) if w is not None]
        if not weights:
            return layer, [], [], None
        if self.api == "keras":
            scratch = [api.Variable(np.zeros(c), dtype=case.dtype, trainable=True, name=f"scratch_{i}")
                       for i in range(2)]
        else:
            scratch = [tf.Variable(np.zeros(c), dtype=case.dtype, name=f"scratch_{i}") for i in range(2)]
        optimizer = api.optimizers.SGD(learning_rate=1.0)
        optimizer.build(scratch)
        return layer, weights, scratch, optimizer

    def _function(self, strategy: Any, layer: Any, weights: list[Any], scratch: list[Any], optimizer: Any,
                  training: bool, frozen: bool, grads: bool) -> Any:
        """One tf.function around strategy.run for one kind of step (layer.trainable is read at
        trace time, so a frozen step has its own)."""
        import tensorflow as tf

        masked = self.masked

        def replica_step(x: Any, *rest: Any) -> tuple[Any, ...]:
            mask = rest[-1] if masked else None
            extra = {"mask": mask} if masked else {}
            if not grads:
                return (layer(x, training=training, **extra),)
            g = rest[0]
            with tf.GradientTape() as tape:
                tape.watch(x)
                tape.watch(weights)  # a frozen layer's weights are not watched by default
                y = layer(x, training=training, **extra)
                loss = tf.reduce_sum(y * tf.cast(g, y.dtype))
            dx, *dw = tape.gradient(loss, [x, *weights])
            if dw:
                optimizer.apply_gradients(zip(dw, scratch, strict=True))
            return (y, dx, *dw)

        @tf.function(reduce_retracing=False)
        def distributed(*args: Any) -> Any:
            return strategy.run(replica_step, args=args)

        return distributed

    def _step_result(self, case: Case, strategy: Any, layer: Any, out: tuple[Any, ...], scratch: list[Any],
                     meta: dict[str, Any]) -> StepResult:
        rank = case.rank
        local = [[_np(t) for t in strategy.experimental_local_results(o)] for o in out]
        sizes = case.replicas or ()
        y = np.concatenate([t[:n] for t, n in zip(local[0], sizes, strict=True)])
        copies_mean = np.stack([_np(v) for v in _components(layer.moving_mean)])
        copies_var = np.stack([_np(v) for v in _components(layer.moving_variance)])
        res = StepResult(y=channels_first(y, rank), running_mean=copies_mean[0], running_var=copies_var[0],
                         replica_running_mean=copies_mean, replica_running_var=copies_var,
                         y_dtype=strategy.experimental_local_results(out[0])[0].dtype.name,
                         running_dtype=_components(layer.moving_mean)[0].dtype.name)
        meta["model_running_mean"].append(encode_array(_np(layer.moving_mean)))
        meta["model_running_var"].append(encode_array(_np(layer.moving_variance)))
        if len(out) > 1:
            res.dx = channels_first(np.concatenate([t[:n] for t, n in zip(local[1], sizes, strict=True)]), rank)
        own: list[np.ndarray | None] = [None, None]  # per step, aligned with the steps
        if len(out) > 3:
            # what SGD(1.0) applied: 0 - lr * (the all-reduced sum); every copy holds the same
            applied = [np.stack([_np(v) for v in _components(s)]) for s in scratch]
            if any(not np.array_equal(a, a[:1].repeat(len(a), 0), equal_nan=True) for a in applied):
                raise RuntimeError("the optimizer's update differs between replicas")
            res.dgamma, res.dbeta = -applied[0][0], -applied[1][0]
            own = [np.stack(local[2]), np.stack(local[3])]
        meta["local_dgamma"].append(encode_array(own[0]))
        meta["local_dbeta"].append(encode_array(own[1]))
        return res

    def snippet(self, case: Case) -> str:
        api = "keras" if self.api == "keras" else "tf_keras"
        lines = [
            "import numpy as np",
            "import tensorflow as tf",
            "cpu = tf.config.list_physical_devices('CPU')[0]",
            f"tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * "
            f"{MAX_REPLICAS})",
            f"import {api}  # Keras 3: KERAS_BACKEND=tensorflow" if api == "keras" else f"import {api}",
            "devices = [d.name for d in tf.config.list_logical_devices('CPU')]",
            f"strategy = tf.distribute.MirroredStrategy(devices[:{len(case.replicas or ())}])",
            "with strategy.scope():",
            f"    layer = {api}.layers.BatchNormalization(momentum={1.0 - float(case.momentum or 0)!r}, "
            f"epsilon={case.eps!r}, center={case.affine}, scale={case.affine}, synchronized={self.synchronized}, "
            f"dtype={case.dtype!r})",
            f"    layer.build({(None, *channels_last(case.steps[0].x, case.rank).shape[1:])!r})",
            *(f"    layer.{name}.assign(np.array({getattr(case, attr).tolist()!r}))"
              for name, attr in (("gamma", "gamma"), ("beta", "beta"), ("moving_mean", "running_mean"),
                                 ("moving_variance", "running_var")) if getattr(case, attr) is not None),
            f"shards = {list(case.shards)!r}  # (start, stop) of each replica's samples, channels-last",
            "def call(xs, training):",
            "    per = strategy.experimental_distribute_values_from_function(",
            "        lambda ctx: tf.constant(xs[slice(*shards[ctx.replica_id_in_sync_group])]))",
            "    return strategy.run(lambda x: layer(x, training=training), args=(per,))",
        ]
        return "\n".join(lines) + "\n"


def _strategy(replicas: int) -> Any:
    import tensorflow as tf

    if replicas not in _STRATEGIES:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
        # Every MirroredStrategy numbers its collective groups from 1 + _collective_key_base: a
        # second strategy of another size in one process would join group 1 with the wrong size
        # ("is joining a group with size3, but that group has size 2"). TensorFlow's own tests
        # move the base per strategy (distribute/strategy_combinations.py::
        # _mirrored_strategy_with_collective_key_base); the default cross-device ops stay.
        tf.distribute.MirroredStrategy._collective_key_base += 100000
        _STRATEGIES[replicas] = tf.distribute.MirroredStrategy(devices)
    return _STRATEGIES[replicas]


def _var(v: Any) -> Any:
    """The tf.Variable behind a Keras 3 variable (tf.keras layers hold tf.Variables)."""
    import tensorflow as tf

    return v if isinstance(v, tf.Variable) else v.value


def _components(v: Any) -> tuple[Any, ...]:
    """Every replica's copy of a distributed variable, in replica order."""
    return tuple(_var(v).values)


def _tf(a: np.ndarray, dtype: str) -> Any:
    import tensorflow as tf

    return tf.constant(np.asarray(a, dtype=np.float64), dtype=dtype)  # values are exact in dtype


def _np(t: Any) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(tf.cast(tf.convert_to_tensor(t), tf.float64).numpy(), dtype=np.float64)


def _capabilities(notes: str) -> Capabilities:
    return Capabilities(
        dtypes=("float64", "float32"), gradients=True, cumulative_momentum=False, frozen=True,
        affine_off=True, untracked=False, initial_running=True, counter=False, replicas=True,
        notes="one replica per logical CPU device (at most 8); momentum passed as 1 - case.momentum; "
        "the layer's dtype is the input's (param_dtype must equal it); dgamma/dbeta are what SGD "
        "applies (the replicas' sum); a case without replicas is not applicable" + notes)


_MASK_NOTE = "; shards zero-padded to the largest and passed with mask (True on real samples)"
_ENV = {"KERAS_BACKEND": "tensorflow"}  # threads and CUDA_VISIBLE_DEVICES: bnspec.worker.DEFAULT_ENV


def _adapter(name: str, profile: Profile, api: str, synchronized: bool, masked: bool = False) -> MirroredAdapter:
    what = "keras.layers" if api == "keras" else "tf_keras.layers"
    return MirroredAdapter(
        name=name, framework="keras" if api == "keras" else "tf_keras", profile=profile.name,
        description=f"{what}.BatchNormalization(synchronized={synchronized}) under MirroredStrategy on "
        f"logical CPUs{' with a mask on padded shards' if masked else ''}",
        capabilities=_capabilities(_MASK_NOTE if masked else ""), worker_env=dict(_ENV),
        extra_frameworks=("tensorflow",), api=api, synchronized=synchronized, masked=masked)


KERAS_TF_MIRRORED_SYNC = _adapter("keras_tf_mirrored_sync", profiles.KERAS_SYNC, "keras", True)
KERAS_TF_MIRRORED = _adapter("keras_tf_mirrored", profiles.KERAS_MIRRORED, "keras", False)
# declares what synchronized=True promises; with a mask Keras 3 does not synchronize (a finding:
# profiles.tf_data_parallel.KERAS_SYNC_MASKED says what it does)
KERAS_TF_MIRRORED_SYNC_MASKED = _adapter("keras_tf_mirrored_sync_masked", profiles.KERAS_SYNC, "keras", True,
                                         masked=True)
TF_KERAS_MIRRORED_SYNC = _adapter("tf_keras_mirrored_sync", profiles.TF_KERAS_SYNC, "tf_keras", True)
TF_KERAS_MIRRORED = _adapter("tf_keras_mirrored", profiles.TF_KERAS_MIRRORED, "tf_keras", False)
TF_KERAS_MIRRORED_MASKED = _adapter("tf_keras_mirrored_masked", profiles.TF_KERAS_MIRRORED, "tf_keras", False,
                                    masked=True)
TF_KERAS_MIRRORED_SYNC_MASKED = _adapter("tf_keras_mirrored_sync_masked", profiles.TF_KERAS_SYNC_MASKED,
                                         "tf_keras", True, masked=True)

__all__ = ["KERAS_TF_MIRRORED", "KERAS_TF_MIRRORED_SYNC", "KERAS_TF_MIRRORED_SYNC_MASKED", "MAX_REPLICAS",
           "TF_KERAS_MIRRORED", "TF_KERAS_MIRRORED_MASKED", "TF_KERAS_MIRRORED_SYNC", "TF_KERAS_MIRRORED_SYNC_MASKED",
           "MirroredAdapter"]
