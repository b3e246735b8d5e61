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
from typing import Literal

from bnspec.case import Case, Mode, Step
from bnspec.dtypes import more_precise
from bnspec.errors import SingleValueError, UnsupportedFeature
from bnspec.exact import Num, div, mul
from bnspec.semantics import (
    AffineForm,
    EpsPlacement,
    MomentumWeights,
    ReplicaGrad,
    ReplicaParamGrad,
    ReplicaRunning,
    ReplicaVar,
    Semantics,
    StatsSource,
    VarianceAlgorithm,
)

ReplicaSource = Literal["local", "combined"]  # a replica's own shard's statistics, or the combined ones


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
    replica_var: ReplicaVar = "two_pass"  # a combined variance (a case with replicas)


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
    replicas: tuple[ReplicaPlan, ...] = ()  # a case with replicas: each replica's part


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica's part of one step of a case with replicas.

    The combined statistics are mean = sum_r share_r mean_r and var = sum_r share_r (var_r +
    (mean_r - mean)^2): a weighted mean and variance in which each of replica r's values weighs
    share_r / n_r (``sample_weight``); by count this is BatchNorm on the concatenated batch."""

    index: int
    start: int  # its samples of the global batch: [start, stop) along axis 0
    stop: int
    n: int  # values per channel on this replica (0: an empty replica, which contributes nothing)
    share: Fraction  # its statistics' weight in the combined ones: n/N by count, 1/R' equally, 0 empty
    sample_weight: Fraction  # share / n: d(combined mean)/d(one of its values); 0 for an empty replica
    stats: ReplicaSource  # the batch statistics that normalize it (where the step's source is the batch)
    update: ReplicaSource | None  # what its running copy takes (None: no update this step)
    local_factor: Num  # n/(n-1) of its own shard (1 where its own statistics are not needed)
    combined_factor: Num  # n/(n-1) of the combined statistics, n as replica_count says
    normalize_var_factor: Num
    running_var_factor: Num
    depends: ReplicaSource | None  # the statistics the ones that normalize it move with (None: fixed)
    w_mean: Num  # as StepPlan's, against the statistics of ``depends``
    w_var: Num


@dataclass(frozen=True)
class ReplicaRules:
    """What a case with replicas does around the steps (the plan-wide replica knobs)."""

    count: int  # R
    running: ReplicaRunning
    grad: ReplicaGrad
    param_grad: ReplicaParamGrad


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepPlan, ...]
    eps: Fraction  # the eps that is added: the case's, raised to the profile's floor
    eps_placement: EpsPlacement
    track: bool  # the layer has running statistics at all
    dtypes: Dtypes
    passed_as: MomentumWeights  # the convention the case's momentum was translated into
    replica: ReplicaRules | None = None  # None: one device

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
    return Dtypes(compute, normalize, output, state, created, sem.variance_algorithm, sem.affine_form,
                  sem.replica_var)


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
        if needs_batch and n == 1 and sem.single_value == "error" and case.replicas is None:
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
        replicas = () if case.replicas is None else _replica_plans(case, sem, step, i, source, updating,
                                                                    weight, debias)
        steps.append(StepPlan(
            index=i, mode=step.mode, frozen=step.frozen, n=n, source=source,
            needs_batch=needs_batch, updating=updating, updates=updates, weight=weight,
            debias=debias, factor=factor, running_var_factor=running_var_factor,
            normalize_var_factor=normalize_var_factor, w_mean=w_mean, w_var=w_var, replicas=replicas,
        ))
    eps = max(Fraction(case.eps), Fraction(sem.effective_eps_floor))
    rules = None if case.replicas is None else ReplicaRules(
        len(case.replicas), sem.replica_running, sem.replica_grad, sem.replica_param_grad)
    return Plan(tuple(steps), eps, sem.eps_placement, track, dtypes_of(sem, case), passed_as, rules)


def _unbiased(n: int, sem: Semantics, where: str) -> Num:
    """n/(n-1), with one value per channel as single_value says (``where`` names the replica)."""
    if n > 1:
        return Fraction(n, n - 1)
    if sem.single_value == "error":
        raise SingleValueError(f"one value per channel on {where} (single_value=error)")
    return Fraction(1) if sem.single_value == "allowed" else math.inf


def _replica_plans(case: Case, sem: Semantics, step: Step, i: int, source: StatsSource, updating: bool,
                   weight: Fraction, debias: Fraction) -> tuple[ReplicaPlan, ...]:
    """Each replica's part of step ``i``. The combined statistics weigh each replica by its count
    (count_weighted; also a synchronized update under replica_stats none) or equally over the
    non-empty replicas (equal_weighted). An empty replica normalizes nothing, adds nothing to the
    combined statistics and keeps its running copy unless the copies are synchronized."""
    assert case.replicas is not None
    per_sample = step.x.size // (step.x.shape[0] * step.x.shape[1])
    counts = [k * per_sample for k in case.replicas]
    total = sum(counts)
    present = sum(1 for k in counts if k)
    equal = sem.replica_stats == "equal_weighted"
    stats: ReplicaSource = "local" if sem.replica_stats == "none" else "combined"
    synced = sem.replica_running == "synchronized"
    if updating and not synced and 0 in counts and (
            case.momentum is None or sem.ema_debias or sem.first_update == "replace"):
        raise UnsupportedFeature("an empty replica skips its update: its update counter would part from "
                                 "the others' (momentum=None, a debiased EMA, a first update that replaces)")
    plans = []
    for r, ((start, stop), n_r) in enumerate(zip(case.shards, counts, strict=True)):
        where = f"replica {r} of step {i} (batch shape {step.x.shape}, replicas {case.replicas})"
        share = (Fraction(1, present) if equal else Fraction(n_r, total)) if n_r else Fraction(0)
        update: ReplicaSource | None = None
        if updating:
            update = "combined" if synced else ("local" if n_r else None)
        normalizes = source == "batch" and n_r > 0
        needs_local = n_r > 0 and ((normalizes and stats == "local") or update == "local")
        needs_combined = (normalizes and stats == "combined") or update == "combined"
        local_factor = _unbiased(n_r, sem, where) if needs_local else Fraction(1)
        combined_factor: Num = Fraction(1)
        if needs_combined:
            if sem.replica_count == "local" and not n_r:
                raise UnsupportedFeature(f"replica_count=local: the empty {where} has no n for n/(n-1)")
            combined_factor = _unbiased(total if sem.replica_count == "global" else n_r, sem,
                                        "the global batch" if sem.replica_count == "global" else where)
        norm_factor = local_factor if stats == "local" else combined_factor
        run_factor = combined_factor if update == "combined" else local_factor
        normalize_var_factor = norm_factor if sem.normalize_var == "unbiased" else Fraction(1)
        running_var_factor = run_factor if sem.running_var_update == "unbiased" else Fraction(1)
        depends: ReplicaSource | None
        w_mean: Num
        w_var: Num
        if source == "batch":
            depends, w_mean, w_var = stats, Fraction(1), normalize_var_factor
        elif update is not None:
            depends = update
            w_mean = div(weight, debias)
            w_var = mul(w_mean, running_var_factor)
        else:
            depends, w_mean, w_var = None, Fraction(0), Fraction(0)
        plans.append(ReplicaPlan(
            index=r, start=start, stop=stop, n=n_r, share=share,
            sample_weight=share / n_r if n_r else Fraction(0), stats=stats, update=update,
            local_factor=local_factor, combined_factor=combined_factor,
            normalize_var_factor=normalize_var_factor, running_var_factor=running_var_factor,
            depends=depends, w_mean=w_mean, w_var=w_var,
        ))
    return tuple(plans)


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
