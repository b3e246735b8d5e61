"""The source side of the Flax paths: the ``flax.nnx.BatchNorm`` built from a Case, and snapshots
of a pytree (parameters, running statistics) to check that a conversion leaves the source untouched
and to count its trainable parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnspec.case import Case


def nnx_source(case: Case, *, use_running_average: bool) -> Any:
    """The source layer: flax.nnx.BatchNorm with the case's hyperparameters, parameters and
    running statistics (float32, the dtype nnx creates them in)."""
    import jax.numpy as jnp
    from flax import nnx

    assert case.momentum is not None
    model = nnx.BatchNorm(case.num_features, use_running_average=use_running_average, axis=-1,
                          momentum=1.0 - case.momentum, epsilon=case.eps, param_dtype=jnp.float32,
                          use_bias=case.affine, use_scale=case.affine, rngs=nnx.Rngs(0))
    model.mean[...] = jnp.asarray(case.running_mean, jnp.float32)
    model.var[...] = jnp.asarray(case.running_var, jnp.float32)
    if case.affine:
        assert model.scale is not None and model.bias is not None  # use_scale, use_bias
        model.scale[...] = jnp.asarray(case.gamma, jnp.float32)
        model.bias[...] = jnp.asarray(case.beta, jnp.float32)
    return model


def sizes(tree: Any) -> dict[str, int]:
    """Element counts of a pytree's leaves, by path."""
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(k): int(np.size(v)) for k, v in leaves}


def arrays(tree: Any) -> dict[str, np.ndarray]:
    """A copy of a pytree's leaves, by path."""
    import jax

    return {jax.tree_util.keystr(k): np.array(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def changes(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    """Paths whose values (bit for bit) or dtypes differ between two :func:`arrays` snapshots."""
    return sorted(k for k in set(before) | set(after)
                  if k not in before or k not in after
                  or before[k].tobytes() != after[k].tobytes() or before[k].dtype != after[k].dtype)
