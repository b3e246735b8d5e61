"""JAX data-parallel profiles: flax, haiku and equinox BatchNorm with a cross-replica axis, one JAX
device per replica (adapters/jax_data_parallel.py). Each is the framework's single-device profile
with the replica knobs it decides, cited from site-packages (flax 0.12.8, dm-haiku 0.0.17,
equinox 0.13.8, jax 0.10.2) and confirmed by tests/test_adapter_jax_data_parallel.py.

What every one of them shares, decided by JAX rather than the layer:
- ``replica_grad = "global"``: the layers' statistics are ``lax.pmean``s, and JAX transposes a
  psum into a psum (``jax/_src/lax/parallel.py::_psum_transpose_rule``: "We treat psum as psum +
  pbroadcast, which is why the transpose reduces over the named axes again"; under shard_map's
  check_vma the invariant mean's implicit ``pvary`` transposes to ``psum_invariant``,
  ``_pvary_transpose_rule``): the dx of one device's own loss already is the gradient of the sum
  of every device's loss.
- ``replica_param_grad``: nothing is all-reduced unless the mapping does it.
  ``jax.shard_map`` (check_vma=True, its default) with the parameters replicated (``P()``):
  the parameters are invariant, their implicit ``pvary`` transposes to a psum
  (``_pvary_transpose_rule``): device 0's dgamma is the *sum* over the replicas.
  ``jax.pmap`` is ``shard_map(..., check_vma=False)`` (``jax/_src/pmap.py::_cached_shard_map``):
  no pvary, nothing summed, and each device keeps *its own shard's* share of dgamma and dbeta:
  ``local``. The profiles say "local" (pmap, and a vmap of the replicas, run them so);
  flax_linen_axis_shard_map is flax.linen's under jax.shard_map, "sum".
- ``replica_running = "synchronized"``: every device blends the same combined statistics into
  its own copy, so the copies stay equal (no broadcast needed).
- ``replica_count``: no profile here applies n/(n-1), so its value changes nothing (left global).
"""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.profiles.equinox import EQUINOX_BATCH, EQUINOX_EMA
from bnspec.profiles.flax import FLAX_LINEN, FLAX_LINEN_TWO_PASS, FLAX_NNX
from bnspec.profiles.haiku import HAIKU

_LINEN = "flax/linen/normalization.py"
_NNX = "flax/nnx/nn/normalization.py"
_HK = "haiku/_src/batch_norm.py"
_EQX = "equinox/nn/_batch_norm.py::BatchNorm.__call__"
_PARALLEL = "jax/_src/lax/parallel.py"
_TEST = "tests/test_adapter_jax_data_parallel.py"

_JAX_CITE = {
    "replica_grad": f"{_PARALLEL}::_psum_transpose_rule (pmean = psum / n; 'We treat psum as psum + "
    "pbroadcast, which is why the transpose reduces over the named axes again'; shard_map with "
    "check_vma: _pvary_transpose_rule -> psum_invariant): each device's dx of its own loss is the "
    "global batch's",
    "replica_param_grad": "jax/_src/pmap.py::_cached_shard_map (jax.pmap is shard_map with "
    "check_vma=False: no pvary of the parameters, no psum in the transpose: each device keeps its own "
    "shard's dgamma/dbeta, as under a jax.vmap of the replicas with the parameters unbatched)",
    "replica_count": "no n/(n-1) anywhere (normalize_var and running_var_update are biased): unobservable",
}


def _flax_cite(src: str) -> dict[str, str]:
    return {
        **_JAX_CITE,
        "replica_stats": f"{src}::_compute_stats.maybe_distributed_mean (x.mean(axes, where=mask) on each "
        "device, then one lax.pmean over axis_name: each replica's masked moments weigh 1/R, whatever "
        "its count)",
        "replica_running": f"{src}::BatchNorm.__call__ (each device blends the pmean'd mean and var into "
        "its own batch_stats: every copy takes the same combined statistics)",
    }


_FLAX_CONFIRMED = (f"{_TEST} runs {{}} under jax.pmap{{}} on forced CPU host devices: even and uneven "
                   "shards (padded, flax's mask), a one-sample replica, float32 at mean 1e4")

