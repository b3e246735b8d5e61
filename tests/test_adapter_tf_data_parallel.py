"""Keras 3 and tf.keras BatchNormalization under tf.distribute.MirroredStrategy on logical CPUs
(adapters/tf_data_parallel.py): each profile's replica knobs confirmed by running the layer against
the reference, and each pinned (the observation does not conform with that knob flipped); the
empty-shard, mask and model-level-read behaviours that no knob states, with their numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bnspec.case import decode_array, make_case
from bnspec.errors import UnsupportedFeature
from bnspec.profiles.profile import validate
from bnspec.profiles.tf_data_parallel import KERAS_SYNC_MASKED, PROFILES
from bnspec.replicas import replica_case
from bnspec.tolerance import compare
from tests.harness import run

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("tf_keras")

from bnspec.adapters import tf_data_parallel as tdp  # noqa: E402

ADAPTERS = {
    "keras_sync": tdp.KERAS_TF_MIRRORED_SYNC, "keras_mirrored": tdp.KERAS_TF_MIRRORED,
    "keras_sync_masked": tdp.KERAS_TF_MIRRORED_SYNC_MASKED, "tf_keras_sync": tdp.TF_KERAS_MIRRORED_SYNC,
    "tf_keras_mirrored": tdp.TF_KERAS_MIRRORED, "tf_keras_sync_masked": tdp.TF_KERAS_MIRRORED_SYNC_MASKED,
    "tf_keras_mirrored_masked": tdp.TF_KERAS_MIRRORED_MASKED,
}
REF = {k: f"bnspec.adapters.tf_data_parallel:{a.name.upper()}" for k, a in ADAPTERS.items()}
SYNC = ("keras_sync", "tf_keras_sync", "tf_keras_sync_masked")


def _sem(key):
    """The semantics each adapter shows: its declared profile's; Keras 3 with a mask: what it does
    instead (KERAS_SYNC_MASKED: per-replica statistics despite synchronized=True)."""
    if key == "keras_sync_masked":
        return KERAS_SYNC_MASKED.semantics
    return ADAPTERS[key].declared_profile().semantics


def _hand(replicas, dtype="float64", spatial=(2,)):
    # train, train, eval with gradients; 2 channels
    rng = np.random.default_rng(3)
    n = sum(replicas)
    xs = [rng.normal(1.0, 2.0, (n, 2, *spatial)) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], grad_outputs=[rng.normal(size=(n, 2, *spatial)) for _ in xs],
                     gamma=np.array([1.5, 0.5]), beta=np.array([0.1, -0.2]), running_mean=np.array([0.5, -0.5]),
                     running_var=np.array([1.5, 0.75]), eps=1e-3, momentum=0.25, replicas=replicas, dtype=dtype)


def _cases(key):
    # Keras 3's masked moments divide by count + 1e-7: float64 cannot conform (see the test below)
    dtype = "float32" if key == "keras_sync_masked" else "float64"
    cases = {
        "even": replica_case(np.random.default_rng(1), 0, replicas=2, dtype=dtype),
        # one sample on replica 2 (two values per channel), and one value per channel on replica 1
        "uneven": _hand((3, 2, 1), dtype),
        "single": _hand((3, 1, 2), dtype, spatial=()),
        "empty": _hand((3, 0, 3), dtype),
    }
    if key in SYNC:  # |mean| >> std: a one-pass combined variance loses digits two-pass keeps
        cases["offset"] = replica_case(np.random.default_rng(5), 1, replicas=3, dtype="float32", offset=100.0)
    if key == "keras_sync_masked":
        cases["float64"] = _hand((3, 2, 1))
    return cases


def _run_all(key):
    return {label: (case, run(REF[key], case)) for label, case in _cases(key).items()}


@pytest.fixture(scope="module")
def observed():
    # one warm worker per adapter; TensorFlow's start-up dominates, so the workers start together
    with ThreadPoolExecutor(max_workers=len(ADAPTERS)) as pool:
        futures = {key: pool.submit(_run_all, key) for key in ADAPTERS}
        return {key: f.result() for key, f in futures.items()}


def test_the_profiles_are_valid_and_cite_their_replica_knobs():
    assert {p.name for p in PROFILES} == set(ADAPTERS) - {"keras_sync_masked", "tf_keras_mirrored_masked"}
    for p in [*PROFILES, KERAS_SYNC_MASKED]:
        validate(p)
        for knob in ("replica_stats", "replica_running", "replica_param_grad"):
            assert "keras/" in p.cite[knob] or "tf_keras/" in p.cite[knob], (p.name, knob)


@pytest.mark.parametrize("key", list(ADAPTERS))
@pytest.mark.parametrize("split", ["even", "uneven", "single"])
def test_mirrored_batchnorm_conforms_to_its_profile(observed, key, split):
    case, result = observed[key][split]
    comparison = compare(case, _sem(key), result)
    assert comparison.ok, comparison.describe()


PINS = [
    ("keras_sync", "replica_stats", "none"), ("keras_sync", "replica_stats", "equal_weighted"),
    ("keras_sync", "replica_running", "own"), ("keras_sync", "replica_grad", "local"),
    ("keras_sync", "replica_param_grad", "mean"),
    ("keras_mirrored", "replica_stats", "count_weighted"), ("keras_mirrored", "replica_running", "synchronized"),
    ("keras_mirrored", "replica_running", "mean"), ("keras_mirrored", "replica_running", "replica0"),
    ("keras_mirrored", "replica_param_grad", "mean"),
    # the mask bypasses synchronized=True: masked statistics do not combine across replicas
    ("keras_sync_masked", "replica_stats", "count_weighted"), ("keras_sync_masked", "replica_running", "synchronized"),
    ("tf_keras_sync", "replica_stats", "none"), ("tf_keras_sync", "replica_stats", "equal_weighted"),
    ("tf_keras_sync", "replica_running", "own"), ("tf_keras_sync", "replica_grad", "local"),
    ("tf_keras_sync", "replica_param_grad", "mean"),
    ("tf_keras_mirrored", "replica_stats", "count_weighted"),
    ("tf_keras_mirrored", "replica_running", "synchronized"), ("tf_keras_mirrored", "replica_running", "mean"),
    ("tf_keras_mirrored", "replica_param_grad", "mean"),
    # tf.keras masks: counts all-reduced, combined by count
    ("tf_keras_sync_masked", "replica_stats", "none"), ("tf_keras_sync_masked", "replica_running", "own"),
    # and unsynchronized with a mask: each replica's own masked moments
    ("tf_keras_mirrored_masked", "replica_stats", "count_weighted"),
    ("tf_keras_mirrored_masked", "replica_running", "synchronized"),
]


def test_keras_with_a_mask_breaks_the_synchronized_promise(observed):
    # the adapter declares keras_sync (synchronized=True); on an uneven split it does not conform,
    # and the declared profile with per-replica statistics and copies does (float32)
    case, result = observed["keras_sync_masked"]["uneven"]
    declared = tdp.KERAS_TF_MIRRORED_SYNC_MASKED.declared_profile()
    assert declared.name == "keras_sync"
    assert not compare(case, declared.semantics, result).ok
    assert compare(case, declared.semantics.replace(replica_stats="none", replica_running="own"), result).ok


@pytest.mark.parametrize("key, knob, other", PINS)
def test_each_replica_knob_is_pinned(observed, key, knob, other):
    case, result = observed[key]["uneven"]
    assert not compare(case, _sem(key).replace(**{knob: other}), result).ok, f"{key}: {knob}={other!r} fits too"


@pytest.mark.parametrize("key", SYNC)
def test_the_synchronized_variance_is_one_pass(observed, key):
    case, result = observed[key]["offset"]
    assert compare(case, _sem(key), result).ok
    for other in ("two_pass", "pairwise"):
        assert not compare(case, _sem(key).replace(replica_var=other), result).ok, other


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_dgamma_is_what_the_optimizer_applies_the_sum_of_each_replicas_own(observed, key):
    case, result = observed[key]["uneven"]
    for step, local_g, local_b in zip(result.steps, result.meta["local_dgamma"], result.meta["local_dbeta"],
                                      strict=True):
        own = decode_array(local_g)
        np.testing.assert_allclose(own.sum(axis=0), step.dgamma, rtol=1e-5 if key.endswith("masked") else 1e-12)
        np.testing.assert_allclose(decode_array(local_b).sum(axis=0), step.dbeta, rtol=1e-5, atol=1e-6)
        assert not np.allclose(own[0], step.dgamma)  # replica 0's tape gradient is its shard's share


@pytest.mark.parametrize("key, read", [("keras_mirrored", "replica0"), ("tf_keras_mirrored", "mean")])
def test_a_model_level_read_of_the_moving_statistics(observed, key, read):
    # Keras 3: a MirroredVariable (aggregation NONE) reads its primary copy; tf.keras: a
    # SyncOnReadVariable (MEAN) reads the copies' mean. Neither writes it back to the copies.
    _, result = observed[key]["uneven"]
    for step, model in zip(result.steps, result.meta["model_running_mean"], strict=True):
        copies = step.replica_running_mean
        assert not np.allclose(copies[0], copies[1])
        want = copies[0] if read == "replica0" else copies.mean(axis=0)
        np.testing.assert_allclose(decode_array(model), want, rtol=1e-12)


# -- an empty shard: what each one does --

@pytest.mark.parametrize("key", ["keras_sync", "tf_keras_mirrored", "tf_keras_sync_masked"])
def test_an_empty_shard_conforms(observed, key):
    case, result = observed[key]["empty"]
    comparison = compare(case, _sem(key), result)
    assert comparison.ok, comparison.describe()


def test_keras_unsynchronized_empty_shard_poisons_its_copy_and_the_summed_dgamma_with_nan(observed):
    _, result = observed["keras_mirrored"]["empty"]
    for step in result.steps:
        assert np.isnan(step.replica_running_mean[1]).all() and np.isfinite(step.replica_running_mean[[0, 2]]).all()
        assert np.isnan(step.dgamma).all() and np.isfinite(step.dbeta).all()


def test_tf_keras_synchronized_empty_shard_skips_its_update(observed):
    case, result = observed["tf_keras_sync"]["empty"]
    mismatched = {c.quantity for c in compare(case, _sem("tf_keras_sync"), result).mismatches}
    assert mismatched == {"replica_running_mean", "replica_running_var"}
    for step in result.steps:
        np.testing.assert_array_equal(step.replica_running_mean[1], case.running_mean)
        np.testing.assert_array_equal(step.replica_running_mean[0], step.replica_running_mean[2])


def test_tf_keras_unsynchronized_all_padding_shard_decays_its_copy_towards_zero(observed):
    # an all-masked replica's masked moments are 0: blended in, 0.5 -> 0.5 * 0.75 (as Keras 3's)
    case, result = observed["tf_keras_mirrored_masked"]["empty"]
    np.testing.assert_allclose(result.steps[0].replica_running_mean[1], case.running_mean * 0.75, rtol=1e-12)
    assert not compare(case, _sem("tf_keras_mirrored_masked"), result).ok


def test_keras_masked_all_padding_shard_decays_its_copy_towards_zero(observed):
    # an all-masked replica: mean = 0 / (0 + 1e-7) = 0, blended in: 0.5 -> 0.5 * 0.75
    case, result = observed["keras_sync_masked"]["empty"]
    np.testing.assert_allclose(result.steps[0].replica_running_mean[1], case.running_mean * 0.75, rtol=1e-6)


def test_keras_masked_moments_divide_by_count_plus_epsilon_so_float64_does_not_conform(observed):
    case, result = observed["keras_sync_masked"]["float64"]
    assert not compare(case, _sem("keras_sync_masked"), result).ok
    # replica 0's copy after step 0: the shard mean scaled by n / (n + 1e-7), n = 6 values
    x = case.steps[0].x[:3]
    n = x.shape[0] * x.shape[2]
    mean = x.mean(axis=(0, 2))
    exact = 0.75 * case.running_mean + 0.25 * mean
    keras = 0.75 * case.running_mean + 0.25 * mean * n / (n + 1e-7)
    observed_copy = result.steps[0].replica_running_mean[0]
    np.testing.assert_allclose(observed_copy, keras, rtol=1e-13)
    assert np.abs(observed_copy - exact).max() > 1e3 * np.finfo(np.float64).eps * np.abs(exact).max()


def test_a_case_without_replicas_or_with_too_many_is_not_applicable():
    x = np.arange(18.0).reshape(9, 2)
    with pytest.raises(UnsupportedFeature, match="no replicas"):
        run(REF["keras_sync"], make_case([x]))
    with pytest.raises(UnsupportedFeature, match="9 replicas"):
        run(REF["keras_sync"], make_case([x], replicas=(1,) * 9))
