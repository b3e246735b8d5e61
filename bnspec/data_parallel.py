"""The reports' "Data-parallel" section: the replicas_* matrix of the adapters that run replicas,
which of them give global-batch BatchNorm, and how far each declared profile lands from it on a
typical uneven split -- computed with the reference from the profiles (no framework runs).

Global-batch BN is BatchNorm on the concatenated batch: statistics combined by sample count,
every replica's running copy the same, dx the whole loss's gradient. What a profile gives instead
is measured on one fixed case (bnspec.replicas.typical_case: 3 replicas of 8, 5 and 3 samples),
as the largest |y - y_global| over y's spread and the largest relative gap of the running variance
after 24 steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnspec.case import Case
from bnspec.replicas import typical_case
from bnspec.semantics import REPLICA_KNOBS, Semantics

PREFIX = "replicas_"
GLOBAL = {"replica_stats": "count_weighted", "replica_running": "synchronized", "replica_grad": "global"}


def replica_properties(props: list[str]) -> list[str]:
    return [p for p in props if p.startswith(PREFIX)]


def one_device_properties(props: list[str]) -> list[str]:
    return [p for p in props if not p.startswith(PREFIX)]


def ran_any(adapter: dict[str, Any], props: list[str]) -> bool:
    """Whether any of ``props`` ran on the adapter (a cell other than n/a)."""
    return any((c := adapter["cells"].get(p)) and c["status"] != "not_applicable" for p in props)


def global_batch(sem: Semantics) -> bool:
    return all(getattr(sem, k) == v for k, v in GLOBAL.items())


def distance(sem: Semantics, case: Case | None = None) -> tuple[float, float]:
    """(max |y - y_global| / std(y_global) over the training steps, max relative gap of replica 0's
    running variance after the last training step) of ``sem`` against the same profile made
    global-batch."""
    from bnspec.reference import reference

    case = case or typical_case()
    ours = reference(case, sem)
    ref = reference(case, sem.replace(**GLOBAL))
    train = [i for i, s in enumerate(case.steps) if s.mode == "train"]
    dy = max(float(np.max(np.abs(ours.steps[i].y - ref.steps[i].y)) / np.std(ref.steps[i].y)) for i in train)
    last = train[-1]
    a, b = ours.steps[last].running_var, ref.steps[last].running_var
    dv = 0.0 if a is None or b is None else float(np.max(np.abs(a - b) / np.abs(b)))
    return dy, dv


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per adapter that ran a replicas_* case: its cells, and its declared profile's
    replica knobs, global-batch verdict and distance on the typical split."""
    from bnspec.profiles import PROFILES

    props = replica_properties(summary["properties"])
    case = typical_case()
    out = []
    for a in summary["adapters"]:
        if not props or not ran_any(a, props):
            continue
        profile = PROFILES.get(a["declared_profile"])
        row: dict[str, Any] = {"adapter": a, "cells": [a["cells"].get(p) for p in props], "knobs": "?",
                               "global": None, "dy": None, "dv": None}
        if profile is not None:
            sem = profile.semantics
            row["knobs"] = ", ".join(f"{k}={getattr(sem, k)}" for k in REPLICA_KNOBS)
            row["global"] = global_batch(sem)
            row["dy"], row["dv"] = distance(sem, case)
        out.append(row)
    return out


def percent(v: float | None) -> str:
    return "?" if v is None else "0" if v == 0 else f"{100 * v:.2g} %"


def markdown(summary: dict[str, Any], cell_text: Any, cached_mark: Any, md: Any) -> list[str]:
    props = replica_properties(summary["properties"])
    table = rows(summary)
    if not table:
        return []
    lines = ["", "## Data-parallel", "",
             "The batch split across replicas, one process or device each (the `replicas_*` properties). "
             "Global-batch BN is BatchNorm on the concatenated batch (statistics by count, synchronized running "
             "statistics, dx of the whole loss). Distance: the declared profile against its global-batch "
             f"self on {typical_case().label}, 24 training steps: the largest |Δy| over y's standard deviation, "
             "and the relative gap of the running variance.", "",
             "| adapter | declared profile | global-batch BN | Δy / std | Δ running var | " + " | ".join(props) + " |",
             "|---|---|---|---|---|" + "---|" * len(props)]
    for r in table:
        a = r["adapter"]
        verdict = "?" if r["global"] is None else "yes" if r["global"] else "no"
        cells = [cell_text(c) + cached_mark(c, summary["examples"]) if c else "" for c in r["cells"]]
        lines.append("| " + " | ".join(md(c) for c in [a["name"], a["declared_profile"], verdict, percent(r["dy"]),
                                                        percent(r["dv"]), *cells]) + " |")
    lines += ["", "Replica knobs of each declared profile: "
              + "; ".join(f"`{r['adapter']['declared_profile']}`: {r['knobs']}"
                          for r in _unique_profiles(table)) + "."]
    return lines


def _unique_profiles(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in table:
        seen.setdefault(r["adapter"]["declared_profile"], r)
    return list(seen.values())
