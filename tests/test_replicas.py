"""Data-parallel BatchNorm (Case.replicas and the replica knobs), checked against values worked
out by hand: one channel, small integers, so every statistic is a readable fraction."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from bnspec.attribution import explain
from bnspec.case import make_case
from bnspec.errors import InvalidCase, SingleValueError
from bnspec.judging import judge
from bnspec.oracle import oracle
from bnspec.plan import make_plan
from bnspec.profiles import get_semantics
from bnspec.properties import PROPERTIES, generate
from bnspec.records import Observation
from bnspec.reference import emulate, reference
from bnspec.replicas import replica_case
from bnspec.tolerance import compare

PYTORCH = get_semantics("pytorch")
SYNC = PYTORCH.replace(replica_stats="count_weighted", replica_running="synchronized")
X = np.array([[1.0], [3.0], [10.0], [14.0]])  # shards (2, 2): means 2 and 12, variances 1 and 4


def _case(x=X, replicas=(2, 2), **kw):
    kw.setdefault("momentum", 0.5)
    return make_case(x, replicas=replicas, **kw)


def _one(res, q, step=0):
    return getattr(res.steps[step], q)


def test_an_even_split_with_count_weighted_statistics_is_one_device_batchnorm_exactly():
    g = np.array([[1.0], [-2.0], [0.5], [3.0]])
    split = oracle(_case(grad_outputs=[g]), SYNC)
    whole = oracle(make_case(X, momentum=0.5, grad_outputs=[g]), PYTORCH)
    for q in ("y", "batch_mean", "batch_var", "running_mean", "running_var", "dx", "dgamma", "dbeta"):
        np.testing.assert_array_equal(_one(split, q), _one(whole, q), err_msg=q)
    assert _one(split, "batch_mean")[0] == 7.0 and _one(split, "batch_var")[0] == 27.5  # (36+16+9+49)/4


def test_uneven_split_weighted_equally_moves_the_mean_by_one_and_the_variance_by_a_third():
    x = np.array([[0.0], [2.0], [4.0], [6.0]])  # shards [0] and [2, 4, 6]
    by_count = oracle(_case(x, (1, 3)), SYNC)
    equally = oracle(_case(x, (1, 3)), SYNC.replace(replica_stats="equal_weighted"))
    assert (_one(by_count, "batch_mean")[0], _one(by_count, "batch_var")[0]) == (3.0, 5.0)
    # mean (0 + 4)/2 = 2; var 1/2 (0 + (0-2)^2) + 1/2 (8/3 + (4-2)^2) = 16/3
    assert _one(equally, "batch_mean")[0] == 2.0 and _one(equally, "batch_var")[0] == float(Fraction(16, 3))
    plan = make_plan(_case(x, (1, 3)), SYNC.replace(replica_stats="equal_weighted"))
    shares = [rp.share for rp in plan.steps[0].replicas]
    assert shares == [Fraction(1, 2), Fraction(1, 2)]


def test_replica_stats_none_normalizes_each_shard_with_its_own_statistics():
    res = reference(_case(eps=0.0), PYTORCH)
    np.testing.assert_array_equal(_one(res, "y").ravel(), [-1.0, 1.0, -1.0, 1.0])
    assert _one(res, "batch_mean")[0] == 2.0 and _one(res, "batch_var")[0] == 1.0  # replica 0's


@pytest.mark.parametrize(("running", "means", "variances"), [
    # own: (0 + 2)/2 and (0 + 12)/2; (1 + 1*2)/2 and (1 + 4*2)/2 (n/(n-1) = 2)
    ("own", [1.0, 6.0], [1.5, 4.5]),
    # synchronized: the global batch's mean 7 and variance 27.5 * 4/3 = 110/3
    ("synchronized", [3.5, 3.5], [float(Fraction(113, 6))] * 2),
    # mean: the own copies averaged
    ("mean", [3.5, 3.5], [3.0, 3.0]),
])
def test_running_statistics_after_one_step_follow_replica_running(running, means, variances):
    sem = PYTORCH.replace(replica_running=running)
    (step,) = oracle(_case(), sem).steps
    assert step.replica_running_mean.ravel().tolist() == means
    assert step.replica_running_var.ravel().tolist() == variances
    assert step.running_mean[0] == means[0]  # the layer's: replica 0's copy


def test_replica0_broadcasts_its_copy_before_the_next_step():
    case = make_case([X, X], replicas=(2, 2), momentum=0.5)
    first, second = oracle(case, PYTORCH.replace(replica_running="replica0")).steps
    assert first.replica_running_mean.ravel().tolist() == [1.0, 6.0]  # own, until the next forward
    # both start from replica 0's (1, 1.5): (1 + 2)/2, (1 + 12)/2; (1.5 + 2)/2, (1.5 + 8)/2
    assert second.replica_running_mean.ravel().tolist() == [1.5, 6.5]
    assert second.replica_running_var.ravel().tolist() == [1.75, 4.75]


def test_a_one_sample_replica_follows_single_value_per_replica():
    x = np.array([[5.0], [0.0], [2.0], [4.0]])
    with pytest.raises(SingleValueError, match="replica 0"):
        make_plan(_case(x, (1, 3)), PYTORCH)
    (step,) = oracle(_case(x, (1, 3)), PYTORCH.replace(single_value="allowed")).steps
    assert step.y[0, 0] == 0.0  # its own mean is its value
    assert step.replica_running_var[0, 0] == 0.5  # (1 + 0 * 1)/2: the factor is 1
    assert make_plan(_case(x, (1, 3)), SYNC).steps[0].replicas[0].combined_factor == Fraction(4, 3)


def test_an_empty_replica_contributes_nothing_and_keeps_its_copy():
    res = oracle(_case(replicas=(0, 4)), PYTORCH)
    whole = oracle(make_case(X, momentum=0.5), PYTORCH)
    np.testing.assert_array_equal(_one(res, "y"), _one(whole, "y"))
    assert _one(res, "batch_mean") is None  # replica 0 computed nothing
    assert _one(res, "replica_running_mean").ravel().tolist() == [0.0, 3.5]
    synced = oracle(_case(replicas=(0, 4)), SYNC)
    assert _one(synced, "running_mean")[0] == 3.5 and _one(synced, "batch_mean")[0] == 7.0


def test_local_gradients_ignore_the_other_replicas_loss():
    g = np.array([[1.0], [0.0], [0.0], [0.0]])  # only replica 0's loss
    local = oracle(_case(grad_outputs=[g]), SYNC.replace(replica_grad="local"))
    glob = oracle(_case(grad_outputs=[g]), SYNC)
    whole = oracle(make_case(X, momentum=0.5, grad_outputs=[g]), PYTORCH)
    np.testing.assert_array_equal(_one(glob, "dx"), _one(whole, "dx"))
    assert np.all(_one(local, "dx")[2:] == 0.0) and np.all(_one(glob, "dx")[2:] != 0.0)
    np.testing.assert_array_equal(_one(local, "dx")[:2], _one(glob, "dx")[:2])  # its own values: the same terms
    averaged = oracle(_case(grad_outputs=[g]), SYNC.replace(replica_param_grad="mean"))
    assert _one(averaged, "dbeta")[0] == 0.5 and _one(glob, "dbeta")[0] == 1.0


def test_local_parameter_gradients_are_replica_0s_own_share():
    # dy = 1 everywhere: dbeta is each replica's count of values; replica 0 holds 2 of the 4
    g = np.ones((4, 1))
    summed = oracle(_case(grad_outputs=[g]), SYNC)
    own = oracle(_case(grad_outputs=[g]), SYNC.replace(replica_param_grad="local"))
    assert _one(summed, "dbeta")[0] == 4.0 and _one(own, "dbeta")[0] == 2.0
    np.testing.assert_allclose(_one(reference(_case(grad_outputs=[g]), SYNC.replace(replica_param_grad="local")),
                                    "dbeta"), [2.0])
    empty_first = oracle(_case(grad_outputs=[g], replicas=(0, 4)), SYNC.replace(replica_param_grad="local"))
    assert _one(empty_first, "dbeta")[0] == 0.0  # replica 0 holds nothing: its share is 0
    case = _case(grad_outputs=[g])
    assert compare(case, SYNC.replace(replica_param_grad="local"), own).ok
    assert not compare(case, SYNC, own).ok


def test_a_replica_case_shrinks_to_fewer_replicas_and_smaller_shards():
    from bnspec.shrink import reduce, shrink

    case = generate("replicas_uneven", 0, 1)
    cut = reduce(case, 0, 1, (1, 2), 1, ())
    assert cut.replicas == (1, 2) and cut.steps[0].x.shape[0] == 3
    lo = case.shards[1][0]
    np.testing.assert_array_equal(cut.steps[0].x[1:, 0], case.steps[0].x[lo:lo + 2, 0])
    small = shrink(case, lambda k: k.replicas is not None and len(k.replicas) >= 2 and sum(k.replicas) >= 3)
    assert small.replicas is not None and len(small.replicas) == 2 and sum(small.replicas) == 3


def test_one_pass_combined_variance_cancels_at_a_large_offset_in_float32():
    x = (1e4 + np.array([1.0, -1.0, 1.0, -1.0])).reshape(4, 1)  # variance 1; E[x^2] = 1e8 + 1
    case = _case(x, dtype="float32")
    two = SYNC.replace(compute_dtype="input")
    one = two.replace(replica_var="one_pass")
    assert _one(emulate(case, two), "batch_var")[0] == 1.0
    cancelled = _one(emulate(case, one), "batch_var")[0]
    assert abs(cancelled - 1.0) >= 0.5  # 1e8 + 1 is not a float32: the 1 is lost
    assert not compare(case, two, emulate(case, one)).ok  # visibly off from two_pass
    assert compare(case, one, emulate(case, one)).ok  # within its own profile's bounds
    assert compare(case, two.replace(replica_var="pairwise"), emulate(case, two.replace(replica_var="pairwise"))).ok


def test_replica_splits_are_validated_in_one_line():
    with pytest.raises(InvalidCase, match=r"replicas \(2, 1\) hold 3 samples, x has 4"):
        _case(replicas=(2, 1))
    with pytest.raises(InvalidCase, match="tuple of shard sizes"):
        _case(replicas=(5, -1))
    case = _case(replicas=(1, 0, 3))
    assert case.to_dict()["replicas"] == [1, 0, 3]
    assert type(case).from_dict(case.to_dict()).replicas == (1, 0, 3)


def test_one_device_cases_serialize_and_plan_as_before():
    for prop in PROPERTIES:
        case = generate(prop, 0, 0)
        if prop.startswith("replicas_"):
            assert case.replicas is not None
            continue
        assert "replicas" not in case.to_dict()
        try:
            plan = make_plan(case, PYTORCH)
        except Exception:  # noqa: BLE001 - what a profile rejects is not this test's business
            continue
        assert plan.replica is None and all(sp.replicas == () for sp in plan.steps)
        assert all(s.replica_running_mean is None for s in reference(case, PYTORCH).steps)


@pytest.mark.parametrize("prop", ["train_output", "running_stats", "gradients", "eval_output"])
def test_one_replica_is_one_device_exactly(prop):
    case = generate(prop, 0, 1)
    one = oracle(case.replace(replicas=(case.steps[0].x.shape[0],)), SYNC)
    whole = oracle(case, PYTORCH)
    for a, b in zip(one.steps, whole.steps, strict=True):
        for q in a.QUANTITIES:
            if getattr(b, q) is not None:
                np.testing.assert_array_equal(getattr(a, q), getattr(b, q), err_msg=q)


@pytest.mark.parametrize(("wrong", "knob"), [({"replica_stats": "equal_weighted"}, "replica_stats"),
                                             ({"replica_running": "replica0"}, "replica_running")])
def test_a_wrong_replica_implementation_is_caught_and_attributed_to_its_knob(wrong, knob):
    declared = SYNC.replace(single_value="allowed")  # a one-sample shard's own statistics are defined
    case = replica_case(np.random.default_rng(3), 1)  # uneven, with gradients
    assert len(set(case.replicas)) > 1
    obs = Observation(result=reference(case, declared.replace(**wrong)))
    assert not judge(case, declared, obs).ok
    explanation = explain(case, declared, obs, pairs=False)
    assert explanation.flips(knob), f"explained by {explanation}, not {knob}"
