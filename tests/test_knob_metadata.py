"""Knob metadata lives in one place (bnspec.semantics.KNOBS); everything else reads it."""

from __future__ import annotations

from bnspec.attribution import alternatives
from bnspec.probes import DECISIONS, PROBES
from bnspec.profiles import get_semantics
from bnspec.semantics import ALL_KNOBS, KNOBS, REPLICA_KNOBS, SETTABLE_KNOBS, Semantics


def test_every_knob_names_its_deciding_probe_or_why_none_can():
    for name, knob in ALL_KNOBS.items():
        assert (knob.probe is None) != (knob.not_probed is None), name
        if knob.probe is not None:
            assert knob.probe in PROBES, (name, knob.probe)


def test_the_fingerprint_decides_each_knob_with_the_probe_its_metadata_names():
    for decision in DECISIONS:
        probes = {p for p, _quantities, _steps in decision.uses}
        for name in decision.knobs:
            assert ALL_KNOBS[name].probe in probes, (name, ALL_KNOBS[name].probe, probes)


def test_knobs_a_case_sets_are_never_flipped_and_are_settings_in_the_porting_guide():
    flipped = {k for flip in alternatives(Semantics()) for k in flip}
    assert not flipped & {k for k, v in KNOBS.items() if v.set_by_case}
    assert {"eps", "momentum", "momentum_weights"} == set(SETTABLE_KNOBS)


def test_alternatives_are_every_other_value_of_an_enumerated_knob():
    sem = get_semantics("pytorch")
    flips = alternatives(sem)
    assert {"variance_algorithm": "one_pass"} in flips
    assert {"variance_algorithm": "two_pass"} not in flips  # the current value is no flip
    assert {"eps_floor": 1.001e-5} in flips
    assert sum("initial_running" in f for f in flips) == 1  # (0, 1) is pytorch's own
    assert KNOBS["compute_dtype"].kind == "numerics" and KNOBS["train_stats"].kind == "semantics"


def test_replica_knobs_are_probed_with_replicas_and_flip_only_on_a_case_with_replicas():
    import numpy as np

    from bnspec.case import make_case

    assert not set(REPLICA_KNOBS) & set(KNOBS)
    for name, knob in REPLICA_KNOBS.items():
        assert knob.probe in PROBES and knob.flippable and knob.values, name
        assert PROBES[knob.probe].build(np.random.default_rng(0), "float32", "float32", 2).replicas, name
        assert getattr(Semantics(), name) in knob.values
    assert [k for k, v in REPLICA_KNOBS.items() if v.numerics] == ["replica_var"]
    case = make_case(np.arange(4.0).reshape(4, 1), replicas=(1, 3))
    assert {"replica_stats": "count_weighted"} in alternatives(Semantics(), case)
    assert not any(k in REPLICA_KNOBS for flip in alternatives(Semantics()) for k in flip)
    assert "replica_stats" not in Semantics().as_dict()  # a one-device layer's dict is as before
    assert Semantics.from_dict(Semantics(replica_var="pairwise").as_dict()).replica_var == "pairwise"
