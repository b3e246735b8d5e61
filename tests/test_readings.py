"""Explanations with many causes: readings (the case as an implementation holds it), the update
counter, the beam search beyond pairs, numerics flips that must show in the rounding, and the
margin an explanation reports."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from bnspec.attribution import WARMED, candidate, explain, judge_observation, margin, readings
from bnspec.case import make_case
from bnspec.plan import make_plan
from bnspec.profiles import get_semantics
from bnspec.properties import PROPERTIES, generate
from bnspec.records import Observation
from bnspec.reference import emulate, reference

PYTORCH = get_semantics("pytorch")


def _observed(prop: str, index: int, flip: dict) -> tuple:
    case = generate(prop, 0, index)
    held, sem = candidate(case, PYTORCH, flip)
    return case, Observation(result=emulate(held, sem))


def _alternatives(explanation) -> list[dict]:
    return [{f.knob: f.observed for f in alt} for alt in explanation.alternatives]


def test_the_counter_sets_the_cumulative_weight_and_the_debias():
    x = np.arange(8.0).reshape(4, 2)
    fresh = make_plan(make_case([x, x], momentum=None), PYTORCH)
    trained = make_plan(make_case([x, x], momentum=None, counter=3), PYTORCH)
    assert [s.weight for s in fresh.steps] == [Fraction(1), Fraction(1, 2)]
    assert [s.weight for s in trained.steps] == [Fraction(1, 4), Fraction(1, 5)]
    haiku = get_semantics("haiku")
    plan = make_plan(make_case([x], modes="eval", momentum=0.5, counter=2), haiku)
    assert plan.steps[0].debias == 1 - Fraction(1, 2) ** 2  # read before any update: debiased already


def test_a_fresh_counter_keeps_old_case_ids():
    x = np.ones((2, 1))
    assert make_case(x).case_id() == make_case(x, counter=0).case_id() != make_case(x, counter=1).case_id()


def test_eps_held_as_a_float32_attribute_is_a_reading_not_float32_reductions():
    case = generate("running_stats", 0, 1)
    eps32 = float(np.float32(case.eps))
    case, obs = _observed("running_stats", 1, {"eps": eps32})
    # compute_dtype: float32 would accept it by its wider bound, but the observation sits far
    # nearer the float64 rounding than the float32 one: it is not the explanation
    assert _alternatives(explain(case, PYTORCH, obs)) == [{"eps": eps32}]


def test_three_causes_at_once_are_found_beyond_pairs():
    flip = {"running_var_update": "biased", "initial_state": WARMED, "momentum": 0.5}
    case, obs = _observed("cumulative", 0, flip)
    judgement = judge_observation(case, PYTORCH, PYTORCH, obs)
    assert flip in _alternatives(judgement.explanation)
    fit, placebo = judgement.margins[0]
    assert fit is not None and fit <= 1.0 and placebo is not None and placebo > 1.0


def test_train_as_eval_with_float32_attributes_is_one_explanation():
    case = generate("running_stats", 0, 1)
    flip = {"running_update": "none", "train_stats": "running", "eps": float(np.float32(case.eps))}
    case, obs = _observed("running_stats", 1, flip)
    assert flip in _alternatives(explain(case, PYTORCH, obs))


def test_a_substituted_default_momentum_is_named():
    case = generate("eval_output", 0, 0)
    wrong = 0.01 if case.momentum != 0.01 else 0.1
    case, obs = _observed("eval_output", 0, {"momentum": wrong})
    assert {"momentum": wrong} in _alternatives(explain(case, PYTORCH, obs))


def test_readings_offer_what_momentum_none_becomes_for_a_trained_counter():
    case = generate("cumulative", 0, 1)
    assert case.counter == 7
    held = {r["momentum"] for r in readings(case) if "momentum" in r}
    assert 1.0 / 8 in held and 1.0 / 9 in held


def test_a_flaw_no_reading_expresses_gets_no_explanation_and_a_residual():
    case = generate("running_stats", 0, 1)
    result = reference(case, PYTORCH)
    steps = list(result.steps)
    steps[5] = type(steps[5])(**{**steps[5].__dict__, "running_var": steps[5].running_var * 1.3})
    obs = Observation(result=type(result)(steps, result.meta))
    judgement = judge_observation(case, PYTORCH, PYTORCH, obs)
    assert not judgement.explanation and judgement.closest_ratio is not None and judgement.closest_ratio > 1


def test_the_margin_of_the_exact_explanation():
    case, obs = _observed("train_output", 0, {"running_var_update": "biased"})
    fit, placebo = margin(case, PYTORCH, {"running_var_update": "biased"}, obs)
    assert fit is not None and fit <= 1.0
    assert placebo is None or placebo > 1.0


# estimator and the 200-step running_stats trajectories keep rank 2 (batches of 2, and 200 steps
# of the reference per flip); half_precision's large channels are rank 4 by construction.
@pytest.mark.parametrize("prop", [p for p in PROPERTIES if p not in ("estimator", "half_precision", "running_stats")])
def test_any_four_examples_of_a_property_hold_every_rank(prop: str):
    assert {generate(prop, 0, i).rank for i in range(4)} == {2, 3, 4, 5}


def test_the_short_running_statistics_trajectories_cycle_the_ranks():
    assert {generate("running_stats", 0, i).rank for i in (1, 3, 5, 7)} >= {3, 5}


def test_step_plans_come_in_every_order():
    plans = {tuple(s.mode for s in generate("eval_output", 0, i).steps) for i in range(3)}
    assert ("eval", "eval", "eval") in plans and ("eval", "train", "eval") in plans


def test_half_precision_has_channels_where_a_float16_sum_overflows():
    case = generate("half_precision", 0, 0)
    n = case.steps[0].x.size // case.num_features
    assert case.dtype == "float16" and n >= 4096
    assert float(np.abs(case.steps[0].x).sum(axis=(0, 2, 3)).max()) > 65504  # float16's largest
