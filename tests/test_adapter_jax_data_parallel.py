"""JAX data-parallel BatchNorm (flax, haiku, equinox with a cross-replica axis, one CPU host device
per replica): each profile's replica knobs confirmed by running the framework against the reference,
and pinned (the observation does not conform with the knob flipped).

Under jax.pmap (and vmap) the gradient of a device's own loss leaves dgamma/dbeta as that device's
own shard's share (replica_param_grad local), checked against that share by hand too."""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import Case, Result, make_case
from bnspec.errors import FrameworkError, UnsupportedFeature
from bnspec.profiles.jax_data_parallel import PROFILES
from bnspec.profiles.profile import validate
from bnspec.reference import reference
from bnspec.replicas import replica_case
from bnspec.semantics import REPLICA_KNOBS, Semantics
from bnspec.tolerance import compare
from tests.harness import run

pytest.importorskip("jax")

MODULE = "bnspec.adapters.jax_data_parallel"
FLAX = ["FLAX_LINEN_PMAP", "FLAX_LINEN_SHARD_MAP", "FLAX_LINEN_TWO_PASS_PMAP", "FLAX_NNX_PMAP",
        "FLAX_NNX_SHARD_MAP"]
UNMASKED = ["HAIKU_PMAP", "EQUINOX_BATCH_PMAP", "EQUINOX_EMA_VMAP"]
# dgamma/dbeta summed over the replicas; the others: device 0's own
SHARD_MAP = {"FLAX_LINEN_SHARD_MAP", "FLAX_NNX_SHARD_MAP"}
FAST_VARIANCE = {"FLAX_LINEN_PMAP", "FLAX_LINEN_SHARD_MAP", "FLAX_NNX_PMAP", "FLAX_NNX_SHARD_MAP",
                 "HAIKU_PMAP"}  # E[x^2] - mean^2
NEEDS = {"FLAX": "flax", "HAIKU": "haiku", "EQUINOX": "equinox"}


def _adapter(name: str):  # type: ignore[no-untyped-def]
    pytest.importorskip(NEEDS[name.split("_")[0]])
    from bnspec.adapters import jax_data_parallel

    return getattr(jax_data_parallel, name)


def _split(replicas: tuple[int, ...]) -> Case:
    # (N, C) rank 2: the one-sample replica holds one value per channel
    rng = np.random.default_rng(3)
    xs = [rng.normal(1.0, 2.0, (6, 2)) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], grad_outputs=[rng.normal(size=(6, 2)) for _ in xs],
                     gamma=np.array([1.5, 0.5]), beta=np.array([0.1, -0.2]), running_mean=np.array([0.5, -0.5]),
                     running_var=np.array([1.5, 0.75]), eps=1e-3, momentum=0.25, replicas=replicas)


CASES = {
    "even": replica_case(np.random.default_rng(1), 0, replicas=2),  # (k, k), spatial extent
    "uneven": _split((3, 1, 2)),
    "empty": _split((4, 0, 2)),
    "offset": replica_case(np.random.default_rng(5), 0, replicas=2, dtype="float32", offset=1e4),  # (3, 3)
}
# each adapter's cases (a worker per adapter: few cases keep the file fast)
LABELS = {"FLAX_LINEN_PMAP": ("even", "uneven", "empty", "offset"),
          "FLAX_LINEN_SHARD_MAP": ("even", "uneven", "empty", "offset"),
          "FLAX_LINEN_TWO_PASS_PMAP": ("even", "uneven", "offset"),
          "FLAX_NNX_PMAP": ("even", "uneven", "empty", "offset"),
          "FLAX_NNX_SHARD_MAP": ("even", "uneven", "empty", "offset"),
          **{a: ("even", "offset") for a in UNMASKED}}
RUNS = {(a, c): CASES[c] for a, labels in LABELS.items() for c in labels}


@pytest.fixture(scope="module")
def observed() -> dict[tuple[str, str], Result]:
    out = {}
    for (name, label), case in RUNS.items():
        try:
            _adapter(name)
        except pytest.skip.Exception:
            continue
        out[name, label] = run(f"{MODULE}:{name}", case)
    return out


def _get(observed: dict[tuple[str, str], Result], name: str, label: str) -> tuple[Case, Result, Semantics]:
    adapter = _adapter(name)
    return CASES[label], observed[name, label], adapter.declared_profile().semantics


