"""An explanation must be specific: a flip that would also accept a visibly wrong observation
explains nothing (issue 13: on large_offset, variance_algorithm: one_pass 'explained' an output set
to 0, scaled by 1.5, or a running variance tripled)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnspec.attribution import _mismatched_steps, candidate, explain, placebos
from bnspec.judging import judge
from bnspec.profiles import get_semantics
from bnspec.properties import generate
from bnspec.records import Observation
from bnspec.reference import emulate, reference

PYTORCH = get_semantics("pytorch")


def _observed(case, result, **change):  # type: ignore[no-untyped-def]
    steps = [dataclasses.replace(s, **{q: f(getattr(s, q)) for q, f in change.items()}) for s in result.steps]
    return Observation(result=dataclasses.replace(result, steps=steps))


FLAWS = {
    "output set to 0": {"y": lambda y: y * 0.0},
    "output scaled by 1.5": {"y": lambda y: y * 1.5},
    "running variance tripled": {"running_var": lambda v: v * 3.0},
}


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("flaw", FLAWS)
def test_a_flaw_no_knob_expresses_is_not_explained_by_a_wide_numerics_bound(flaw: str, index: int):
    case = generate("large_offset", 0, index)
    obs = _observed(case, reference(case, PYTORCH), **FLAWS[flaw])
    explanation = explain(case, PYTORCH, obs)
    assert "variance_algorithm" not in explanation.knobs, explanation
    assert not explanation.knobs, f"{flaw} is explained by {explanation}"


@pytest.mark.parametrize("prop", ["large_offset", "train_output", "running_stats", "estimator"])
@pytest.mark.parametrize("wrong", [{"variance_algorithm": "one_pass"}, {"running_var_update": "biased"},
                                   {"eps_placement": "outside_sqrt"}, {"momentum_weights": "running"}])
def test_every_explanation_found_rejects_the_placebos_of_its_own_expected_result(prop: str, wrong: dict):
    case = generate(prop, 0, 0)
    obs = Observation(result=emulate(case, PYTORCH.replace(**wrong)))
    steps = _mismatched_steps(case, PYTORCH, obs, "batch")  # where an explanation must be specific
    for alternative in explain(case, PYTORCH, obs).alternatives:
        held, flipped = candidate(case, PYTORCH, {f.knob: f.observed for f in alternative})
        for fake in placebos(Observation(result=reference(held, flipped)), steps):
            assert not judge(held, flipped, fake).ok, (alternative, prop)


def test_a_semantic_flaw_at_a_large_offset_is_still_found():
    case = generate("large_offset", 0, 0)
    wrong = PYTORCH.replace(running_var_update="biased")
    assert "running_var_update" in explain(case, PYTORCH, Observation(result=reference(case, wrong))).knobs


def test_placebos_differ_visibly_from_the_observation_and_skip_absent_quantities():
    case = generate("affine_off", 0, 0)
    obs = Observation(result=reference(case, PYTORCH))
    fakes = placebos(obs)
    assert len(fakes) == 5 * len(obs.result.steps)
    for fake in fakes:
        assert any(not np.array_equal(getattr(a, q), getattr(b, q), equal_nan=True)
                   for a, b in zip(fake.result.steps, obs.result.steps, strict=True)
                   for q in ("y", "running_var", "running_mean") if getattr(a, q) is not None)
    assert placebos(Observation(raised="ValueError: one value")) == []
