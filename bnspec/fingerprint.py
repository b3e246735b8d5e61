"""``bnspec fingerprint ADAPTER``: the knob values an adapter exhibits, inferred from probes.

The probes are the directed cases of every property (each built to separate some knobs). For each
knob, a value is *observed* when the declared profile with that knob set to it agrees with every
probe the adapter can run; the probe that rules the other values out is named beside it.
"""

from __future__ import annotations

from typing import Any

from bnspec.adapter import Adapter
from bnspec.attribution import Observation, alternatives, judge
from bnspec.errors import AdapterFailure, FrameworkError, SingleValueError, UnsupportedFeature
from bnspec.profiles import get_semantics
from bnspec.semantics import KNOBS
from bnspec.worker import Worker


def probes(seed: int) -> list[Any]:
    from bnspec.conformance.cases import PROPERTIES, generate

    return [generate(p, seed, i) for p in PROPERTIES for i in range(2)]


def fingerprint(adapter: Adapter, seed: int = 0) -> dict[str, Any]:
    declared = get_semantics(adapter.profile)
    observations = []
    worker = Worker(adapter)
    try:
        for case in probes(seed):
            try:
                adapter.check_supported(case)
                obs = Observation(result=worker.run(case))
            except UnsupportedFeature:
                continue
            except (FrameworkError, SingleValueError) as exc:
                obs = Observation(raised=str(exc))
            except AdapterFailure:
                continue
            observations.append((case, obs))
    finally:
        worker.close()
    knobs: dict[str, Any] = {}
    flips = alternatives(declared)
    for name in KNOBS:
        current = getattr(declared, name)
        candidates = [current] + [f[name] for f in flips if name in f]
        consistent, decided_by = [], ""
        for value in candidates:
            sem = declared.replace(**{name: value})
            bad = next((c for c, o in observations if not judge(c, sem, o).ok), None)
            if bad is None:
                consistent.append(value)
            elif value != current and not decided_by:
                decided_by = bad.label
        if len(candidates) == 1:
            observed = "not probed"
        elif not consistent:
            observed = "none of " + ", ".join(map(repr, candidates))
        elif len(consistent) == 1:
            observed = repr(consistent[0])
        else:
            observed = "undetermined: " + " | ".join(map(repr, consistent))
        knobs[name] = {"declared": current, "observed": observed,
                       "agrees": observed in (repr(current), "not probed") or (
                           observed.startswith("undetermined") and current in consistent),
                       "decided_by": decided_by}
    return {"adapter": adapter.name, "declared_profile": adapter.profile,
            "probes_run": len(observations), "knobs": knobs}