def _own_share(case: Case, sem: Semantics, replica: int = 0) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per step, (dgamma, dbeta) of replica ``replica``'s own loss sum(y * dy) over its shard:
    sum(dy * xhat) and sum(dy) there, xhat from the statistics that normalized it (exact)."""
    expected = reference(case, sem)
    lo, hi = case.shards[replica]
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for step, res in zip(case.steps, expected.steps, strict=True):
        if step.grad_output is None or res.replica_norm_mean is None or res.replica_norm_var is None:
            out.append(None)
            continue
        x, g = step.x[lo:hi], step.grad_output[lo:hi]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, var = res.replica_norm_mean[replica].reshape(shape), res.replica_norm_var[replica].reshape(shape)
        xhat = (x - mean) / np.sqrt(var + case.eps)
        axes = (0, *range(2, x.ndim))
        out.append(((g * xhat).sum(axis=axes), g.sum(axis=axes)))
    return out


def test_the_profiles_are_valid_and_cite_every_replica_knob():
    for profile in PROFILES:
        validate(profile)
        for knob in REPLICA_KNOBS:
            assert profile.cite.get(knob), (profile.name, knob)
        for knob in ("replica_stats", "replica_var", "replica_running"):
            assert "/" in profile.cite[knob] and "::" in profile.cite[knob], (profile.name, knob)


@pytest.mark.parametrize("name, label", [k for k in RUNS if k[1] != "empty"])
def test_conforms_to_its_profile(observed, name, label):
    case, result, sem = _get(observed, name, label)
    comparison = compare(case, sem, result)
    assert comparison.ok, comparison.describe()


@pytest.mark.parametrize("name", [n for n in FLAX + UNMASKED if n not in SHARD_MAP])
def test_pmap_leaves_device_0_its_own_shards_parameter_gradients(observed, name):
    """replica_param_grad local: the own share, by hand; sum and mean both fail."""
    case, result, sem = _get(observed, name, LABELS[name][0])
    for i, (step, share) in enumerate(zip(result.steps, _own_share(case, sem), strict=True)):
        assert share is not None and step.dgamma is not None and step.dbeta is not None
        np.testing.assert_allclose(step.dgamma, share[0], rtol=1e-6, atol=1e-9, err_msg=f"dgamma step {i}")
        np.testing.assert_allclose(step.dbeta, share[1], rtol=1e-6, atol=1e-9, err_msg=f"dbeta step {i}")
    assert sem.replica_param_grad == "local"
    for value in ("sum", "mean"):
        bad = {c.quantity for c in compare(case, sem.replace(replica_param_grad=value), result).mismatches}
        assert bad == {"dgamma", "dbeta"}, (value, bad)


def test_shard_map_sums_the_parameter_gradients(observed):
    case, result, sem = _get(observed, "FLAX_LINEN_SHARD_MAP", "uneven")
    assert sem.replica_param_grad == "sum"
    bad = {c.quantity for c in compare(case, sem.replace(replica_param_grad="mean"), result).mismatches}
    assert bad == {"dgamma", "dbeta"}


FLIPS = [("replica_stats", "count_weighted"),  # flax: a pmean of masked moments, whatever the counts
         ("replica_stats", "none"),
         ("replica_running", "own"),  # every copy takes the combined statistics
         ("replica_grad", "local")]  # the pmean's transpose all-reduces the cotangents


@pytest.mark.parametrize("knob, other", FLIPS)
@pytest.mark.parametrize("name", FLAX + UNMASKED)
def test_each_replica_knob_is_pinned(observed, name, knob, other):
    if name in UNMASKED and other == "count_weighted":
        pytest.skip("equal shards only: count and equal weights agree there")
    if name == "EQUINOX_EMA_VMAP" and knob == "replica_stats":
        pytest.skip("unobservable in mode='ema': it normalizes with the synchronized running statistics, "
                    "and a synchronized update combines by count under any replica_stats")
    case, result, sem = _get(observed, name, "uneven" if name in FLAX else "even")
    assert getattr(sem, knob) != other
    assert not compare(case, sem.replace(**{knob: other}), result).ok, f"{knob}={other!r} fits too"


@pytest.mark.parametrize("name", FLAX + UNMASKED)
def test_every_replica_ends_each_step_with_the_same_running_statistics(observed, name):
    _, result, _ = _get(observed, name, "uneven" if name in FLAX else "even")
    assert result.meta["devices"] == len(result.steps[0].replica_running_mean)
    for step in result.steps:
        assert step.replica_running_mean is not None and step.replica_running_var is not None
        assert (step.replica_running_mean == step.replica_running_mean[0]).all()
        assert (step.replica_running_var == step.replica_running_var[0]).all()


def test_the_worker_asks_for_8_host_devices_and_keeps_the_default_xla_flags():
    """XLA's parser drops whatever follows a bare token: every flag is a --flag."""
    from bnspec.adapters.jax_data_parallel import _ENV
    from bnspec.worker import DEFAULT_ENV

    assert _ENV["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=8 ")
    assert _ENV["XLA_FLAGS"].endswith(DEFAULT_ENV["XLA_FLAGS"])
    assert all(flag.startswith("--") for flag in _ENV["XLA_FLAGS"].split())


