"""Accuracy: how close an implementation comes to the exact result where the tolerance model
rightly accepts it. A finding beside conformance, never a failure.

Each case is fixed (no seed) and aimed at a known weakness: a constant channel in training (the
variance is 0, so y is beta exactly, and a 1-ulp error in the mean is divided by sqrt(eps)), a
near-constant one, data far from zero in training and in eval (one-pass variance, the folded
affine form), a constant eval channel at the running mean (the folded form again), and a large
float16 channel (4096 values whose float16 sum overflows unless accumulated wider).

The error is that of y against the exact result of the implementation's own declared profile, per
channel, in units of the input dtype's roundoff times the channel's output scale |gamma| + |beta|:
"3" is a few roundoffs, "250,000" is a visibly wrong digit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnspec.case import Case, Result, make_case
from bnspec.dtypes import unit_roundoff
from bnspec.errors import BnspecError
from bnspec.reference import reference
from bnspec.semantics import Semantics

_C = 8
_K = np.arange(_C)
# exact in float16 and float32; beta has bits below the spacing of 3e4 (see probes.affine_form)
_GAMMA = 1 + _K / 8
_BETA = _K / 4 - 1 + (2 * _K + 1) * 2.0**-12


def _case(xs: list[np.ndarray], modes: list[str], label: str, dtype: str = "float32", **kw: object) -> Case:
    return make_case(xs, modes=modes, gamma=_GAMMA, beta=_BETA, eps=1e-5, momentum=0.1,  # type: ignore[arg-type]
                     dtype=dtype, param_dtype="float32", label=label, **kw)  # type: ignore[arg-type]


def _constant_train() -> Case:
    x = np.broadcast_to(1000.1 * (1 + _K / 16), (64, _C)).copy()
    return _case([x], ["train"], "64 equal values per channel near 1000 in training: y = beta")


def _near_constant_train() -> Case:
    rng = np.random.default_rng(1)
    x = 1000.1 * (1 + _K / 16) + rng.normal(0, 1e-3, (64, _C))
    return _case([x], ["train"], "64 values near 1000 with std 1e-3 in training")


def _large_offset_train() -> Case:
    rng = np.random.default_rng(2)
    return _case([3e4 + rng.normal(0, 1, (64, _C))], ["train"], "mean/std 3e4 in training")


def _large_offset_eval() -> Case:
    rng = np.random.default_rng(3)
    return _case([3e4 + rng.normal(0, 1, (64, _C))], ["eval"], "mean/std 3e4 in eval",
                 running_mean=np.full(_C, 3e4), running_var=np.ones(_C))


def _constant_eval() -> Case:
    return _case([np.full((64, _C), 3e4)], ["eval"], "eval on channels equal to a running mean of 3e4: y = beta",
                 running_mean=np.full(_C, 3e4), running_var=0.5 + _K / 16)


def _float16_large() -> Case:
    rng = np.random.default_rng(4)
    x = 32 + np.round(rng.normal(0, 1, (4096, _C)) * 64) / 64  # on the float16 grid; sum ~1.3e5
    return _case([x], ["train"], "4096 float16 values near 32 per channel in training", dtype="float16")


@dataclass(frozen=True)
class AccuracyCase:
    name: str
    doc: str
    build: Callable[[], Case]


ACCURACY_CASES: dict[str, AccuracyCase] = {c.name: c for c in [
    AccuracyCase("constant", "a constant channel in training (variance 0: y = beta)", _constant_train),
    AccuracyCase("near_constant", "std 1e-3 at mean 1000 in training", _near_constant_train),
    AccuracyCase("offset_train", "mean/std 3e4 in training", _large_offset_train),
    AccuracyCase("offset_eval", "mean/std 3e4 in eval with exact running statistics", _large_offset_eval),
    AccuracyCase("constant_eval", "eval on channels equal to the running mean 3e4 (y = beta)", _constant_eval),
    AccuracyCase("float16_large", "4096 float16 values near 32 per channel (the float16 sum overflows)",
                 _float16_large),
]}


def at_rank(case: Case, rank: int) -> Case:
    """The same case with trailing spatial extents of 1: the same values per channel."""
    steps = tuple(dataclasses.replace(s, x=s.x.reshape(s.x.shape + (1,) * (rank - s.x.ndim)))
                  for s in case.steps)
    return case.replace(steps=steps)


def accuracy_error(case: Case, semantics: Semantics, result: Result) -> float:
    """The worst y error of ``result`` against ``semantics``' exact result, in units of the input
    dtype's roundoff times each channel's |gamma| + |beta| (inf where y is not finite and the
    exact result is)."""
    try:
        with np.errstate(all="ignore"):
            exact = reference(case, semantics)
    except BnspecError:
        return math.nan
    scale = (np.abs(case.gamma) + np.abs(case.beta)) if case.gamma is not None and case.beta is not None \
        else np.ones(case.num_features)
    u = unit_roundoff(case.dtype)
    worst = 0.0
    for obs, exp in zip(result.steps, exact.steps, strict=True):
        y, e = np.asarray(obs.y, dtype=np.float64), exp.y
        if y.shape != e.shape:
            return math.inf
        with np.errstate(all="ignore"):
            err = np.abs(np.moveaxis(y - e, 1, 0).reshape(case.num_features, -1)).max(axis=1) / (u * scale)
        err = np.where(np.isnan(err), math.inf, err)
        worst = max(worst, float(err.max()))
    return worst
