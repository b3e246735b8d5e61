"""The step plan, checked against values worked out by hand from each knob's definition."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from bnspec.case import make_case
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.plan import make_plan
from bnspec.profiles import get_semantics
from bnspec.semantics import Semantics


def _case(shapes, modes, **kw):
    rng = np.random.default_rng(0)
    return make_case([rng.normal(size=s) for s in shapes], modes=modes, **kw)


def test_pytorch_training_step_normalizes_with_the_batch_and_feeds_n_over_n_minus_1():
    plan = make_plan(_case([(4, 3, 2)], ["train"], momentum=0.25), get_semantics("pytorch"))
    (step,) = plan.steps
    assert (step.n, step.source, step.needs_batch, step.updating) == (8, "batch", True, True)
    assert step.factor == Fraction(8, 7) and step.running_var_factor == Fraction(8, 7)
    assert step.normalize_var_factor == 1  # biased variance normalizes
    assert step.weight == Fraction(0.25) and step.debias == 1
    assert (step.w_mean, step.w_var) == (1, 1)


def test_cumulative_momentum_weighs_update_t_by_one_over_t():
    plan = make_plan(_case([(2, 1)] * 4, ["train", "eval", "train", "train"], momentum=None),
                     get_semantics("pytorch"))
    assert [s.weight for s in plan.steps] == [1, 0, Fraction(1, 2), Fraction(1, 3)]
    assert [s.updates for s in plan.steps] == [1, 1, 2, 3]
    assert plan.steps[1].source == "running" and (plan.steps[1].w_mean, plan.steps[1].w_var) == (0, 0)


def test_momentum_passed_in_the_other_convention_is_read_as_one_minus_the_float64_passed():
    case = _case([(2, 1)], ["train"], momentum=0.1)
    keras = get_semantics("keras")  # r <- m r + (1 - m) b: the adapter passes 1 - 0.1 as a float64
    assert make_plan(case, keras).steps[0].weight == 1 - Fraction(1.0 - 0.1)
    # a layer that reads the passed 0.9 as the batch weight (the mirror-image convention)
    misread = make_plan(case, keras.replace(momentum_weights="batch"), passed_as="running")
    assert misread.steps[0].weight == Fraction(1.0 - 0.1)


def test_debiased_ema_is_read_as_hidden_over_one_minus_decay_to_the_t():
    sem = Semantics(momentum_weights="batch", ema_debias=True)
    plan = make_plan(_case([(2, 1)] * 3, ["train", "train", "eval"], momentum=0.5), sem)
    assert [s.debias for s in plan.steps] == [Fraction(1, 2), Fraction(3, 4), Fraction(3, 4)]


def test_train_stats_running_normalizes_with_the_updated_statistics_and_their_weight():
    sem = Semantics(train_stats="running", ema_debias=True)
    (step,) = make_plan(_case([(3, 2)], ["train"], momentum=0.5), sem).steps
    assert step.source == "running" and step.debias == Fraction(1, 2)
    assert step.w_mean == 1  # weight 1/2 through a debias of 1/2
    assert step.w_var == Fraction(3, 2)  # times the unbiased factor 3/2 of the running variance


def test_momentum_zero_with_debiasing_divides_zero_by_zero():
    sem = Semantics(train_stats="running", ema_debias=True)
    (step,) = make_plan(_case([(3, 2)], ["train"], momentum=0.0), sem).steps
    assert step.debias == 0 and math.isnan(step.w_mean) and math.isnan(step.w_var)


def test_first_update_replace_copies_the_first_batch_then_blends():
    sem = get_semantics("pytorch").replace(first_update="replace")
    plan = make_plan(_case([(2, 1)] * 3, ["train"] * 3, momentum=0.1), sem)
    assert [s.weight for s in plan.steps] == [1, Fraction(0.1), Fraction(0.1)]


def test_frozen_training_step_uses_the_profiles_frozen_statistics_without_updating():
    case = _case([(4, 2)] * 2, ["train", "train"], frozen=[False, True])
    (_, frozen) = make_plan(case, get_semantics("keras")).steps
    assert (frozen.source, frozen.updating, frozen.needs_batch) == ("running", False, False)
    with pytest.raises(UnsupportedFeature):
        make_plan(case, get_semantics("pytorch"))  # no notion of a frozen layer


def test_one_value_per_channel_is_rejected_allowed_or_infinite_as_the_profile_says():
    case = _case([(1, 3)], ["train"])
    with pytest.raises(SingleValueError):
        make_plan(case, Semantics(single_value="error"))
    assert make_plan(case, Semantics(single_value="allowed")).steps[0].factor == 1
    assert make_plan(case, Semantics(single_value="nan")).steps[0].factor == math.inf
    # an eval step normalizing with running statistics needs no batch statistics: no rejection
    assert not make_plan(_case([(1, 3)], ["eval"]), Semantics()).steps[0].needs_batch


def test_untracked_layer_normalizes_every_step_with_the_batch_and_never_updates():
    plan = make_plan(_case([(4, 2)] * 2, ["train", "eval"], track_running_stats=False), Semantics())
    assert plan.track is False
    assert [(s.source, s.updating) for s in plan.steps] == [("batch", False), ("batch", False)]


def test_running_update_none_never_updates_but_still_normalizes_training_with_the_batch():
    (step,) = make_plan(_case([(4, 2)], ["train"]), Semantics(running_update="none")).steps
    assert (step.source, step.updating, step.weight) == ("batch", False, 0)


def test_effective_eps_is_the_case_eps_raised_to_the_floor():
    case = _case([(4, 2)], ["train"], eps=1e-6)
    assert make_plan(case, Semantics(eps_floor=1.001e-5)).eps == Fraction(1.001e-5)
    assert make_plan(case, Semantics()).eps == Fraction(1e-6)


def test_dtypes_follow_the_numerics_knobs():
    case = _case([(4, 2)], ["train"], dtype="float16", param_dtype="float32")
    d = make_plan(case, get_semantics("pytorch").replace(
        compute_dtype="promote_float32", normalize_dtype="input", output_dtype="parameters",
        state_dtype="promote_float32")).dtypes
    assert (d.compute, d.normalize, d.output, d.state, d.created) == (
        "float32", "float16", "float32", "float32", "float32")


def test_replica_plan_gives_each_shard_its_samples_share_and_factors():
    x = np.arange(6.0).reshape(6, 1)
    case = make_case(x, replicas=(1, 3, 0, 2))
    sem = Semantics(replica_stats="count_weighted", replica_running="own", single_value="allowed")
    reps = make_plan(case, sem).steps[0].replicas
    assert [(r.start, r.stop, r.n) for r in reps] == [(0, 1, 1), (1, 4, 3), (4, 4, 0), (4, 6, 2)]
    assert [r.share for r in reps] == [Fraction(1, 6), Fraction(1, 2), 0, Fraction(1, 3)]
    assert {r.sample_weight for r in reps if r.n} == {Fraction(1, 6)}  # by count: BN on the global batch
    assert [r.update for r in reps] == ["local", "local", None, "local"]  # the empty one keeps its copy
    assert [r.local_factor for r in reps] == [1, Fraction(3, 2), 1, 2]  # n = 1: single_value allowed
    assert reps[1].combined_factor == Fraction(6, 5)
    equal = make_plan(case, sem.replace(replica_stats="equal_weighted")).steps[0].replicas
    assert [r.share for r in equal] == [Fraction(1, 3), Fraction(1, 3), 0, Fraction(1, 3)]
