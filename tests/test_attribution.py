"""A deliberately wrong implementation of any single knob, declaring the correct profile, is
caught by the properties and attributed to that knob."""

from __future__ import annotations

import pytest

from bnspec.attribution import Observation, explain, judge
from bnspec.properties import PROPERTIES, generate
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.profiles import get_semantics
from tests.fixtures import bad_adapters as bad

WRONG = {
    "eps_placement": bad.EPS_OUTSIDE,
    "momentum_weights": bad.MOMENTUM_CONVENTION,
    "running_var_update": bad.BIASED_RUNNING_VAR,
    "normalize_var": bad.UNBIASED_NORMALIZE,
    "ema_debias": bad.NO_DEBIAS,
    "variance_algorithm": bad.ONE_PASS,
    "compute_dtype": bad.FLOAT16_REDUCTIONS,
    "eps_floor": bad.EPS_FLOOR,
    "first_update": bad.FIRST_REPLACE,
    "train_stats": bad.TRAIN_RUNNING,
    "eval_stats": bad.EVAL_BATCH,
    "frozen_train_stats": bad.FROZEN_BATCH,
    "running_update": bad.NO_UPDATE,
}


def _first_catch(adapter):
    for prop in PROPERTIES:
        for index in range(3):
            case = generate(prop, 0, index)
            try:
                adapter.check_supported(case)
                obs = Observation(result=adapter.run(case))
            except UnsupportedFeature:
                continue
            except SingleValueError as exc:
                obs = Observation(raised=str(exc))
            declared = get_semantics(adapter.profile)
            if not judge(case, declared, obs).ok:
                return case, obs, declared
    return None


@pytest.mark.parametrize("knob", sorted(WRONG))
def test_single_knob_wrong_implementation_is_caught_and_attributed_to_that_knob(knob):
    adapter = WRONG[knob]
    caught = _first_catch(adapter)
    assert caught is not None, f"no property catches a wrong {knob}"
    case, obs, declared = caught
    flips = explain(case, declared, obs)
    assert any(knob in f for f in flips), f"{case.label}: explained by {flips}, not {knob}"


def test_a_correct_implementation_passes_every_property():
    from bnspec.adapters.reference import ADAPTER

    assert _first_catch(ADAPTER) is None
