"""Each built-in profile pins its documented knob values (the ones users trip over), and cites every
knob (third-party profiles, validated the same way: tests/test_open_profiles.py)."""

from __future__ import annotations

import pytest

from bnspec.profiles import builtin_profiles, get_semantics
from bnspec.semantics import KNOBS

PROFILES = builtin_profiles()  # not the installed third-party ones

PINNED = {
    "pytorch": dict(eps=1e-5, momentum=0.1, momentum_weights="batch", running_var_update="unbiased",
                    single_value="error"),
    "pytorch_cumulative": dict(momentum=None, running_var_update="unbiased"),
    "keras": dict(eps=1e-3, momentum=0.99, momentum_weights="running", running_var_update="biased",
                  frozen_train_stats="running"),
    "keras_jax": dict(compute_dtype="float32", running_var_update="biased"),
    "keras_torch": dict(variance_algorithm="one_pass", compute_dtype="float32"),
    "tf_keras_fused": dict(running_var_update="unbiased", eps_floor=None, frozen_train_stats="running"),
    "tf_keras_nonfused": dict(running_var_update="biased", frozen_train_stats="running"),
    "tf_nn_fused": dict(momentum_weights="batch", momentum=1.0, running_var_update="unbiased"),
    "tf_nn_moments": dict(running_var_update="biased"),
    "flax_linen": dict(momentum=0.99, variance_algorithm="one_pass_clamped", state_dtype="promote_float32"),
    "flax_linen_two_pass": dict(variance_algorithm="two_pass"),
    "flax_nnx": dict(variance_algorithm="one_pass_clamped", state_dtype="float32"),
    "haiku": dict(ema_debias=True, initial_running=(0.0, 0.0), variance_algorithm="one_pass"),
    "equinox_ema": dict(train_stats="running", first_update="replace"),
    "equinox_batch": dict(ema_debias=True, initial_running=(0.0, 1.0), train_stats="batch"),
    "onnx": dict(momentum=0.9, momentum_weights="running", running_var_update="biased"),
    "onnx_reference": dict(momentum_weights="running", running_var_update="biased", compute_dtype="input",
                           state_dtype="input", affine_form="centered"),
    "onnx_reference_9": dict(eval_stats="running", affine_form="centered"),
    "ioffe2015": dict(momentum=None, running_var_update="unbiased", normalize_var="biased"),
}


# Every profile describes the layer alone: replicated, it keeps to its own shard (DDP without
# SyncBatchNorm, flax without axis_name, Keras synchronized=False).
REPLICA_DEFAULTS = dict(replica_stats="none", replica_var="two_pass", replica_running="own",
                        replica_count="global", replica_grad="global", replica_param_grad="sum")


@pytest.mark.parametrize("name", sorted(PINNED))
def test_profile_keeps_the_replica_knobs_at_their_one_device_defaults(name):
    sem = get_semantics(name)
    assert {k: getattr(sem, k) for k in REPLICA_DEFAULTS} == REPLICA_DEFAULTS


# The data-parallel profiles: the replica knobs each one decides (tests/test_adapter_*data_parallel.py
# and test_adapter_torch_ddp.py confirm them by running the framework).
DATA_PARALLEL = {
    "pytorch_ddp": dict(replica_stats="none", replica_running="replica0", replica_param_grad="mean"),
    "pytorch_sync": dict(replica_stats="count_weighted", replica_var="pairwise", replica_running="synchronized"),
    "flax_linen_axis": dict(replica_stats="equal_weighted", replica_var="one_pass", replica_param_grad="local"),
    "flax_linen_axis_shard_map": dict(replica_stats="equal_weighted", replica_param_grad="sum"),
    "flax_linen_two_pass_axis": dict(replica_stats="equal_weighted", replica_var="two_pass"),
    "flax_nnx_axis": dict(replica_stats="equal_weighted", replica_running="synchronized"),
    "flax_nnx_axis_shard_map": dict(replica_stats="equal_weighted", replica_param_grad="sum"),
    "haiku_cross_replica": dict(replica_stats="equal_weighted", replica_var="one_pass"),
    "equinox_ema_axis": dict(replica_stats="count_weighted", replica_running="synchronized"),
    "equinox_batch_axis": dict(replica_stats="count_weighted", replica_var="two_pass"),
    "keras_sync": dict(replica_stats="count_weighted", replica_var="one_pass", replica_running="synchronized"),
    "keras_mirrored": dict(replica_stats="none", replica_running="own"),
    "tf_keras_sync": dict(replica_stats="count_weighted", replica_running="synchronized"),
    "tf_keras_mirrored": dict(replica_stats="none", replica_running="own"),
    "tf_keras_sync_masked": dict(replica_stats="count_weighted", replica_running="synchronized"),
}


def test_every_profile_is_pinned_here():
    assert set(PINNED) | set(DATA_PARALLEL) == set(PROFILES)


@pytest.mark.parametrize("name", sorted(DATA_PARALLEL))
def test_data_parallel_profile_pins_its_replica_knobs(name):
    sem = get_semantics(name)
    for knob, value in DATA_PARALLEL[name].items():
        assert getattr(sem, knob) == value, (name, knob)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_profile_pins_its_documented_knob_values(name):
    sem = get_semantics(name)
    for knob, value in PINNED[name].items():
        assert getattr(sem, knob) == value, (name, knob)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_cites_a_source_for_every_knob(name):
    cite = PROFILES[name].cite
    assert set(KNOBS) <= set(cite) and all(cite[k].strip() for k in KNOBS)


def test_invalid_knob_value_names_the_knob_the_value_and_the_alternatives():
    from bnspec.errors import InvalidSemantics

    allowed = r"allowed: 'inside_sqrt' \| 'outside_sqrt'"
    with pytest.raises(InvalidSemantics, match=r"knob eps_placement='in' is invalid; " + allowed):
        get_semantics("pytorch").replace(eps_placement="in")
