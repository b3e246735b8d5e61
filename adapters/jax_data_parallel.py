"""JAX data-parallel BatchNorm: one JAX device per replica, on forced CPU host devices.

Each replica of a case (``Case.replicas``) is a device of ``jax.devices()[:R]``; the worker
starts with ``--xla_force_host_platform_device_count=8``. Every device runs the framework's own
layer with its cross-replica axis named (flax ``axis_name``, haiku ``cross_replica_axis``,
equinox ``axis_name``) under ``jax.pmap`` (flax.linen also under ``jax.shard_map``), holds its own
copy of the running statistics and returns y, dx and its new state: y and dx are the shards' real
rows in shard order, ``replica_running_*`` every device's copy after the step, dgamma/dbeta
device 0's.

The loss: on each device ``L_d = sum(y_d * dy_d)`` over its own shard, differentiated by
``jax.grad`` inside the mapped function, with no collective on the gradients: what a user's
per-device loss gives before any ``lax.psum``/``pmean`` of them. dx is what JAX's transpose of the
layer's ``pmean`` makes of it (the global batch's); dgamma/dbeta what the mapping leaves on device
0: under shard_map (replicated parameters, check_vma on) the replicas' sum, under pmap only device
0's own shard's share (``replica_param_grad`` local; profiles/jax_data_parallel.py).

Uneven shards: the maps need equal shapes, so every shard is padded with zero rows to the largest;
flax's ``mask`` (False on the padding) keeps them out of the statistics, dy is 0 there so they add
nothing to the loss, and their rows are dropped from the results. An empty replica is an all-False
mask: flax then averages 0/0 and the pmean makes every device NaN (run as it is: a divergence).
haiku and equinox have no mask: uneven or empty shards are not applicable there.

``equinox.nn.BatchNorm(mode="ema")`` raises under pmap and shard_map alike (JAX 0.10.2):
``BatchNorm.__call__`` stores ``jnp.array(False)`` as its first-time flag and
``equinox/nn/_stateful.py::State.set`` compares ``jax.eval_shape`` structures, where the old flag
carries the map's manual mesh and the fresh constant none. EQUINOX_EMA_PMAP shows it;
EQUINOX_EMA_VMAP runs the replicas as a named ``jax.vmap`` axis on one device instead.

Entry points (flax_linen_pmap, ...), run on the replicas_* properties. The framework code is in
jax_data_parallel_flax.py and jax_data_parallel_haiku_equinox.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import name_of
from bnspec.errors import UnsupportedFeature
from bnspec.profiles.jax_data_parallel import (
    EQUINOX_BATCH_AXIS,
    EQUINOX_EMA_AXIS,
    FLAX_LINEN_AXIS,
    FLAX_LINEN_AXIS_SHARD_MAP,
    FLAX_LINEN_TWO_PASS_AXIS,
    FLAX_NNX_AXIS,
    FLAX_NNX_AXIS_SHARD_MAP,
    HAIKU_CROSS_REPLICA,
)
from bnspec.worker import DEFAULT_ENV

AXIS = "replicas"  # the mapped axis the layers' statistics are averaged over
DEVICES = 8
# DEFAULT_ENV's XLA flags kept (the worker env replaces the variable, it does not append)
_ENV = {"JAX_ENABLE_X64": "1",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} {DEFAULT_ENV['XLA_FLAGS']}"}

LayerKind = Literal["flax_linen", "flax_linen_two_pass", "flax_nnx", "haiku", "equinox_ema", "equinox_batch"]
Mapping = Literal["pmap", "shard_map", "vmap"]


@dataclass
class Layer:
    """One replica's layer as pure functions of arrays, for the driver to map over devices."""

    params: Any  # pytree of the affine parameters (replicated); {} without them
    state: Any  # one replica's state pytree: every device starts from a copy
    # (params, state, x, mask or None, train) -> (y, new state), on one device's padded shard
    forward: Callable[[Any, Any, Any, Any, bool], tuple[Any, Any]]
    read: Callable[[Any], tuple[Any, Any]]  # one replica's state -> the running (mean, var)
    affine_grads: Callable[[Any], tuple[Any, Any]]  # one device's dparams -> (dgamma, dbeta)
    channels_last: bool  # the layer normalizes the last axis (flax): x moved there


