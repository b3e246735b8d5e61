"""The step plan: one reading of the spec for one case, computed once.

ONNX's reference operators keep the maths (a small pure function) apart from the wrapper that
maps attributes onto it. bnspec does the same: :func:`make_plan` reads a :class:`Semantics` and a
:class:`Case` and says, for every step, which statistics normalize, whether the running
statistics update and with which exact weight, the n/(n-1) factors, the debias scale, the
effective eps and the dtypes the numerics knobs name. The float64 reference, the exact oracle and
the tolerance model consume the plan and keep only their arithmetic: none of them decides what a
step does.

Weights and factors are exact (:class:`fractions.Fraction`, or an IEEE float where a value stops
being finite: see :mod:`bnspec.exact`). The momentum an adapter passes is a float64 in its
*declared* convention (``passed_as``), so a weight derived from it as ``1 - m`` is exact in the
plan and rounded once where float arithmetic uses it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from fractions import Fraction

from bnspec.case import Case, Mode, Step
from bnspec.dtypes import more_precise
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.exact import Num, div, mul
from bnspec.semantics import AffineForm, EpsPlacement, MomentumWeights, Semantics, StatsSource, VarianceAlgorithm


@dataclass(frozen=True)
class Dtypes:
    """Where a profile's numerics knobs put the rounding, for this case's dtypes."""

    compute: str  # the reductions (batch mean and variance)
    normalize: str  # mean and 1/sqrt(var + eps) as they multiply x
    output: str  # y
    state: str  # the running statistics
    created: str  # the running statistics when loaded, before a wider batch promotes them
    algorithm: VarianceAlgorithm
    affine_form: AffineForm


@dataclass(frozen=True)
class StepPlan:
    """What the spec says one step does."""

    index: int
    mode: Mode
    frozen: bool
    n: int  # values per channel
    source: StatsSource  # the statistics that normalize this step
    needs_batch: bool  # the batch statistics are computed (they normalize or update)
    updating: bool  # the running statistics take this step's batch statistics
    updates: int  # updates so far, this step's included
    weight: Fraction  # the batch statistics' weight in this step's update (0: no update)
    debias: Fraction  # running statistics read after this step are hidden / debias (1: none)
    factor: Num  # n/(n-1); at n = 1: 1 (single_value allowed) or inf (nan); 1 without a batch
    running_var_factor: Num  # what the biased batch variance is multiplied by on its way in
    normalize_var_factor: Num  # what the biased batch variance is multiplied by to normalize
    # d(statistic that normalizes)/d(batch mean) and d(.)/d(biased batch variance): 1 and the
    # normalize factor for batch statistics, the (debiased) EMA weight for running statistics
    # that include this step's update, 0 for fixed running statistics.
    w_mean: Num
    w_var: Num


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepPlan, ...]
    eps: Fraction  # the eps that is added: the case's, raised to the profile's floor
    eps_placement: EpsPlacement
    track: bool  # the layer has running statistics at all
    dtypes: Dtypes
    passed_as: MomentumWeights  # the convention the case's momentum was translated into

    @property
    def eps_float(self) -> float:
        return float(self.eps)  # exact: the larger of two float64 values


def dtypes_of(sem: Semantics, case: Case) -> Dtypes:
    dtype, params = case.dtype, case.param_dtype
    compute = {
        "input": dtype,
        "float32": "float32",
        "promote_float32": more_precise(dtype, "float32"),
    }[sem.compute_dtype]
    state = {"input": dtype, "float32": "float32", "parameters": params,
             "promote_float32": more_precise(dtype, "float32")}[sem.state_dtype]
    output = {"input": dtype, "parameters": params, "state": state}[sem.output_dtype]
    normalize = dtype if sem.normalize_dtype == "input" else compute
    created = "float32" if sem.state_dtype == "promote_float32" else state
    return Dtypes(compute, normalize, output, state, created, sem.variance_algorithm, sem.affine_form)


def make_plan(case: Case, sem: Semantics, *, passed_as: MomentumWeights | None = None) -> Plan:
    """The plan of every step; raises :class:`SingleValueError` where the profile rejects one value
    per channel and :class:`UnsupportedFeature` where it cannot express the case."""
    key = (sem, passed_as or sem.momentum_weights)
    plans = _CACHE.setdefault(case, {})  # attribution asks for one case under many profiles
    if key not in plans:
        plans[key] = _plan(case, *key)
    return plans[key]


# Plans of the cases alive (a Case hashes by identity): a case's plans go when the case does.
_CACHE: weakref.WeakKeyDictionary[Case, dict[tuple[Semantics, str], Plan]] = weakref.WeakKeyDictionary()


def _plan(case: Case, sem: Semantics, passed_as: MomentumWeights) -> Plan:
    track = case.track_running_stats
    w_steady = batch_weight(case.momentum, sem, passed_as, 2)  # the EMA weight after step 1
    decay_power = (1 - w_steady) ** case.counter  # (1 - w_steady)^(counter + updates)
    updates = 0
    steps = []
    for i, step in enumerate(case.steps):
        n = step.x.size // step.x.shape[1]
        source = _stats_source(step, sem, track)
        updating = step.updates_running and track and sem.running_update == "ema"
        needs_batch = source != "running" or updating
        if needs_batch and n == 1 and sem.single_value == "error":
            raise SingleValueError(
                f"one value per channel in a batch of shape {step.x.shape} (single_value=error)"
            )
        factor: Num = Fraction(1)
        if needs_batch:
            factor = Fraction(n, n - 1) if n > 1 else (
                Fraction(1) if sem.single_value == "allowed" else math.inf)
        weight = Fraction(0)
        if updating:
            updates += 1
            weight = batch_weight(case.momentum, sem, passed_as, updates, case.counter)
            decay_power *= 1 - w_steady
        debias = 1 - decay_power if sem.ema_debias and updates + case.counter > 0 else Fraction(1)
        running_var_factor = factor if sem.running_var_update == "unbiased" else Fraction(1)
        normalize_var_factor = factor if sem.normalize_var == "unbiased" else Fraction(1)
        w_mean: Num
        w_var: Num
        if source == "running":
            # a decay of 1 (momentum 0) never debiases: 0/0, as in NumPy
            w_mean = div(weight, debias) if updating else Fraction(0)
            w_var = mul(w_mean, running_var_factor if updating else Fraction(1))
        else:
            w_mean, w_var = Fraction(1), normalize_var_factor
        steps.append(StepPlan(
            index=i, mode=step.mode, frozen=step.frozen, n=n, source=source,
            needs_batch=needs_batch, updating=updating, updates=updates, weight=weight,
            debias=debias, factor=factor, running_var_factor=running_var_factor,
            normalize_var_factor=normalize_var_factor, w_mean=w_mean, w_var=w_var,
        ))
    eps = max(Fraction(case.eps), Fraction(sem.effective_eps_floor))
    return Plan(tuple(steps), eps, sem.eps_placement, track, dtypes_of(sem, case), passed_as)


def counter_matters(case: Case, sem: Semantics) -> bool:
    """Does the case's update counter change what ``sem`` does with it: some step's EMA weight
    or debias differs from a fresh layer's (momentum=None's cumulative weight, a debiased EMA, a
    first update that replaces)? An adapter that cannot set the counter cannot express such a case."""
    if not case.counter:
        return False
    try:
        counted, fresh = make_plan(case, sem), make_plan(case.replace(counter=0), sem)
    except (SingleValueError, UnsupportedFeature):
        return False
    return any((a.weight, a.debias) != (b.weight, b.debias) for a, b in zip(counted.steps, fresh.steps, strict=True))


def batch_weight(momentum: float | None, sem: Semantics, passed_as: str, updates: int,
                 counter: int = 0) -> Fraction:
    """The exact weight of the batch statistic in update number ``updates`` of a layer whose
    counter stood at ``counter`` before the case.

    The adapter passes the case's momentum in its declared convention (``passed_as``), as a
    float64; the implementation reads that value in the profile's own convention."""
    if sem.first_update == "replace" and updates + counter == 1:
        return Fraction(1)
    if momentum is None:  # PyTorch momentum=None: the cumulative moving average
        return Fraction(1, counter + updates)
    passed = Fraction(momentum if passed_as == "batch" else 1.0 - momentum)
    return passed if sem.momentum_weights == "batch" else 1 - passed


def _stats_source(step: Step, sem: Semantics, track: bool) -> StatsSource:
    if step.mode == "train" and step.frozen:
        if sem.frozen_train_stats is None:  # even untracked: the case asks for a notion it lacks
            raise UnsupportedFeature("these semantics have no notion of a frozen layer")
        source = sem.frozen_train_stats
    else:
        source = sem.train_stats if step.mode == "train" else sem.eval_stats
    return source if track else "batch"
