"""A deliberately wrong implementation of any single knob, declaring the correct profile, is
caught by the properties and attributed to that knob."""

from __future__ import annotations

import pytest

from bnspec.attribution import explain
from bnspec.judging import judge
from bnspec.observe import observe
from bnspec.profiles import get_semantics
from bnspec.properties import PROPERTIES, generate
from bnspec.records import Explanation, KnobFlip, Status
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
            obs = observe(adapter, case)
            if obs.unsupported is not None:
                continue
            assert obs.failure is None, f"{case.label}: {obs.failure}"
            declared = adapter.declared_profile().semantics
            if not judge(case, declared, obs).ok:
                return case, obs, declared
    return None


@pytest.mark.parametrize("knob", sorted(WRONG))
def test_single_knob_wrong_implementation_is_caught_and_attributed_to_that_knob(knob):
    adapter = WRONG[knob]
    caught = _first_catch(adapter)
    assert caught is not None, f"no property catches a wrong {knob}"
    case, obs, declared = caught
    explanation = explain(case, declared, obs)
    assert isinstance(explanation, Explanation)
    assert explanation.flips(knob), f"{case.label}: explained by {explanation}, not {knob}"
    flip = next(f for alt in explanation for f in alt if f.knob == knob)
    assert flip == KnobFlip(knob, flip.observed, getattr(declared, knob)) and flip.observed != flip.declared


def test_a_correct_implementation_passes_every_property():
    from bnspec.adapters.reference import ADAPTER

    assert _first_catch(ADAPTER) is None


def test_an_unexplained_mismatch_is_an_empty_explanation():
    case = generate("train_output", 0, 0)
    declared = get_semantics("pytorch")
    obs = observe(bad.NAN_OUTPUT, case)  # NaN everywhere: no knob flip reproduces it
    assert not judge(case, declared, obs).ok
    explanation = explain(case, declared, obs, pairs=False)
    assert not explanation and explanation.knobs == () and explanation.to_json() == []


def test_observe_reports_what_the_framework_raised_and_bad_outputs_as_data():
    case = generate("train_output", 0, 0)
    assert observe(bad.SCRIPT_NAME, case).raised == ("RuntimeError: <script>alert('framework message')"
                                                       "</script> & <b>bold</b>")
    failure = observe(bad.WRONG_SHAPE, case).failure
    assert failure is not None and failure.kind == "bad_output" and "shape" in failure.message
    failure = observe(bad.IMPORT_ERROR, case).failure
    assert failure is not None and failure.kind == "import" and "imaginary_framework" in failure.message


def test_an_explanation_survives_json_with_its_tuple_values():
    explanation = Explanation.of([{"initial_running": ((0.0, 0.0), (0.0, 1.0))},
                                  {"running_update": ("none", "ema"), "train_stats": ("running", "batch")}])
    assert Explanation.from_json(explanation.to_json()) == explanation
    assert explanation.knobs == ("initial_running", "running_update", "train_stats")
    assert explanation.flips("train_stats") and not explanation.flips("eps")
    assert explanation.first_profile_change() == {"initial_running": (0.0, 0.0)}


def test_statuses_say_which_are_non_conformances():
    assert {s for s in Status if s.is_nonconformance} == {Status.MISMATCH, Status.FAILURE}
    assert Status("fail") is Status.MISMATCH and Status.FAILURE == "failure"


def test_a_mismatch_with_the_baseline_as_declared_profile_is_explained_once(monkeypatch):
    import bnspec.attribution as attribution

    case, obs, declared = _first_catch(bad.BIASED_RUNNING_VAR)
    calls = []
    real = attribution.explain
    monkeypatch.setattr(attribution, "explain", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    judgement = attribution.judge_observation(case, declared, declared, obs)
    assert len(calls) == 1
    assert not judgement.verdict.ok and not judgement.baseline_agrees
    assert judgement.explanation.flips("running_var_update")
    assert judgement.baseline_knobs == judgement.explanation.knobs == ("running_var_update",)