_PARAM_GRADS = {"shard_map": "dgamma/dbeta: the replicas' sum (shard_map's psum of replicated parameters)",
                "pmap": "dgamma/dbeta: device 0's own shard's share (pmap all-reduces no gradient)",
                "vmap": "dgamma/dbeta: replica 0's own shard's share (vmap all-reduces no gradient)"}


def _caps(mapping: Mapping, maskable: bool, counter: bool) -> Capabilities:
    where = ("all replicas on one device, a named vmap axis" if mapping == "vmap" else
             f"one forced CPU host device per replica (at most {DEVICES})")
    shards = ("uneven and empty shards padded to the largest, flax's mask on the real rows" if maskable else
              "equal shards only (no mask: the map needs equal shapes, padding would enter the statistics)")
    return Capabilities(
        ranks=(2, 3, 4, 5), dtypes=("float64", "float32"), gradients=True, cumulative_momentum=False,
        frozen=False, affine_off=True, untracked=False, initial_running=True, counter=counter, replicas=True,
        notes=f"{where}; {shards}; JAX_ENABLE_X64=1; {_PARAM_GRADS[mapping]}")


@dataclass
class JaxDataParallelAdapter(Adapter):
    layer: LayerKind = "flax_linen"
    mapping: Mapping = "pmap"
    maskable: bool = True  # the layer takes a mask: uneven and empty shards are padded
    capabilities: Capabilities = field(default_factory=lambda: _caps("pmap", True, False))
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_ENV))

    def setup(self) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)  # read at import; set again for an imported jax
        if len(jax.devices()) < DEVICES:
            raise ImportError(f"{len(jax.devices())} JAX device(s), not {DEVICES}: XLA_FLAGS "
                              f"{_ENV['XLA_FLAGS']!r} was not honoured (jax imported before the worker env?)")
        self._build: Callable[[Case], Layer] = _builder(self.layer)

    def check_supported(self, case: Case) -> None:
        super().check_supported(case)
        reps = case.replicas
        if reps is None:
            raise UnsupportedFeature("no replicas: a data-parallel adapter needs a case split into shards")
        if len(reps) > DEVICES:
            raise UnsupportedFeature(f"{len(reps)} replicas, more than the {DEVICES} host devices")
        if not self.maskable and len(set(reps)) > 1:
            raise UnsupportedFeature(f"uneven shards {reps}: the layer has no mask, and jax.{self.mapping} "
                                     "needs equal shard shapes (padding would enter its statistics)")
        if not max(reps):
            raise UnsupportedFeature("every shard empty: no batch to normalize")
        if self.layer.startswith(("haiku", "equinox")) and case.param_dtype != case.dtype:
            raise UnsupportedFeature("param_dtype != dtype: the layer's parameters and state are built "
                                     "in the input's dtype here")

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        import jax
        import jax.numpy as jnp

        assert case.replicas is not None
        layer = self._build(case)
        count, rows = len(case.replicas), max(case.replicas)
        masked = len(set(case.replicas)) > 1
        dt = jnp.dtype(case.dtype)
        stack = lambda tree: jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * count), tree)  # noqa: E731
        state = stack(layer.state)
        if self.mapping == "pmap":  # laid out as pmap leaves its outputs, or the next step compiles again
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(jax.devices()[:count]), (AXIS,))
            state = jax.device_put(state, NamedSharding(mesh, PartitionSpec(AXIS)))
        mask = np.zeros((count, rows), bool)
        for r, k in enumerate(case.replicas):
            mask[r, :k] = True
        mapped: dict[tuple[bool, bool], Callable[..., Any]] = {}
        out: list[StepResult] = []
        for step in case.steps:
            train, dy = step.mode == "train", step.grad_output
            if (train, dy is not None) not in mapped:
                mapped[train, dy is not None] = self._mapped(layer, count, train, dy is not None, masked)
            x = self._padded(step.x, case, rows, layer)
            g = self._padded(np.zeros_like(step.x) if dy is None else dy, case, rows, layer)  # 0 on the padding
            mask_b = jnp.asarray(mask.reshape(mask.shape + (1,) * (x.ndim - 2)))
            y, state, dparams, dx = mapped[train, dy is not None](layer.params, state, jnp.asarray(x, dt),
                                                                  jnp.asarray(g, dt), mask_b)
            # each device's copy through the host: JAX will not index the rows of a shard_map
            # output (a sharded global array); jnp again so that the reading keeps JAX's promotion
            host = jax.tree.map(np.asarray, state)
            reads = [layer.read(jax.tree.map(lambda a, r=r: jnp.asarray(a[r]), host)) for r in range(count)]
            means = np.stack([np.asarray(m, np.float64) for m, _ in reads])
            variances = np.stack([np.asarray(v, np.float64) for _, v in reads])
            res = StepResult(y=self._real_rows(y, case, layer), y_dtype=name_of(y.dtype),
                             running_mean=means[0], running_var=variances[0], replica_running_mean=means,
                             replica_running_var=variances, running_dtype=name_of(jnp.asarray(reads[0][1]).dtype))
            if dy is not None:
                res.dx = self._real_rows(dx, case, layer)
                if case.affine:
                    dgamma, dbeta = layer.affine_grads(jax.tree.map(lambda a: np.asarray(a)[0], dparams))
                    res.dgamma, res.dbeta = (np.asarray(a, np.float64).reshape(-1) for a in (dgamma, dbeta))
            out.append(res)
        return Result(out, {"jax_enable_x64": bool(jax.config.read("jax_enable_x64")), "jax_version": jax.__version__,
                            "mapping": self.mapping, "devices": count, "padded_to": rows if masked else None})

    def _mapped(self, layer: Layer, count: int, train: bool, grads: bool, masked: bool) -> Callable[..., Any]:
        """(params, stacked state, x, dy, mask) -> stacked (y, state, dparams, dx) over ``count``
        devices: the layer's forward and the gradient of each device's own loss."""
        import jax
        import jax.numpy as jnp

        def local(params: Any, state: Any, x: Any, g: Any, mask: Any) -> Any:
            mask = mask if masked else None

            def loss(params: Any, x: Any) -> Any:
                y, new_state = layer.forward(params, state, x, mask, train)
                return jnp.sum(y * g), (y, new_state)

            if not grads:
                y, new_state = layer.forward(params, state, x, mask, train)
                return y, new_state, None, None
            (dparams, dx), (y, new_state) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
            return y, new_state, dparams, dx

        if self.mapping == "vmap":  # the replicas as a named vmap axis on one device
            return jax.jit(jax.vmap(local, axis_name=AXIS, in_axes=(None, 0, 0, 0, 0)))
        devices = jax.devices()[:count]
        if self.mapping == "pmap":
            return jax.pmap(local, axis_name=AXIS, in_axes=(None, 0, 0, 0, 0), devices=devices)
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        mesh = jax.make_mesh((count,), (AXIS,), devices=devices)
        one = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731  (each device's block of 1)
        lead = lambda tree: jax.tree.map(lambda a: a[None], tree)  # noqa: E731

        def body(params: Any, state: Any, x: Any, g: Any, mask: Any) -> Any:
            return lead(local(params, one(state), one(x), one(g), one(mask)))

        # check_vma left at its default (True): what shard_map's users run
        fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
                                   out_specs=P(AXIS)))

        def call(params: Any, state: Any, *arrays: Any) -> Any:
            put = lambda tree, spec: jax.device_put(tree, NamedSharding(mesh, spec))  # noqa: E731
            return fn(put(params, P()), put(state, P(AXIS)), *(put(a, P(AXIS)) for a in arrays))

        return call

    @staticmethod
    def _padded(a: np.ndarray, case: Case, rows: int, layer: Layer) -> np.ndarray:
        """(N, C, *spatial) -> (R, rows, ...) in the layer's layout, each shard zero-padded to ``rows``."""
        a = channels_last(np.asarray(a), a.ndim) if layer.channels_last else np.asarray(a)
        out = np.zeros((len(case.shards), rows, *a.shape[1:]), a.dtype)
        for r, (lo, hi) in enumerate(case.shards):
            out[r, :hi - lo] = a[lo:hi]
        return out

    @staticmethod
    def _real_rows(a: Any, case: Case, layer: Layer) -> np.ndarray:
        assert case.replicas is not None
        arr = np.asarray(a).astype(np.float64)
        whole = np.concatenate([arr[r, :k] for r, k in enumerate(case.replicas)])
        return channels_first(whole, whole.ndim) if layer.channels_last else whole