FLAX_LINEN_AXIS = Profile(
    name="flax_linen_axis",
    framework="flax",
    title="flax.linen.BatchNorm(axis_name=...) across devices (use_fast_variance=True)",
    semantics=FLAX_LINEN.semantics.replace(replica_stats="equal_weighted", replica_var="one_pass",
                                           replica_running="synchronized", replica_param_grad="local"),
    cite={**FLAX_LINEN.cite, **_flax_cite(_LINEN),
          "replica_var": f"{_LINEN}::_compute_stats (use_fast_variance=True: mu, mu2 = "
          "maybe_distributed_mean(x, _abs_sq(x)); var = jnp.maximum(0.0, mu2 - _abs_sq(mu)): the "
          "pmean'd E[x^2] minus the pmean'd mean squared)"},
    confirmed=_FLAX_CONFIRMED.format("flax.linen.BatchNorm(axis_name=...)", " and jax.shard_map"),
    state_names=FLAX_LINEN.state_names,
)

FLAX_LINEN_AXIS_SHARD_MAP = Profile(
    name="flax_linen_axis_shard_map",
    framework="flax",
    title="flax.linen.BatchNorm(axis_name=...) under jax.shard_map (parameters replicated)",
    semantics=FLAX_LINEN_AXIS.semantics.replace(replica_param_grad="sum"),
    cite={**FLAX_LINEN_AXIS.cite,
          "replica_param_grad": f"{_PARALLEL}::_pvary_transpose_rule (jax.shard_map, check_vma=True, "
          "params in_specs P(): the invariant parameters' implicit pvary transposes to a psum: the sum)"},
    confirmed=_FLAX_CONFIRMED.format("flax.linen.BatchNorm(axis_name=...)", " and jax.shard_map"),
    state_names=FLAX_LINEN.state_names,
)

FLAX_LINEN_TWO_PASS_AXIS = Profile(
    name="flax_linen_two_pass_axis",
    framework="flax",
    title="flax.linen.BatchNorm(axis_name=..., use_fast_variance=False) across devices",
    semantics=FLAX_LINEN_TWO_PASS.semantics.replace(replica_stats="equal_weighted", replica_var="two_pass",
                                                    replica_running="synchronized", replica_param_grad="local"),
    cite={**FLAX_LINEN_TWO_PASS.cite, **_flax_cite(_LINEN),
          "replica_var": f"{_LINEN}::_compute_stats (use_fast_variance=False: mu = pmean of the means; "
          "var = maybe_distributed_mean(_abs_sq(x - expand_dims(mu))): deviations from the combined "
          "mean, pmean'd)"},
    confirmed=_FLAX_CONFIRMED.format("flax.linen.BatchNorm(axis_name=..., use_fast_variance=False)", ""),
    state_names=FLAX_LINEN.state_names,
)

FLAX_NNX_AXIS = Profile(
    name="flax_nnx_axis",
    framework="flax",
    title="flax.nnx.BatchNorm(axis_name=...) across devices (use_fast_variance=True)",
    semantics=FLAX_NNX.semantics.replace(replica_stats="equal_weighted", replica_var="one_pass",
                                         replica_running="synchronized", replica_param_grad="local"),
    cite={**FLAX_NNX.cite, **_flax_cite(_NNX),
          "replica_var": f"{_NNX}::_compute_stats (use_fast_variance=True: the pmean'd E[x^2] minus the "
          "pmean'd mean squared, clamped at 0)"},
    confirmed=_FLAX_CONFIRMED.format("flax.nnx.BatchNorm(axis_name=...) through nnx.split/merge", ""),
    state_names=FLAX_NNX.state_names,
)

FLAX_NNX_AXIS_SHARD_MAP = Profile(
    name="flax_nnx_axis_shard_map",
    framework="flax",
    title="flax.nnx.BatchNorm(axis_name=...) under jax.shard_map (parameters replicated)",
    semantics=FLAX_NNX_AXIS.semantics.replace(replica_param_grad="sum"),
    cite={**FLAX_NNX_AXIS.cite, "replica_param_grad": FLAX_LINEN_AXIS_SHARD_MAP.cite["replica_param_grad"]},
    confirmed=_FLAX_CONFIRMED.format("flax.nnx.BatchNorm(axis_name=...) through nnx.split/merge",
                                     " and jax.shard_map"),
    state_names=FLAX_NNX.state_names,
)

