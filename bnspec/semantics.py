"""The spec: :class:`Semantics`, a frozen set of named BatchNorm knobs.

The knob names are public vocabulary: they appear in reports, fingerprints and ``bnspec diff``.
Each knob is documented in :data:`KNOBS`; a test checks that the table and the dataclass agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from bnspec.errors import InvalidSemantics

EpsPlacement = Literal["inside_sqrt", "outside_sqrt"]
MomentumWeights = Literal["batch", "running"]
Estimator = Literal["biased", "unbiased"]
FirstUpdate = Literal["ema", "replace"]
RunningUpdate = Literal["ema", "none"]
StatsSource = Literal["batch", "running"]
VarianceAlgorithm = Literal["two_pass", "one_pass", "one_pass_clamped"]
ComputeDtype = Literal["input", "float32", "promote_float32"]
NormalizeDtype = Literal["input", "compute"]
OutputDtype = Literal["input", "parameters", "state"]
StateDtype = Literal["input", "float32", "parameters", "promote_float32"]
SingleValue = Literal["error", "allowed", "nan"]
AffineForm = Literal["centered", "folded"]
ReplicaStats = Literal["none", "count_weighted", "equal_weighted"]
ReplicaVar = Literal["two_pass", "one_pass", "pairwise"]
ReplicaRunning = Literal["own", "synchronized", "replica0", "mean"]
ReplicaCount = Literal["global", "local"]
ReplicaGrad = Literal["global", "local"]
ReplicaParamGrad = Literal["sum", "mean", "local"]


KnobKind = Literal["semantics", "numerics"]

# TF's fused-kernel eps floor: the one eps_floor value worth flipping to or probing.
EPS_FLOOR_TF = 1.001e-5


@dataclass(frozen=True)
class Knob:
    """One knob and everything the rest of bnspec needs to know about it (attribution, the
    fingerprint, ``bnspec diff`` and the reports read it from here, nowhere else)."""

    name: str
    doc: str
    values: tuple[Any, ...] | None  # None: a number (validated in Semantics.__post_init__)
    numerics: bool = False  # numerics knobs change rounding, not exact float64 semantics
    # The values worth trying as an alternative (attribution flips, fingerprint candidates) for
    # a knob that takes a number; an enumerated knob's alternatives are its values.
    candidates: tuple[Any, ...] | None = None
    # A Case passes this knob's value explicitly (eps, momentum): never flipped, never probed.
    set_by_case: bool = False
    # A port removes a difference in this knob by what it passes (eps, momentum, and the
    # momentum convention by translating the value): `bnspec diff` lists it as a setting.
    settable: bool = False
    # The fingerprint probe that decides it (bnspec.fingerprint.PROBES), or why none can.
    probe: str | None = None
    not_probed: str | None = None

    @property
    def kind(self) -> KnobKind:
        return "numerics" if self.numerics else "semantics"

    @property
    def flippable(self) -> bool:
        """Attribution tries other values of this knob."""
        return not self.set_by_case and self.alternatives_of(None) != ()

    def alternatives_of(self, current: Any) -> tuple[Any, ...]:
        """The values worth telling apart from ``current``, ``current`` excluded."""
        values = self.values if self.values is not None else self.candidates
        return tuple(v for v in (values or ()) if v != current)


_PASSED = ("every case passes {} explicitly; a default is not observable through an adapter")

KNOBS: dict[str, Knob] = {
    k.name: k
    for k in [
        Knob("eps", "the epsilon added to the variance (a float >= 0)", None, set_by_case=True,
             settable=True, not_probed=_PASSED.format("eps")),
        Knob(
            "eps_placement",
            "(x-mu)/sqrt(var+eps) (inside_sqrt) or (x-mu)/(sqrt(var)+eps) (outside_sqrt)",
            ("inside_sqrt", "outside_sqrt"),
            probe="eps_placement",
        ),
        Knob("eps_floor", "eps is raised to at least this value (None: no floor)", None,
             candidates=(None, EPS_FLOOR_TF), probe="eps_floor"),
        Knob(
            "momentum",
            "the framework's default momentum, in its own convention (None: cumulative average)",
            None,
            set_by_case=True,
            settable=True,
            not_probed=_PASSED.format("momentum"),
        ),
        Knob(
            "momentum_weights",
            "which statistic the momentum hyperparameter multiplies: batch (PyTorch: "
            "r <- (1-m) r + m b) or running (Keras/Flax/ONNX: r <- m r + (1-m) b)",
            ("batch", "running"),
            settable=True,
            probe="ema_trajectory",
        ),
        Knob("normalize_var", "variance that normalizes a training batch", ("biased", "unbiased"),
             probe="normalize_var"),
        Knob(
            "running_var_update",
            "variance estimator fed into the running variance",
            ("biased", "unbiased"),
            probe="ema_trajectory",
        ),
        Knob(
            "ema_debias",
            "running statistics are read as hidden / (1 - decay^t) after t updates",
            (False, True),
            probe="ema_trajectory",
        ),
        Knob(
            "initial_running",
            "(mean, var) of the running statistics (or hidden EMA state) before any update",
            None,
            candidates=((0.0, 1.0), (0.0, 0.0)),
            not_probed="every case loads the running statistics explicitly; the state before "
            "loading is not observable through an adapter",
        ),
        Knob(
            "first_update",
            "the first training step blends (ema) or copies (replace) the batch statistics",
            ("ema", "replace"),
            probe="ema_trajectory",
        ),
        Knob(
            "running_update",
            "whether a training step updates the running statistics (ema) or leaves them as "
            "they are (none: an inference-only artifact, e.g. a converted graph)",
            ("ema", "none"),
            probe="ema_trajectory",
        ),
        Knob(
            "train_stats",
            "statistics normalizing a training batch (running: after this step's update)",
            ("batch", "running"),
            probe="train_stats",
        ),
        Knob("eval_stats", "statistics normalizing in eval mode", ("running", "batch"),
             probe="ema_trajectory"),
        Knob(
            "frozen_train_stats",
            "statistics a frozen layer (Keras trainable=False) uses when called in training "
            "mode, without updating; None where there is no such notion",
            ("batch", "running", None),
            probe="frozen",
        ),
        Knob(
            "variance_algorithm",
            "how the batch variance is formed: two_pass mean((x-mean)^2), one_pass "
            "E[x^2]-E[x]^2, one_pass_clamped max(0, E[x^2]-E[x]^2)",
            ("two_pass", "one_pass", "one_pass_clamped"),
            numerics=True,
            probe="large_offset",
        ),
        Knob(
            "compute_dtype",
            "dtype of the reductions: input, float32 (even for float64 input), or "
            "promote_float32 (at least float32)",
            ("input", "float32", "promote_float32"),
            numerics=True,
            probe="half_precision",
        ),
        Knob(
            "normalize_dtype",
            "whether mean and 1/sqrt(var+eps) are rounded to the input dtype before "
            "normalizing (input) or kept in the compute dtype (compute)",
            ("input", "compute"),
            numerics=True,
            probe="half_precision",
        ),
        Knob(
            "output_dtype",
            "dtype of the output: the input's, the parameters', or the running state's",
            ("input", "parameters", "state"),
            numerics=True,
            probe="mixed_params",
        ),
        Knob(
            "state_dtype",
            "dtype the running statistics are kept in: the input's, float32, the "
            "parameters' (PyTorch buffers follow the module's dtype), or promote_float32 "
            "(created float32, promoted by a wider batch: flax.linen under x64)",
            ("input", "float32", "parameters", "promote_float32"),
            numerics=True,
            probe="mixed_params",
        ),
        Knob(
            "single_value",
            "one value per channel in a training step: error; allowed (the unbiased factor "
            "becomes n/max(n-1, 1) = 1); or nan (the factor n/(n-1) divides by zero)",
            ("error", "allowed", "nan"),
            probe="single_value",
        ),
        Knob(
            "affine_form",
            "how y is formed from the statistics: centered (x - mean) * s + beta, or folded "
            "x * s + (beta - mean * s) with s = gamma / sqrt(var + eps); equal in exact "
            "arithmetic, the folded form cancels where |mean| >> std",
            ("centered", "folded"),
            numerics=True,
            probe="affine_form",
        ),
    ]
}

# The knobs of data-parallel training: how R replicas, each holding a shard of a step's global
# batch (Case.replicas), combine what they compute. Only a case with replicas observes them; on
# one device (Case.replicas None) every value is one-device BatchNorm. Kept apart from KNOBS:
# a one-device profile need not cite them (a data-parallel profile cites each one it sets), the
# fingerprint does not probe them, and attribution flips them on a case with replicas only.
REPLICA_KNOBS: dict[str, Knob] = {
    k.name: k
    for k in [
        Knob(
            "replica_stats",
            "how the replicas' batch statistics combine: none (each replica normalizes with its "
            "own shard's), count_weighted (weighted by sample count: BatchNorm on the "
            "concatenated global batch; torch SyncBatchNorm), or equal_weighted (each non-empty "
            "replica's mean and mean square weigh 1/R: pmean of moments; wrong for uneven shards)",
            ("none", "count_weighted", "equal_weighted"),
            probe="replica_uneven",
        ),
        Knob(
            "replica_var",
            "how a combined variance is formed: two_pass (squared deviations from the combined "
            "mean), one_pass (combined E[x^2] - mean^2: cancels where |mean| >> std), or "
            "pairwise (Chan et al.'s merge of per-replica (count, mean, M2) in replica order)",
            ("two_pass", "one_pass", "pairwise"),
            numerics=True,
            probe="replica_offset",
        ),
        Knob(
            "replica_running",
            "which running statistics survive a step: own (each replica updates its copy from "
            "its own shard's statistics), synchronized (every copy from the combined "
            "statistics; combined by count where replica_stats is none), replica0 (own, then "
            "replica 0's copy broadcast to all before the next step: DDP's broadcast_buffers), "
            "or mean (own, then the copies averaged: a MEAN-aggregated mirrored variable)",
            ("own", "synchronized", "replica0", "mean"),
            probe="replica_uneven",
        ),
        Knob(
            "replica_count",
            "the n of the unbiased factor n/(n-1) of a combined variance: the global batch's "
            "values per channel (global) or each replica's own (local)",
            ("global", "local"),
            probe="replica_uneven",
        ),
        Knob(
            "replica_grad",
            "dx of the combined statistics: global (the gradient of the whole loss: sum(dy) and "
            "sum(dy (x - mean)) all-reduced in the backward pass) or local (each replica "
            "differentiates its own shard's loss only)",
            ("global", "local"),
            probe="replica_gradients",
        ),
        Knob(
            "replica_param_grad",
            "dgamma and dbeta as replica 0 holds them after the backward pass: the replicas' "
            "summed (sum), averaged over the R replicas (mean: DDP's gradient all-reduce divides "
            "by the world size), or replica 0's own shard's share, reduced by nothing (local: "
            "jax.pmap's gradient of a per-device loss before any psum)",
            ("sum", "mean", "local"),
            probe="replica_gradients",
        ),
    ]
}
ALL_KNOBS: dict[str, Knob] = {**KNOBS, **REPLICA_KNOBS}

# Readings: the case as an implementation may hold it, otherwise than passed. Not knobs of a
# profile (a profile cannot state them) but facts about one implementation's hyperparameters and
# state, which explain a mismatch like knob flips (bnspec.attribution.readings lists the values
# tried): eps or momentum rounded to a float32 attribute, a default momentum substituted,
# momentum=None turned into a constant, the update counter off by one, the layer called once
# more in training mode on the first batch before the case (a tracing exporter's forward pass).
READINGS: dict[str, str] = {
    "eps": "the eps the implementation holds (a float32 attribute: eps rounded)",
    "momentum": "the momentum it holds: rounded to float32, a default substituted, or a constant "
                "in place of momentum=None",
    "counter": "the update counter it starts from (Case.counter as passed)",
    "initial_state": "the state it starts from: as given, or after one more training step on the "
                     "first batch (a tracing exporter's forward pass)",
}
WARMED = "after one more training step on the first batch"

NUMERICS_KNOBS = tuple(k for k, v in KNOBS.items() if v.numerics)
SETTABLE_KNOBS = tuple(k for k, v in KNOBS.items() if v.settable)


@dataclass(frozen=True)
class Semantics:
    """Every BatchNorm choice that frameworks make differently, as one frozen value."""

    eps: float = 1e-5
    eps_placement: EpsPlacement = "inside_sqrt"
    eps_floor: float | None = None
    momentum: float | None = 0.1
    momentum_weights: MomentumWeights = "batch"
    normalize_var: Estimator = "biased"
    running_var_update: Estimator = "unbiased"
    ema_debias: bool = False
    initial_running: tuple[float, float] = (0.0, 1.0)
    first_update: FirstUpdate = "ema"
    running_update: RunningUpdate = "ema"
    train_stats: StatsSource = "batch"
    eval_stats: StatsSource = "running"
    frozen_train_stats: StatsSource | None = None
    variance_algorithm: VarianceAlgorithm = "two_pass"
    compute_dtype: ComputeDtype = "input"
    normalize_dtype: NormalizeDtype = "compute"
    output_dtype: OutputDtype = "input"
    state_dtype: StateDtype = "input"
    single_value: SingleValue = "error"
    affine_form: AffineForm = "centered"
    # across replicas (REPLICA_KNOBS); the defaults: a plain layer replicated as it is
    replica_stats: ReplicaStats = "none"
    replica_var: ReplicaVar = "two_pass"
    replica_running: ReplicaRunning = "own"
    replica_count: ReplicaCount = "global"
    replica_grad: ReplicaGrad = "global"
    replica_param_grad: ReplicaParamGrad = "sum"

    def __post_init__(self) -> None:
        for name, knob in ALL_KNOBS.items():
            value = getattr(self, name)
            if knob.values is not None and value not in knob.values:
                _bad(name, value, " | ".join(map(repr, knob.values)))
        _check_number("eps", self.eps, allow_none=False, low=0.0)
        _check_number("eps_floor", self.eps_floor, allow_none=True, low=0.0)
        _check_number("momentum", self.momentum, allow_none=True, low=0.0, high=1.0)
        init = self.initial_running
        if not (
            isinstance(init, tuple)
            and len(init) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in init)
            and init[1] >= 0
        ):
            _bad("initial_running", init, "a tuple (mean, var) of finite floats with var >= 0")

    def replace(self, **changes: Any) -> Semantics:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every knob; the replica knobs only where they differ from their defaults (a layer's
        dict from before replicas stays as it was)."""
        d = dataclasses.asdict(self)
        d["initial_running"] = list(self.initial_running)
        for name in REPLICA_KNOBS:
            if d[name] == _REPLICA_DEFAULTS[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Semantics:
        unknown = set(data) - set(ALL_KNOBS)
        if unknown:
            raise InvalidSemantics(
                f"unknown knob(s) {sorted(unknown)!r}; knobs are: {', '.join(ALL_KNOBS)}"
            )
        data = dict(data)
        if "initial_running" in data:
            data["initial_running"] = tuple(float(v) for v in data["initial_running"])
        return cls(**data)

    def differences(self, other: Semantics) -> dict[str, tuple[Any, Any]]:
        """Knobs whose values differ: ``{knob: (self's value, other's value)}``."""
        return {
            k: (getattr(self, k), getattr(other, k))
            for k in ALL_KNOBS
            if getattr(self, k) != getattr(other, k)
        }

    @property
    def effective_eps_floor(self) -> float:
        return 0.0 if self.eps_floor is None else self.eps_floor


_REPLICA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Semantics) if f.name in REPLICA_KNOBS}


def _bad(name: str, value: Any, allowed: str) -> None:
    raise InvalidSemantics(f"knob {name}={value!r} is invalid; allowed: {allowed}")


def _check_number(
    name: str, value: Any, *, allow_none: bool, low: float, high: float | None = None
) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"a finite float >= {low}" + (f" and <= {high}" if high is not None else "")
        _bad(name, value, rng + (" or None" if allow_none else ""))
