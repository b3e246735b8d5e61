"""bnspec: BatchNorm semantics as an executable spec.

The public API is what this module re-exports. Importing bnspec never imports a framework, and
the names below load on first use (PEP 562), so `bnspec --help` does not even import NumPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Adapter": "bnspec.adapter", "Capabilities": "bnspec.adapter",
    "Case": "bnspec.case", "Result": "bnspec.case", "Step": "bnspec.case", "StepResult": "bnspec.case",
    "make_case": "bnspec.case",
    "BnspecError": "bnspec.errors", "UnsupportedFeature": "bnspec.errors",
    "PROFILES": "bnspec.profiles", "Profile": "bnspec.profiles", "get_profile": "bnspec.profiles",
    "get_semantics": "bnspec.profiles",
    "emulate": "bnspec.reference", "reference": "bnspec.reference",
    "KNOBS": "bnspec.semantics", "Semantics": "bnspec.semantics",
    "compare": "bnspec.tolerance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bnspec' has no attribute {name!r}")


if TYPE_CHECKING:
    from bnspec.adapter import Adapter, Capabilities
    from bnspec.case import Case, Result, Step, StepResult, make_case
    from bnspec.errors import BnspecError, UnsupportedFeature
    from bnspec.profiles import PROFILES, Profile, get_profile, get_semantics
    from bnspec.reference import emulate, reference
    from bnspec.semantics import KNOBS, Semantics
    from bnspec.tolerance import compare
