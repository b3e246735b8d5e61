"""haiku.BatchNorm and equinox.nn.BatchNorm as one device's pure functions, for
:mod:`bnspec.adapters.jax_data_parallel` to map over devices (imported in its worker only).

haiku: ``hk.BatchNorm(cross_replica_axis=axis, data_format="channels_first")`` under
``hk.transform_with_state``, its EMA state loaded as adapters/haiku.py loads it (hidden and
average from the case, the counter from ``Case.counter``). equinox: the single-device adapter's
layer and state (adapters/equinox.py ``EquinoxAdapter._build``) with ``axis_name=(axis,
"batch")``: equinox's own ``jax.vmap(..., axis_name="batch")`` over the samples of a device, and
the device axis, so its ``lax.pmean`` averages over both. Neither layer has a mask.
"""

from __future__ import annotations

from typing import Any

from bnspec.adapters.equinox import EQUINOX_BATCH, EQUINOX_EMA
from bnspec.adapters.haiku import _NAME
from bnspec.adapters.jax_data_parallel import Layer
from bnspec.case import Case

_SAMPLES = "batch"  # equinox's vmap axis over one device's samples


def haiku_layer(case: Case, *, axis: str) -> Layer:
    import haiku as hk
    import jax.numpy as jnp

    assert case.momentum is not None  # check_supported: no cumulative momentum
    decay = 1.0 - case.momentum
    dt = jnp.dtype(case.dtype)
    shape = [1] * case.rank
    shape[1] = case.num_features

    def apply(x: Any, is_training: bool) -> Any:
        bn = hk.BatchNorm(create_scale=case.affine, create_offset=case.affine, decay_rate=decay,
                          eps=case.eps, cross_replica_axis=axis, data_format="channels_first", name=_NAME)
        return bn(x, is_training=is_training, test_local_stats=False)

    transformed = hk.transform_with_state(apply)
    # as adapters/haiku.py: with a counter k > 0 the case's statistics are the hidden state and
    # the average its debiased reading
    debias = 1.0 - decay**case.counter if case.counter else 1.0

    def ema(v: Any) -> dict[str, Any]:
        return {"hidden": jnp.asarray(v, dt).reshape(shape), "average": jnp.asarray(v / debias, dt).reshape(shape),
                "counter": jnp.asarray(case.counter, jnp.int32)}

    state = {f"{_NAME}/~/mean_ema": ema(case.running_mean), f"{_NAME}/~/var_ema": ema(case.running_var)}
    params = {_NAME: {"scale": jnp.asarray(case.gamma, dt).reshape(shape),
                      "offset": jnp.asarray(case.beta, dt).reshape(shape)}} if case.affine else {}

    def forward(params: Any, state: Any, x: Any, mask: Any, train: bool) -> tuple[Any, Any]:
        return transformed.apply(params, state, None, x, train)

    def read(state: Any) -> tuple[Any, Any]:  # eval reads the debiased averages
        return (state[f"{_NAME}/~/mean_ema"]["average"].reshape(-1),
                state[f"{_NAME}/~/var_ema"]["average"].reshape(-1))

    return Layer(params=params, state=state, forward=forward, read=read,
                 affine_grads=lambda d: (d[_NAME]["scale"], d[_NAME]["offset"]), channels_last=False)


def equinox_layer(case: Case, *, axis: str, mode: str) -> Layer:
    import equinox as eqx
    import jax

    base = EQUINOX_EMA if mode == "ema" else EQUINOX_BATCH
    if not hasattr(base, "_eqx"):
        base.setup()
    bn, state = base._build(case)
    bn = eqx.tree_at(lambda m: m.axis_name, bn, (axis, _SAMPLES))
    params = (bn.weight, bn.bias) if case.affine else {}

    def forward(params: Any, state: Any, x: Any, mask: Any, train: bool) -> tuple[Any, Any]:
        m = eqx.tree_at(lambda m: (m.weight, m.bias), bn, params) if case.affine else bn

        def call(xi: Any, st: Any) -> Any:
            return m(xi, st, inference=not train)

        return jax.vmap(call, axis_name=_SAMPLES, in_axes=(0, None), out_axes=(0, None))(x, state)

    return Layer(params=params, state=state, forward=forward, read=lambda s: base._running(bn, s),
                 affine_grads=lambda d: d, channels_last=False)