HAIKU_CROSS_REPLICA = Profile(
    name="haiku_cross_replica",
    framework="dm-haiku",
    title="haiku.BatchNorm(cross_replica_axis=...) across devices",
    semantics=HAIKU.semantics.replace(replica_stats="equal_weighted", replica_var="one_pass",
                                      replica_running="synchronized", replica_param_grad="local"),
    cite={**HAIKU.cite, **_JAX_CITE,
          "replica_stats": f"{_HK}::BatchNorm.__call__ (mean and mean_of_squares of the device's input, "
          "each jax.lax.pmean'd over cross_replica_axis: equal weights; no mask, so only equal shards "
          "run, where equal and count weights agree)",
          "replica_var": f"{_HK}::BatchNorm.__call__ (var = mean_of_squares - jnp.square(mean) of the "
          "pmean'd moments, not clamped)",
          "replica_running": f"{_HK}::BatchNorm.__call__ (self.mean_ema(mean), self.var_ema(var) with the "
          "pmean'd statistics on every device)"},
    confirmed=f"{_TEST} runs haiku.BatchNorm(cross_replica_axis=...) under jax.pmap on forced CPU host "
    "devices: even shards (haiku has no mask), float32 at mean 1e4",
    state_names=HAIKU.state_names,
)


def _equinox_cite(base: Profile, note: str = "") -> dict[str, str]:
    return {
        **base.cite, **_JAX_CITE,
        "replica_stats": f"{_EQX}._stats (mean = lax.pmean(jnp.mean(y), axis_name) per sample, over "
        "axis_name=(device axis, vmap axis): every sample of every device weighs the same: the "
        f"concatenated batch's statistics; no mask, so only equal shards run){note}",
        "replica_var": f"{_EQX}._stats (var = lax.pmean(jnp.mean((y - mean) * conj(y - mean))) with the "
        "pmean'd mean: deviations from the combined mean)",
        "replica_running": f"{_EQX} (each device's state takes the pmean'd statistics)",
    }


_EQX_CONFIRMED = (f"{_TEST} runs equinox.nn.BatchNorm(mode={{!r}}, axis_name=(replica axis, 'batch')) in "
                  "jax.vmap {}: even shards (no mask), float32 at mean 1e4")

EQUINOX_EMA_AXIS = Profile(
    name="equinox_ema_axis",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='ema', axis_name=(device, batch)) across devices",
    semantics=EQUINOX_EMA.semantics.replace(replica_stats="count_weighted", replica_var="two_pass",
                                            replica_running="synchronized", replica_param_grad="local"),
    cite=_equinox_cite(EQUINOX_EMA, "; unobservable in mode='ema', which normalizes with the synchronized "
                       "running statistics"),
    confirmed=_EQX_CONFIRMED.format("ema", "under an outer jax.vmap of the replicas (mode='ema' raises in "
                                    "State.set under jax.pmap, pinned by a test, and under jax.shard_map)"),
    state_names=EQUINOX_EMA.state_names,
)

EQUINOX_BATCH_AXIS = Profile(
    name="equinox_batch_axis",
    framework="equinox",
    title="equinox.nn.BatchNorm(mode='batch', axis_name=(device, batch)) across devices",
    semantics=EQUINOX_BATCH.semantics.replace(replica_stats="count_weighted", replica_var="two_pass",
                                              replica_running="synchronized", replica_param_grad="local"),
    cite=_equinox_cite(EQUINOX_BATCH),
    confirmed=_EQX_CONFIRMED.format("batch", "under jax.pmap on forced CPU host devices"),
    state_names=EQUINOX_BATCH.state_names,
)

PROFILES = [FLAX_LINEN_AXIS, FLAX_LINEN_AXIS_SHARD_MAP, FLAX_LINEN_TWO_PASS_AXIS, FLAX_NNX_AXIS,
            FLAX_NNX_AXIS_SHARD_MAP, HAIKU_CROSS_REPLICA, EQUINOX_EMA_AXIS, EQUINOX_BATCH_AXIS]
