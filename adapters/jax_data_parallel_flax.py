"""flax.linen and flax.nnx BatchNorm as one device's pure functions, for
:mod:`bnspec.adapters.jax_data_parallel` to map over devices (imported in its worker only).

The layers are the single-device adapters' own (adapters/flax.py), with ``axis_name`` set:
linen's module is ``FlaxLinenAdapter._module(case).clone(axis_name=axis)``; nnx's is built with
the same arguments and run through ``nnx.split``/``nnx.merge``, the functional form nnx documents
for JAX transforms. Both take flax's ``mask`` (True on a shard's real rows, broadcast over the
spatial and channel axes) where the shards are uneven.
"""

from __future__ import annotations

from typing import Any

from bnspec.adapters.flax import FLAX_LINEN, FLAX_LINEN_TWO_PASS, _flax_momentum, _jnp_dtype
from bnspec.adapters.jax_data_parallel import Layer
from bnspec.case import Case


def linen_layer(case: Case, *, axis: str, two_pass: bool) -> Layer:
    import jax.numpy as jnp

    base = FLAX_LINEN_TWO_PASS if two_pass else FLAX_LINEN
    bn = base._module(case).clone(axis_name=axis)
    pdt = _jnp_dtype(case.param_dtype)
    params = {"scale": jnp.asarray(case.gamma, pdt), "bias": jnp.asarray(case.beta, pdt)} if case.affine else {}
    # as adapters/flax.py: batch_stats start in float32, the dtype flax creates them in
    state = {"mean": jnp.asarray(case.running_mean, jnp.float32), "var": jnp.asarray(case.running_var, jnp.float32)}

    def forward(params: Any, stats: Any, x: Any, mask: Any, train: bool) -> tuple[Any, Any]:
        variables = {"batch_stats": stats, **({"params": params} if params else {})}
        y, updates = bn.apply(variables, x, use_running_average=not train, mask=mask, mutable=["batch_stats"])
        return y, updates["batch_stats"]

    return Layer(params=params, state=state, forward=forward, read=lambda s: (s["mean"], s["var"]),
                 affine_grads=lambda d: (d["scale"], d["bias"]), channels_last=True)


def nnx_layer(case: Case, *, axis: str) -> Layer:
    import jax.numpy as jnp
    from flax import nnx

    pdt = _jnp_dtype(case.param_dtype)
    model = nnx.BatchNorm(
        case.num_features, use_running_average=False, axis=-1, momentum=_flax_momentum(case),
        epsilon=case.eps, dtype=None, param_dtype=pdt, use_bias=case.affine, use_scale=case.affine,
        axis_name=axis, use_fast_variance=True, rngs=nnx.Rngs(0))
    model.mean[...] = jnp.asarray(case.running_mean, jnp.float32)
    model.var[...] = jnp.asarray(case.running_var, jnp.float32)
    if case.affine:
        assert model.scale is not None and model.bias is not None
        model.scale[...] = jnp.asarray(case.gamma, pdt)
        model.bias[...] = jnp.asarray(case.beta, pdt)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # type: ignore[misc]  # overloads

    def forward(params: Any, stats: Any, x: Any, mask: Any, train: bool) -> tuple[Any, Any]:
        m = nnx.merge(graphdef, params, stats, copy=True)  # Variables of this trace: mutable in it
        y = m(x, use_running_average=not train, mask=mask)
        return y, nnx.state(m, nnx.BatchStat)

    return Layer(params=params, state=stats, forward=forward, read=lambda s: (_value(s["mean"]), _value(s["var"])),
                 affine_grads=lambda d: (_value(d["scale"]), _value(d["bias"])), channels_last=True)


def _value(v: Any) -> Any:
    return v[...] if hasattr(v, "get_value") or hasattr(v, "value") else v
