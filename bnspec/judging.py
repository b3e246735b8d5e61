"""Judging: does an observation agree with a profile? The comparison of one observation with one
:class:`~bnspec.semantics.Semantics`: expected errors must be observed errors, results must lie
within the profile's tolerance of its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bnspec.case import Case
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.records import Observation
from bnspec.reference import reference
from bnspec.semantics import MomentumWeights, Semantics
from bnspec.tolerance import Comparison, compare

# How a verdict that is not ok went wrong, where no quantity mismatched: the framework raised
# where the profile defines a result; it returned a result where the profile raises; the profile
# cannot express the case.
Departure = Literal["raised", "returned", "inexpressible"]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    comparison: Comparison | None
    note: str = ""
    # what went wrong (None when ok): the first quantity that mismatched ("running_var", ...)
    # or a Departure. A shrunk case must keep it to fail "the same way".
    kind: str | None = None


def judge(case: Case, sem: Semantics, obs: Observation, passed_as: MomentumWeights | None = None,
          *, quick: bool = False) -> Verdict:
    """Does the observation agree with ``sem``? Expected errors must be observed errors.
    ``quick``: stop at the first mismatch (the verdict is all the caller needs)."""
    with np.errstate(all="ignore"):  # NaN/Inf propagation is a property under test, not noise
        return _judge(case, sem, obs, passed_as, quick)


def _judge(case: Case, sem: Semantics, obs: Observation, passed_as: MomentumWeights | None,
           quick: bool) -> Verdict:
    try:
        expected = reference(case, sem, passed_as=passed_as)
    except SingleValueError as exc:
        if obs.raised is not None:
            return Verdict(True, None, f"raised as expected ({obs.raised})")
        return Verdict(False, None, f"expected an error ({exc}); the implementation returned a result", "returned")
    except UnsupportedFeature as exc:
        return Verdict(False, None, f"the profile cannot express this case: {exc}", "inexpressible")
    if obs.raised is not None:
        return Verdict(False, None, f"raised {obs.raised}; the profile defines a result", "raised")
    if obs.result is None:
        raise ValueError(f"nothing to judge: {obs.failure or obs.unsupported}")
    comparison = compare(case, sem, obs.result, expected, stop_at_mismatch=quick)
    worst = comparison.worst()
    mismatches = comparison.mismatches
    return Verdict(comparison.ok, comparison, worst.describe() if worst is not None else "",
                   mismatches[0].quantity if mismatches else None)