@pytest.mark.parametrize("name", FLAX + UNMASKED)
def test_replica_count_is_unobservable_without_an_unbiased_factor(observed, name):
    case, result, sem = _get(observed, name, "uneven" if name in FLAX else "even")
    assert sem.normalize_var == sem.running_var_update == "biased"
    assert compare(case, sem.replace(replica_count="local"), result).ok


def test_haiku_weighs_replicas_equally_and_equinox_weighs_samples_equally():
    """Only equal shards run there, where the two weightings agree: the values are the source's."""
    from bnspec.profiles.jax_data_parallel import EQUINOX_BATCH_AXIS, EQUINOX_EMA_AXIS, HAIKU_CROSS_REPLICA

    assert HAIKU_CROSS_REPLICA.semantics.replica_stats == "equal_weighted"
    assert "pmean" in HAIKU_CROSS_REPLICA.cite["replica_stats"]
    for profile in (EQUINOX_EMA_AXIS, EQUINOX_BATCH_AXIS):
        assert profile.semantics.replica_stats == "count_weighted"


@pytest.mark.parametrize("name", FLAX + UNMASKED)
def test_the_combined_variance_at_mean_1e4_in_float32(observed, name):
    """With the single-device variance_algorithm made two-pass (its one-pass bound would admit
    either), only replica_var decides: the fast variants' pmean(E[x^2]) - mean^2 conforms to
    one_pass only; the two-pass ones conform to the tight two-pass model (and so to one_pass too)."""
    case, result, sem = _get(observed, name, "offset")
    judged = result
    tight = sem.replace(variance_algorithm="two_pass")
    assert compare(case, tight, judged).ok
    assert compare(case, tight.replace(replica_var="one_pass"), judged).ok
    if name in FAST_VARIANCE:
        assert sem.replica_var == "one_pass"
        bad = {c.quantity for c in compare(case, tight.replace(replica_var="two_pass"), judged).mismatches}
        assert {"y", "running_var", "replica_running_var"} <= bad
    else:
        assert sem.replica_var == "two_pass"


@pytest.mark.parametrize("name", [a for a, labels in LABELS.items() if "empty" in labels])
def test_an_empty_replica_makes_every_replica_nan(observed, name):
    """flax's masked mean of an all-False mask is 0/0; the pmean carries the NaN to every device:
    y, dx and every running copy are NaN, where the spec leaves an empty replica out."""
    case, result, sem = _get(observed, name, "empty")
    first = result.steps[0]
    assert np.isnan(first.y).all() and first.replica_running_mean is not None
    assert np.isnan(first.replica_running_mean).all() and np.isnan(first.replica_running_var).all()
    assert not compare(case, sem, result).ok


def test_equinox_ema_raises_under_pmap():
    """equinox.nn.BatchNorm(mode='ema') sets its first-time flag to a fresh jnp.array(False), whose
    abstract value lacks the device mesh pmap's (a shard_map's) state carries: State.set refuses."""
    _adapter("EQUINOX_EMA_PMAP")
    with pytest.raises(FrameworkError, match="Old and new values have different structures"):
        run(f"{MODULE}:EQUINOX_EMA_PMAP", CASES["even"])


@pytest.mark.parametrize("case, reason", [
    (make_case([np.arange(8.0).reshape(4, 2)]), "no replicas"),
    (make_case([np.arange(18.0).reshape(9, 2)], replicas=(1,) * 9), "more than the 8"),
    (_split((3, 3)).replace(dtype="float16", param_dtype="float16"), "dtype float16"),
    (_split((3, 3)).replace(momentum=None), "momentum=None"),
])
def test_what_the_flax_adapter_cannot_express(case, reason):
    _adapter("FLAX_LINEN_PMAP")
    with pytest.raises(UnsupportedFeature, match=reason):
        run(f"{MODULE}:FLAX_LINEN_PMAP", case)


@pytest.mark.parametrize("name", UNMASKED)
@pytest.mark.parametrize("label", ["uneven", "empty"])
def test_uneven_or_empty_shards_are_not_applicable_without_a_mask(name, label):
    _adapter(name)
    with pytest.raises(UnsupportedFeature, match="no mask"):
        run(f"{MODULE}:{name}", CASES[label])