def _builder(kind: LayerKind) -> Callable[[Case], Layer]:
    from functools import partial

    if kind.startswith("flax"):
        from bnspec.adapters import jax_data_parallel_flax as flax_layers

        if kind == "flax_nnx":
            return partial(flax_layers.nnx_layer, axis=AXIS)
        return partial(flax_layers.linen_layer, axis=AXIS, two_pass=kind == "flax_linen_two_pass")
    from bnspec.adapters import jax_data_parallel_haiku_equinox as hk_eqx

    if kind == "haiku":
        return partial(hk_eqx.haiku_layer, axis=AXIS)
    return partial(hk_eqx.equinox_layer, axis=AXIS, mode="ema" if kind == "equinox_ema" else "batch")


def _adapter(name: str, framework: str, profile: Any, layer: LayerKind, mapping: Mapping, what: str,
             maskable: bool = False, counter: bool = True) -> JaxDataParallelAdapter:
    where = "the replicas a named vmap axis" if mapping == "vmap" else "one CPU host device per replica"
    return JaxDataParallelAdapter(name=name, framework=framework, profile=profile.name, layer=layer, mapping=mapping,
                                  maskable=maskable, description=f"{what} under jax.{mapping}, {where}",
                                  capabilities=_caps(mapping, maskable, counter), extra_frameworks=("jax",))


