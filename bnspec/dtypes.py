"""Floating dtypes by name, their unit roundoff, and exact rounding into them."""

from __future__ import annotations

from typing import Literal

import numpy as np

from bnspec.errors import InvalidCase

DtypeName = Literal["float64", "float32", "float16", "bfloat16"]
DTYPES: tuple[DtypeName, ...] = ("float64", "float32", "float16", "bfloat16")

# Unit roundoff u = 2^-p for a p-bit significand (round to nearest).
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
# Bits of significand, a total order by precision.
_PRECISION = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}


def check_dtype(name: str) -> DtypeName:
    if name not in UNIT_ROUNDOFF:
        raise InvalidCase(f"unknown dtype {name!r}; available: {', '.join(DTYPES)}")
    return name  # type: ignore[return-value]


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype; bfloat16 comes from ml_dtypes (imported only when asked for)."""
    check_dtype(name)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def round_to(x: np.ndarray | float, name: str) -> np.ndarray:
    """Round to the nearest value of dtype `name`, returned as float64."""
    return np.asarray(x, dtype=np.float64).astype(np_dtype(name)).astype(np.float64)


def name_of(dtype: object) -> str:
    """The bnspec name of a NumPy (or ml_dtypes) dtype."""
    s = dtype if isinstance(dtype, str) else str(np.dtype(dtype))  # type: ignore[call-overload]
    check_dtype(s)
    return s


def more_precise(a: str, b: str) -> str:
    return a if _PRECISION[a] >= _PRECISION[b] else b


def unit_roundoff(name: str) -> float:
    return UNIT_ROUNDOFF[check_dtype(name)]
