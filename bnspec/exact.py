"""Exact arithmetic with IEEE semantics where a value stops being finite.

A :data:`Num` is a :class:`fractions.Fraction`, or a float only where IEEE semantics produced a
NaN or an infinity (0/0, x/0, the n/(n-1) factor of one value per channel). The step plan and the
exact oracle compute with these; NumPy's float64 arithmetic in the reference gives the same
non-finite values in the same places.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import TypeAlias

Num: TypeAlias = Fraction | float
SQRT_BITS = 256


def finite(v: Num) -> bool:
    return isinstance(v, Fraction) or math.isfinite(v)


def mul(a: Num, b: Num) -> Num:
    if finite(a) and finite(b):
        return a * b
    return float(a) * float(b)


def add(a: Num, b: Num) -> Num:
    if finite(a) and finite(b):
        return a + b
    return float(a) + float(b)


def div(a: Num, b: Num) -> Num:
    if finite(a) and finite(b) and b != 0:
        return a / b
    if b == 0:
        a = float(a)
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return float(a) / float(b)


def total(values: Iterable[Num]) -> Num:
    acc: Num = Fraction(0)
    for v in values:
        acc = add(acc, v)
    return acc


def sqrt_fraction(v: Fraction, bits: int = SQRT_BITS) -> Fraction:
    """sqrt(v) to within a relative 2^-bits, from an integer square root."""
    if v < 0:
        raise ValueError("square root of a negative number")
    if v == 0:
        return Fraction(0)
    p, q = v.numerator, v.denominator
    return Fraction(math.isqrt(p * q << (2 * bits)), q << bits)


def sqrt(v: Num) -> Num:
    if isinstance(v, float):
        return math.sqrt(v) if v >= 0 else math.nan
    return sqrt_fraction(v)


def to_float(v: Num) -> float:
    return float(v)  # Fraction.__float__ rounds correctly (integer true division)