_LINEN = f"flax.linen.BatchNorm(axis_name={AXIS!r}, mask=...)"
_EQX = f"equinox.nn.BatchNorm(axis_name=({AXIS!r}, 'batch'), mode={{!r}}) in jax.vmap"
FLAX_LINEN_PMAP = _adapter("flax_linen_pmap", "flax", FLAX_LINEN_AXIS, "flax_linen", "pmap", _LINEN,
                           maskable=True, counter=False)
FLAX_LINEN_SHARD_MAP = _adapter("flax_linen_shard_map", "flax", FLAX_LINEN_AXIS_SHARD_MAP, "flax_linen",
                                "shard_map", _LINEN, maskable=True, counter=False)
FLAX_LINEN_TWO_PASS_PMAP = _adapter(
    "flax_linen_two_pass_pmap", "flax", FLAX_LINEN_TWO_PASS_AXIS, "flax_linen_two_pass", "pmap",
    f"flax.linen.BatchNorm(axis_name={AXIS!r}, use_fast_variance=False, mask=...)", maskable=True, counter=False)
FLAX_NNX_PMAP = _adapter("flax_nnx_pmap", "flax", FLAX_NNX_AXIS, "flax_nnx", "pmap",
                         f"flax.nnx.BatchNorm(axis_name={AXIS!r}, mask=...) through nnx.split/merge",
                         maskable=True, counter=False)
FLAX_NNX_SHARD_MAP = _adapter("flax_nnx_shard_map", "flax", FLAX_NNX_AXIS_SHARD_MAP, "flax_nnx", "shard_map",
                              f"flax.nnx.BatchNorm(axis_name={AXIS!r}, mask=...) through nnx.split/merge",
                              maskable=True, counter=False)
HAIKU_PMAP = _adapter("haiku_pmap", "dm-haiku", HAIKU_CROSS_REPLICA, "haiku", "pmap",
                      f"haiku.BatchNorm(cross_replica_axis={AXIS!r})")
# raises in equinox on every case (State.set; see the module docstring): kept to pin that
EQUINOX_EMA_PMAP = _adapter("equinox_ema_pmap", "equinox", EQUINOX_EMA_AXIS, "equinox_ema", "pmap",
                            _EQX.format("ema"))
EQUINOX_EMA_VMAP = _adapter("equinox_ema_vmap", "equinox", EQUINOX_EMA_AXIS, "equinox_ema", "vmap",
                            _EQX.format("ema"))
EQUINOX_BATCH_PMAP = _adapter("equinox_batch_pmap", "equinox", EQUINOX_BATCH_AXIS, "equinox_batch", "pmap",
                              _EQX.format("batch"))
