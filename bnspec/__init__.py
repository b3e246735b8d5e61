"""bnspec: BatchNorm semantics as an executable spec.

The public API is what this module re-exports. Importing bnspec never imports a framework.
"""

from __future__ import annotations

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, Step, StepResult, make_case
from bnspec.errors import BnspecError, UnsupportedFeature
from bnspec.profiles import PROFILES, Profile, get_profile, get_semantics
from bnspec.reference import emulate, reference
from bnspec.semantics import KNOBS, Semantics
from bnspec.tolerance import compare

__version__ = "0.1.0"

__all__ = [
    "KNOBS", "PROFILES", "Adapter", "BnspecError", "Capabilities", "Case", "Profile", "Result",
    "Semantics", "Step", "StepResult", "UnsupportedFeature", "compare", "emulate", "get_profile",
    "get_semantics", "make_case", "reference",
]
